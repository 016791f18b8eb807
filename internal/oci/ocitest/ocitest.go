// Package ocitest is test support for code that pulls registry images: an
// in-memory registry served on loopback, and helpers that build and push
// small images. It is imported only by tests (oci's, the daemon's, e2e's)
// and must not be used by production code.
package ocitest

import (
	"bytes"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Registry serves an in-memory registry on 127.0.0.1 until the test ends
// and returns its host:port. wrap, when set, sits in front of it (to fail,
// hold or corrupt answers).
func Registry(t testing.TB, wrap func(next http.Handler) http.Handler) string {
	t.Helper()
	host, _ := RegistryAlsoOn(t, wrap)
	return host
}

// RegistryAlsoOn is Registry, also serving the same registry (one store)
// on each of extra until the test ends, whose host:ports it returns too:
// a listener made in another network namespace reaches a daemon there,
// while pushes go to the first.
func RegistryAlsoOn(t testing.TB, wrap func(next http.Handler) http.Handler, extra ...net.Listener) (string, []string) {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	var hosts []string
	for _, ln := range extra {
		s := &http.Server{Handler: h}
		go func() { _ = s.Serve(ln) }()
		t.Cleanup(func() { _ = s.Close() })
		hosts = append(hosts, ln.Addr().String())
	}
	return strings.TrimPrefix(srv.URL, "http://"), hosts
}

// Layer makes a registry layer from an uncompressed tar.
func Layer(t testing.TB, tarData []byte, opts ...tarball.LayerOption) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tarData)), nil }, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Image stacks layers into a linux image for arch with run's settings.
func Image(t testing.TB, arch string, run v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", arch, run
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// Push writes img to ref (a registry from Registry: plain HTTP).
func Push(t testing.TB, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}
