// Command release makes banger's release directory; `make release` runs it.
// It is a tool of this repository, not shipped.
//
//	release pubkey KEY.pem     print the public half to embed (-ldflags -X)
//	release pack --version vX.Y.Z --key KEY.pem --bin DIR --dist DIR
//
// pack is release.Pack: DIR's banger, bangerd and banger-agent become one
// tarball in dist/, SHA256SUMS is rewritten over every tarball there and
// signed, and manifest.json records the version.
package main

import (
	"crypto/ecdsa"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"

	"banger/internal/release"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "release: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: release pubkey KEY.pem | release pack --version V --key KEY.pem --bin DIR --dist DIR")
	}
	switch args[0] {
	case "pubkey":
		if len(args) != 2 {
			return errors.New("usage: release pubkey KEY.pem")
		}
		key, err := readKey(args[1])
		if err != nil {
			return err
		}
		s, err := release.EncodePublicKey(&key.PublicKey)
		if err != nil {
			return err
		}
		fmt.Println(s)
		return nil
	case "pack":
		fs := flag.NewFlagSet("pack", flag.ContinueOnError)
		version := fs.String("version", "", "release version, vX.Y.Z")
		keyPath := fs.String("key", "", "ECDSA P-256 private key (PEM)")
		bin := fs.String("bin", "", "directory holding the built binaries")
		dist := fs.String("dist", "dist", "release directory")
		arch := fs.String("arch", runtime.GOARCH, "GOARCH the binaries are built for")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *keyPath == "" || *bin == "" {
			return errors.New("pack needs --key and --bin")
		}
		key, err := readKey(*keyPath)
		if err != nil {
			return err
		}
		// Equal binaries make equal tarballs: mtime from SOURCE_DATE_EPOCH.
		var mtime int64
		if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
			if mtime, err = strconv.ParseInt(s, 10, 64); err != nil {
				return fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
			}
		}
		e, err := release.Pack(*dist, *version, *arch, *bin, key, mtime)
		if err != nil {
			return err
		}
		fmt.Printf("released %s: %s (%d bytes, sha256 %s) in %s\n", *version, e.URL, e.Size, e.SHA256, *dist)
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	return release.ParsePrivateKey(b)
}
