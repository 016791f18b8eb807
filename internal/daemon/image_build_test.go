package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/kernel"
	"banger/internal/store"
)

func TestImageBuildRefusesBadInput(t *testing.T) {
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test", features: []string{kernel.FeatureConfigDisk, kernel.FeatureNetArg}})
	importTestKernel(t, d, "old", kernelSpec{version: "6.1.0-old"})
	registerTestImage(t, d, "base", "k1")
	registerTestImage(t, d, "taken", "k1")
	registerTestImage(t, d, "oldbase", "old")
	insertVM(t, d, "stopped", "base", "k1", "10.0.0.2")
	running := store.VM{Name: "running", Image: "base", Kernel: "k1", State: store.StateRunning, VCPU: 1, MemoryMiB: 256, IP: "10.0.0.3"}
	if err := d.store.CreateVM(t.Context(), &running); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "ok.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.sh")
	if err := os.WriteFile(big, make([]byte, buildScriptMax+1), 0o644); err != nil {
		t.Fatal(err)
	}
	from := func(p api.ImageBuildParams) api.ImageBuildParams {
		if p.Name == "" {
			p.Name = "new"
		}
		if p.From == "" && p.FromVM == "" {
			p.From = "base"
		}
		return p
	}
	cases := []struct {
		name    string
		p       api.ImageBuildParams
		code    api.Code
		mention string
	}{
		{"no name", api.ImageBuildParams{From: "base"}, api.CodeBadRequest, "missing the new image's name"},
		{"bad name", from(api.ImageBuildParams{Name: "../x"}), api.CodeBadRequest, "invalid image name"},
		{"taken name", from(api.ImageBuildParams{Name: "taken"}), api.CodeAlreadyExists, `image "taken" already exists`},
		{"neither source", api.ImageBuildParams{Name: "new"}, api.CodeBadRequest, "exactly one of --from IMAGE and --from-vm VM"},
		{"both sources", api.ImageBuildParams{Name: "new", From: "base", FromVM: "stopped"}, api.CodeBadRequest, "exactly one"},
		{"unknown base", from(api.ImageBuildParams{From: "nope"}), api.CodeNotFound, `base image "nope" not found`},
		{"catalog base not pulled", from(api.ImageBuildParams{From: "debian-bookworm"}), api.CodeNotFound, "banger image pull debian-bookworm"},
		{"unknown vm", from(api.ImageBuildParams{FromVM: "ghost"}), api.CodeNotFound, "ghost"},
		{"running vm", from(api.ImageBuildParams{FromVM: "running"}), api.CodeBadRequest, "stop it first (banger vm stop running)"},
		{"old kernel", from(api.ImageBuildParams{From: "oldbase"}), api.CodeBadRequest, `kernel "old" of image "oldbase" is too old`},
		{"missing script", from(api.ImageBuildParams{Scripts: []string{filepath.Join(dir, "missing.sh")}}), api.CodeBadRequest, "missing.sh: no such file"},
		{"script is a directory", from(api.ImageBuildParams{Scripts: []string{dir}}), api.CodeBadRequest, "is not a regular file"},
		{"relative script", from(api.ImageBuildParams{Scripts: []string{"ok.sh"}}), api.CodeBadRequest, "not an absolute path"},
		{"script too big", from(api.ImageBuildParams{Scripts: []string{big}}), api.CodeBadRequest, "at most 1 MiB"},
		{"copy source missing", from(api.ImageBuildParams{Copies: []api.ImageBuildCopy{{Src: filepath.Join(dir, "gone"), Dst: "/opt/x"}}}), api.CodeBadRequest, "--copy source " + filepath.Join(dir, "gone") + ": no such file"},
		{"copy to relative", from(api.ImageBuildParams{Copies: []api.ImageBuildCopy{{Src: script, Dst: "opt/x"}}}), api.CodeBadRequest, "must be an absolute path"},
		{"copy onto /", from(api.ImageBuildParams{Copies: []api.ImageBuildCopy{{Src: script, Dst: "/"}}}), api.CodeBadRequest, "below /"},
		{"shell in a package", from(api.ImageBuildParams{Packages: []string{"curl;reboot"}}), api.CodeBadRequest, `invalid package name "curl;reboot"`},
		{"bad size", from(api.ImageBuildParams{Size: "lots"}), api.CodeBadRequest, "disk size"},
		{"shrink", from(api.ImageBuildParams{Size: "64M"}), api.CodeBadRequest, "a build can grow a root, not shrink it"},
		{"too many vcpus", from(api.ImageBuildParams{VCPU: 100000}), api.CodeBadRequest, "vcpu 100000 out of range"},
	}
	// A 64M minimum disk size is larger than the test rootfs: make the base
	// big enough for "shrink" to mean it.
	base, err := d.store.GetImage(t.Context(), "base")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(base.RootfsPath, 128<<20); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := d.imageBuildBegin(t.Context(), c.p)
			wantCode(t, err, c.code, c.mention)
			if ops := d.ListOperations(t.Context()).Operations; len(ops) != 0 {
				t.Errorf("a refused build registered operations: %+v", ops)
			}
			vms, _ := d.store.ListVMs(t.Context())
			if len(vms) != 2 {
				t.Errorf("a refused build left VM rows: %d rows, want the 2 the test made", len(vms))
			}
		})
	}
}

