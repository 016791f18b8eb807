package daemon

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"banger/internal/api"
)

func TestKernelRmRefusedWhileUsed(t *testing.T) {
	d := openArtifactDaemon(t)
	k := importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test"})
	registerTestImage(t, d, "base", "k1")

	_, err := d.kernelRm(t.Context(), api.ArtifactRef{Name: "k1"})
	wantCode(t, err, api.CodeBadRequest, "image base")
	if err := d.store.DeleteImage(t.Context(), "base"); err != nil {
		t.Fatal(err)
	}
	insertVM(t, d, "web", "gone", "k1", "10.0.0.2")
	_, err = d.kernelRm(t.Context(), api.ArtifactRef{Name: "k1"})
	wantCode(t, err, api.CodeBadRequest, "VM web")
	if err := d.store.DeleteVM(t.Context(), "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(k.Dir); err != nil {
		t.Fatalf("refused rm touched the kernel directory: %v", err)
	}

	if _, err := d.kernelRm(t.Context(), api.ArtifactRef{Name: "k1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(k.Dir); !os.IsNotExist(err) {
		t.Errorf("kernel directory still there after rm (stat: %v)", err)
	}
	_, err = d.kernelRm(t.Context(), api.ArtifactRef{Name: "k1"})
	wantCode(t, err, api.CodeNotFound)
}

func TestKernelRmRefusedWhileAPullUsesIt(t *testing.T) {
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test"})
	release := make(chan struct{})
	op, _, err := d.startPull(pullSpec{kind: api.OpKindImagePull, key: "example/x:1", name: "x", kernel: "k1",
		reg: d.ops.imagePull, work: func(_ context.Context, _ *pullOp) error { <-release; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.kernelRm(t.Context(), api.ArtifactRef{Name: "k1"})
	wantCode(t, err, api.CodeBadRequest, op.ID())
	close(release)
	waitPull(t, d, op.ID())
	if _, err := d.kernelRm(t.Context(), api.ArtifactRef{Name: "k1"}); err != nil {
		t.Fatalf("rm after the pull finished: %v", err)
	}
}

func TestKernelShowDescribesFilesAndVMMs(t *testing.T) {
	cases := []struct {
		pvh  bool
		want []string
	}{
		{true, []string{"qemu", "firecracker"}},
		{false, []string{"qemu"}},
	}
	for _, c := range cases {
		d := openArtifactDaemon(t)
		importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test", pvh: c.pvh})
		registerTestImage(t, d, "base", "k1")
		got, err := d.kernelShow(t.Context(), api.ArtifactRef{Name: "k1"})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Suits, c.want) {
			t.Errorf("pvh=%v: suits = %v, want %v", c.pvh, got.Suits, c.want)
		}
		roles := []string{}
		for _, f := range got.Files {
			roles = append(roles, f.Role)
			if len(f.SHA256) != 64 || f.Size == 0 {
				t.Errorf("file %+v lacks its checksum or size", f)
			}
		}
		if !reflect.DeepEqual(roles, []string{"initrd", "vmlinux", "vmlinuz"}) {
			t.Errorf("roles = %v", roles)
		}
		if got.Version != "6.1.0-test" || got.SourcePackage != "linux-image-6.1.0-test" || !reflect.DeepEqual(got.Images, []string{"base"}) {
			t.Errorf("show = %+v", got)
		}
	}
}

func TestKernelCatalogMarksInstalled(t *testing.T) {
	d := openArtifactDaemon(t)
	res, err := d.kernelCatalogList(t.Context(), noParams{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Kernels) != 1 || res.Kernels[0].Name != "debian-6.1" || res.Kernels[0].Installed {
		t.Fatalf("catalog on a fresh daemon = %+v", res.Kernels)
	}
	importTestKernel(t, d, "debian-6.1", kernelSpec{version: "6.1.0-test"})
	if res, err = d.kernelCatalogList(t.Context(), noParams{}); err != nil {
		t.Fatal(err)
	}
	if !res.Kernels[0].Installed {
		t.Errorf("catalog after import = %+v, want installed", res.Kernels)
	}
}

// Kernel import copies (the caller keeps no write access to what is
// recorded), refuses symbolic links anywhere in the tree, and image
// register refuses a symlinked rootfs.
func TestImportCopiesAndRefusesLinks(t *testing.T) {
	d := openArtifactDaemon(t)
	src := makeKernelDir(t, kernelSpec{version: "6.1.0-test"})
	if _, err := d.kernelImport(t.Context(), api.KernelImportParams{Name: "k1", From: src}); err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(filepath.Join(src, "vmlinuz"))
	b, _ := os.Stat(filepath.Join(d.layout.KernelsDir, "k1", "vmlinuz"))
	if a == nil || b == nil || os.SameFile(a, b) {
		t.Fatal("the imported kernel shares its file with the caller's")
	}
	linked := makeKernelDir(t, kernelSpec{version: "6.1.0-test"})
	if err := os.Symlink("/etc", filepath.Join(linked, "modules", "host")); err != nil {
		t.Fatal(err)
	}
	_, err := d.kernelImport(t.Context(), api.KernelImportParams{Name: "k2", From: linked})
	wantCode(t, err, api.CodeBadRequest, "not a regular file or directory")
	if _, err := os.Stat(filepath.Join(d.layout.KernelsDir, "k2"+importingSuffix)); !os.IsNotExist(err) {
		t.Errorf("a refused import left its staging directory: %v", err)
	}
	img := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := os.WriteFile(img, []byte("root"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link.ext4")
	if err := os.Symlink(img, link); err != nil {
		t.Fatal(err)
	}
	_, err = d.imageRegister(t.Context(), api.ImageRegisterParams{Name: "img", Rootfs: link, Kernel: "k1"})
	wantCode(t, err, api.CodeBadRequest, "a symbolic link is refused")
}
