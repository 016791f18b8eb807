package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"banger/internal/api"
)

func TestStartPullSharesOneOperationPerSource(t *testing.T) {
	d := openArtifactDaemon(t)
	release := make(chan struct{})
	runs := make(chan string, 8)
	spec := func(key, name string, anyName bool) pullSpec {
		return pullSpec{kind: api.OpKindImagePull, key: key, name: name, anyName: anyName, reg: d.ops.imagePull,
			work: func(_ context.Context, op *pullOp) error { runs <- op.ID(); <-release; return nil }}
	}
	first, joined, err := d.startPull(spec("reg/a:1", "a-1", true))
	if err != nil || joined {
		t.Fatalf("first pull: joined=%v err=%v", joined, err)
	}
	cases := []struct {
		name       string
		spec       pullSpec
		wantJoined bool
		wantCode   api.Code
	}{
		{"same source, same name", spec("reg/a:1", "a-1", false), true, ""},
		{"same source, default name", spec("reg/a:1", "something-else", true), true, ""},
		{"same source, other chosen name", spec("reg/a:1", "mine", false), false, api.CodeBadRequest},
		{"other source into the same name", spec("reg/b:1", "a-1", false), false, api.CodeBadRequest},
	}
	for _, c := range cases {
		op, joined, err := d.startPull(c.spec)
		if c.wantCode != "" {
			wantCode(t, err, c.wantCode, first.ID())
			continue
		}
		if err != nil || !joined || op != first {
			t.Errorf("%s: joined=%v err=%v, want to join %s", c.name, joined, err, first.ID())
		}
	}
	// A kernel pull of the same key is another kind: its own operation.
	kop, joined, err := d.startPull(pullSpec{kind: api.OpKindKernelPull, key: "reg/a:1", name: "a-1", reg: d.ops.kernelPull,
		work: func(context.Context, *pullOp) error { return nil }})
	if err != nil || joined || kop == first {
		t.Errorf("kernel pull: joined=%v err=%v", joined, err)
	}
	close(release)
	waitPull(t, d, first.ID())
	waitPull(t, d, kop.ID())
	if n := len(runs); n != 1 {
		t.Errorf("the image pull's work ran %d times, want once", n)
	}

	// Once done, the next pull of the source starts afresh.
	again, joined, err := d.startPull(spec("reg/a:1", "a-1", false))
	if err != nil || joined || again == first {
		t.Errorf("pull after the first finished: joined=%v err=%v", joined, err)
	}
	waitPull(t, d, again.ID())
}

func TestPullsImportsAndRegistersClaimNames(t *testing.T) {
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test"})
	release := make(chan struct{})
	op, _, err := d.startPull(pullSpec{kind: api.OpKindImagePull, key: "reg/web:1", name: "web", reg: d.ops.imagePull,
		work: func(context.Context, *pullOp) error { <-release; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "root.ext4")
	if err := os.WriteFile(src, []byte("root"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = d.imageRegister(t.Context(), api.ImageRegisterParams{Name: "web", Rootfs: src, Kernel: "k1"})
	wantCode(t, err, api.CodeBadRequest, op.ID())
	close(release)
	waitPull(t, d, op.ID())

	// While a register or import holds a name, a pull of it is refused.
	unclaim, err := d.claimName("kernel", "debian-6.1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.kernelPull(t.Context(), api.PullParams{Name: "debian-6.1"})
	wantCode(t, err, api.CodeBadRequest, "imported or registered")
	if _, err := d.claimName("kernel", "debian-6.1"); !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("a second claim of one name: %v", err)
	}
	unclaim()
	if _, err := d.claimName("image", "debian-6.1"); err != nil {
		t.Errorf("an image may share a kernel's name: %v", err)
	}
}