// The temporary VM of a build is the daemon's: not listed, not touched by
// the vm commands or prune, and not named in the .vm zone.
func TestBuildVMIsHidden(t *testing.T) {
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test"})
	registerTestImage(t, d, "base", "k1")
	insertVM(t, d, "mine", "base", "k1", "10.0.0.2")
	hidden := store.VM{Name: "imgbuild-1234", Image: "base", Kernel: "k1", State: store.StateStopped, VCPU: 1, MemoryMiB: 256,
		IP: "10.0.0.3", Purpose: store.PurposeImageBuild}
	if err := d.store.CreateVM(t.Context(), &hidden); err != nil {
		t.Fatal(err)
	}
	list, err := d.vmList(t.Context(), noParams{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.VMs) != 1 || list.VMs[0].Name != "mine" {
		t.Errorf("vm list = %+v, want only mine", list.VMs)
	}
	_, err = d.vmShow(t.Context(), api.VMRef{Name: hidden.Name})
	wantCode(t, err, api.CodeBadRequest, "temporary VM of an image build")
	_, err = d.vmDelete(t.Context(), api.VMRef{Name: hidden.Name})
	wantCode(t, err, api.CodeBadRequest, "temporary VM of an image build")
	_, err = d.vmStart(t.Context(), api.VMRef{Name: hidden.Name})
	wantCode(t, err, api.CodeBadRequest, "temporary VM of an image build")
	res, err := d.vmPrune(t.Context(), api.VMPruneParams{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deleted) != 1 || res.Deleted[0] != "mine" {
		t.Errorf("prune deleted %v, want [mine]", res.Deleted)
	}
	if _, err := d.store.GetVM(t.Context(), hidden.Name); err != nil {
		t.Errorf("prune removed the build VM: %v", err)
	}
	records, _, _, err := d.net.desired(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := records[hidden.Name]; ok {
		t.Errorf("the build VM has a .vm name: %v", records)
	}
}

// A daemon that starts after one died mid-build removes the build VM and
// the build directory.
func TestStartRemovesBuildLeftovers(t *testing.T) {
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test"})
	registerTestImage(t, d, "base", "k1")
	hidden := store.VM{Name: "imgbuild-1234", Image: "base", Kernel: "k1", State: store.StateRunning, VCPU: 1, MemoryMiB: 256,
		IP: "10.0.0.3", Purpose: store.PurposeImageBuild}
	if err := d.store.CreateVM(t.Context(), &hidden); err != nil {
		t.Fatal(err)
	}
	vmDir := d.pathsFor(hidden.ID).dir
	buildDir := filepath.Join(d.layout.ImagesDir, buildDirPrefix+"op-0123")
	for _, dir := range []string{vmDir, buildDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	d.adoptVMs(t.Context())
	if _, err := d.store.GetVM(t.Context(), hidden.Name); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("the build VM's row survived a restart: %v", err)
	}
	for _, dir := range []string{vmDir, buildDir} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s survived a restart: %v", dir, err)
		}
	}
	if _, err := os.Stat(filepath.Join(d.layout.ImagesDir, "base")); err != nil {
		t.Errorf("an image's directory went with the build leftovers: %v", err)
	}
}

func TestBuildOutputLines(t *testing.T) {
	op := &imageBuildOp{vmCreateOp: &vmCreateOp{opCore: newOpCore("op-1", api.OpKindImageBuild, "x", nil, time.Now)}}
	fmt.Fprint(op, "one\r\ntw")
	fmt.Fprint(op, "o\n\nthree")
	st := op.buildStatus(0)
	if got := strings.Join(st.Output, "|"); got != "one|two|" || st.Next != 3 {
		t.Errorf("output = %q next %d; want one|two| (three still partial) and 3", got, st.Next)
	}
	if got := op.lastLine(0); got != "three" {
		t.Errorf("lastLine = %q, want the partial line three", got)
	}
	st = op.buildStatus(st.Next)
	if got := strings.Join(st.Output, "|"); got != "three" || st.Next != 4 {
		t.Errorf("second read = %q next %d, want three and 4", got, st.Next)
	}
	op.note("copied %d files", 2)
	if got := op.lastLine(0); got != "three" {
		t.Errorf("lastLine = %q; banger's own notes are not the guest's output", got)
	}
	// The buffer is bounded; a reader that fell behind learns how much.
	for i := 0; i < buildOutputLines+10; i++ {
		fmt.Fprintf(op, "line %d\n", i)
	}
	st = op.buildStatus(0)
	if len(st.Output) != buildOutputLines || st.Dropped != 15 || st.Output[0] != "line 10" {
		t.Errorf("after overflow: %d lines, dropped %d, first %q; want %d, 15, line 10", len(st.Output), st.Dropped, st.Output[0], buildOutputLines)
	}
	// A line without an end is kept in pieces of buildLineMax.
	next := op.buildStatus(0).Next
	fmt.Fprint(op, strings.Repeat("x", buildLineMax+5))
	st = op.buildStatus(next)
	if len(st.Output) != 1 || len(st.Output[0]) != buildLineMax {
		t.Errorf("an endless line gave %d lines (first %d bytes), want one of %d", len(st.Output), len(st.Output[0]), buildLineMax)
	}
}

func TestCancelUnknownOperation(t *testing.T) {
	d := openArtifactDaemon(t)
	_, err := d.cancelOperation(t.Context(), api.OpRef{OpID: "op-nope"})
	wantCode(t, err, api.CodeNotFound, `operation "op-nope" not found`)
}

// At start, directories in banger's trees that no row accounts for go,
// and so do staging and half-done imports (no pull runs yet); recorded
// ones stay.
func TestStartSweepsUnrecordedDirectories(t *testing.T) {
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test"})
	im := registerTestImage(t, d, "base", "k1")
	insertVM(t, d, "mine", "base", "k1", "10.0.0.2")
	v, err := d.store.GetVM(t.Context(), "mine")
	if err != nil {
		t.Fatal(err)
	}
	keep := []string{d.pathsFor(v.ID).dir, filepath.Dir(im.RootfsPath), filepath.Join(d.layout.KernelsDir, "k1")}
	gone := []string{filepath.Join(d.layout.VMsDir, "0123456789abcdef"), filepath.Join(d.layout.ImagesDir, "moved-not-recorded"),
		filepath.Join(d.layout.KernelsDir, "k3"), filepath.Join(d.layout.ImagesDir, ".base2.pulling"),
		filepath.Join(d.layout.KernelsDir, "k2"+importingSuffix)}
	for _, dir := range append(append([]string{}, keep...), gone...) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	d.adoptVMs(t.Context())
	for _, dir := range keep {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("%s was removed: %v", dir, err)
		}
	}
	for _, dir := range gone {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s survived the start-up sweep: %v", dir, err)
		}
	}
}

func TestImportingSuffixIsReserved(t *testing.T) {
	d := openArtifactDaemon(t)
	_, err := d.kernelImport(t.Context(), api.KernelImportParams{Name: "x" + importingSuffix, From: t.TempDir()})
	wantCode(t, err, api.CodeBadRequest, "names ending in .importing are banger's own")
	_, err = d.imageBuildBegin(t.Context(), api.ImageBuildParams{Name: "y.importing", From: "base"})
	wantCode(t, err, api.CodeBadRequest, "names ending in .importing are banger's own")
}
