package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"banger/internal/api"
)

func TestImageDeleteRefusedWhileAVMUsesIt(t *testing.T) {
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test"})
	im := registerTestImage(t, d, "base", "k1")
	insertVM(t, d, "web", "base", "k1", "10.0.0.2")
	insertVM(t, d, "db", "base", "k1", "10.0.0.3")

	_, err := d.imageDelete(t.Context(), api.ArtifactRef{Name: "base"})
	wantCode(t, err, api.CodeBadRequest, "2 VMs", "db, web")
	if _, err := os.Stat(im.RootfsPath); err != nil {
		t.Fatalf("refused delete touched the rootfs: %v", err)
	}
	if _, err := d.store.GetImage(t.Context(), "base"); err != nil {
		t.Fatalf("refused delete removed the row: %v", err)
	}

	for _, vm := range []string{"web", "db"} {
		if err := d.store.DeleteVM(t.Context(), vm); err != nil {
			t.Fatal(err)
		}
	}
	got, err := d.imageDelete(t.Context(), api.ArtifactRef{Name: "base"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "base" {
		t.Errorf("deleted %+v", got)
	}
	wantCode(t, func() error { _, err := d.store.GetImage(t.Context(), "base"); return err }(), api.CodeNotFound)
	if _, err := os.Stat(filepath.Dir(im.RootfsPath)); !os.IsNotExist(err) {
		t.Errorf("image directory still there after delete (stat: %v)", err)
	}
	_, err = d.imageDelete(t.Context(), api.ArtifactRef{Name: "base"})
	wantCode(t, err, api.CodeNotFound)
}

func TestImageDeleteLeavesFilesOutsideTheStateDir(t *testing.T) {
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test"})
	registerTestImage(t, d, "base", "k1")
	outside := filepath.Join(t.TempDir(), "elsewhere.ext4")
	if err := os.WriteFile(outside, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	im, err := d.store.GetImage(t.Context(), "base")
	if err != nil {
		t.Fatal(err)
	}
	im.RootfsPath = outside
	if err := d.store.UpdateImage(t.Context(), im); err != nil {
		t.Fatal(err)
	}
	if _, err := d.imageDelete(t.Context(), api.ArtifactRef{Name: "base"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("delete removed a rootfs outside the images directory: %v", err)
	}
}

func TestImagePromoteFlipsTheDefault(t *testing.T) {
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test"})
	first := registerTestImage(t, d, "first", "k1")
	second := registerTestImage(t, d, "second", "k1")
	if !first.Default || second.Default {
		t.Fatalf("first registered image should be the default: first=%v second=%v", first.Default, second.Default)
	}

	got, err := d.imagePromote(t.Context(), api.ArtifactRef{Name: "second"})
	if err != nil {
		t.Fatal(err)
	}
	if !got.Default {
		t.Errorf("promote returned %+v, want default", got)
	}
	list, err := d.imageList(t.Context(), noParams{})
	if err != nil {
		t.Fatal(err)
	}
	defaults := map[string]bool{}
	for _, im := range list.Images {
		defaults[im.Name] = im.Default
	}
	if defaults["first"] || !defaults["second"] {
		t.Errorf("defaults after promote = %v, want only second", defaults)
	}
	_, err = d.imagePromote(t.Context(), api.ArtifactRef{Name: "nope"})
	wantCode(t, err, api.CodeNotFound, "nope")
}

func TestImageShowReportsManifestAndUsers(t *testing.T) {
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test"})
	im := registerTestImage(t, d, "base", "k1")
	insertVM(t, d, "web", "base", "k1", "10.0.0.2")

	got, err := d.imageShow(t.Context(), api.ArtifactRef{Name: "base"})
	if err != nil {
		t.Fatal(err)
	}
	m := got.Manifest
	if m.Kind != api.ImageKindRegistered || m.SHA256 != im.SHA256 || m.SizeBytes != im.SizeBytes || m.Kernel != "k1" || m.Packages != -1 {
		t.Errorf("manifest = %+v, want registered, sha %s, size %d, kernel k1, packages -1", m, im.SHA256, im.SizeBytes)
	}
	if m.From == "" || m.BuiltAt.IsZero() {
		t.Errorf("manifest lacks its source file or time: %+v", m)
	}
	if len(got.VMs) != 1 || got.VMs[0] != "web" {
		t.Errorf("vms = %v, want [web]", got.VMs)
	}
	_, err = d.imageShow(t.Context(), api.ArtifactRef{Name: "nope"})
	wantCode(t, err, api.CodeNotFound)
}

func TestImagePullRefusesBadRequests(t *testing.T) {
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test"})
	registerTestImage(t, d, "taken", "k1")
	cases := []struct {
		name    string
		p       api.ImagePullParams
		code    api.Code
		mention string
	}{
		{"nothing", api.ImagePullParams{}, api.CodeBadRequest, "catalog image"},
		{"unknown catalog name", api.ImagePullParams{Source: "ubuntu"}, api.CodeNotFound, "debian-bookworm"},
		{"catalog with options", api.ImagePullParams{Source: "debian-bookworm", Size: "4G"}, api.CodeBadRequest, "OCI"},
		{"bad reference", api.ImagePullParams{Source: "Upper/Case:1"}, api.CodeBadRequest, "reference"},
		{"taken name", api.ImagePullParams{Source: "127.0.0.1:1/a/b:1", Name: "taken"}, api.CodeAlreadyExists, "taken"},
		{"bad name", api.ImagePullParams{Source: "127.0.0.1:1/a/b:1", Name: "../x"}, api.CodeBadRequest, "invalid image name"},
		{"bad size", api.ImagePullParams{Source: "127.0.0.1:1/a/b:1", Size: "lots"}, api.CodeBadRequest, "--size"},
		{"unknown kernel", api.ImagePullParams{Source: "127.0.0.1:1/a/b:1", Kernel: "nope"}, api.CodeNotFound, "nope"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := d.imagePull(t.Context(), c.p)
			wantCode(t, err, c.code, c.mention)
			if ops := d.ListOperations(t.Context()).Operations; len(ops) != 0 {
				t.Errorf("a refused pull registered operations: %+v", ops)
			}
		})
	}
}

func TestDefaultImageName(t *testing.T) {
	digest := "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	cases := map[string]string{
		"registry.example/library/alpine:3.20":     "alpine-3.20",
		"alpine":                                   "alpine-latest",
		"registry.example/library/debian:bookworm": "debian-bookworm-oci", // the catalog's name
		"registry.example:5000/org/tool@" + digest: "tool-0123456789ab",
		"127.0.0.1:5000/a/b/c:v1_2":                "c-v1_2",
	}
	for in, want := range cases {
		ref, err := name.ParseReference(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := defaultImageName(ref); got != want {
			t.Errorf("defaultImageName(%s) = %q, want %q", in, got, want)
		}
		if err := validateArtifactName("image", defaultImageName(ref)); err != nil {
			t.Errorf("%s: default name is not valid: %v", in, err)
		}
	}
}
