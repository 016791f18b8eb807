package kernel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"banger/internal/artifact"
)

// aptDownload fetches one binary package with `apt-get download` into dir
// and returns the .deb's path. apt-get writes into its working directory,
// so it runs under `env --chdir`. When apt does not know the package (no
// package lists yet), the lists are refreshed once with `apt-get update`.
func aptDownload(ctx context.Context, r Runner, dir, pkg string) (string, error) {
	download := []string{"env", "--chdir=" + dir, "apt-get", "download", "--quiet",
		// The download directory belongs to us, not to apt's _apt user.
		"-o", "APT::Sandbox::User=root", pkg}
	if _, err := r.Run(ctx, download...); err != nil {
		if !aptLacksPackage(err) {
			return "", fmt.Errorf("download Debian package %s: %w", pkg, err)
		}
		if _, uerr := r.Run(ctx, "apt-get", "update", "--quiet"); uerr != nil {
			return "", fmt.Errorf("download Debian package %s: apt does not know it and `apt-get update` failed: %w (run it as root, check /etc/apt/sources.list.d)", pkg, uerr)
		}
		if _, err := r.Run(ctx, download...); err != nil {
			return "", fmt.Errorf("download Debian package %s after apt-get update: %w (is a Debian bookworm source configured in /etc/apt/sources.list.d?)", pkg, err)
		}
	}
	matches, err := filepath.Glob(filepath.Join(dir, globEscape(pkg)+"_*.deb"))
	if err != nil {
		return "", err
	}
	if len(matches) != 1 {
		return "", fmt.Errorf("download Debian package %s: want one %s_*.deb in %s, found %d", pkg, pkg, dir, len(matches))
	}
	return matches[0], nil
}

// aptLacksPackage recognises apt's answers for a package it has no lists
// for.
func aptLacksPackage(err error) bool {
	msg := err.Error()
	for _, s := range []string{"Unable to locate package", "has no installation candidate", "Can't select candidate version", "No packages found"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func globEscape(s string) string {
	r := strings.NewReplacer(`*`, `\*`, `?`, `\?`, `[`, `\[`, `\`, `\\`)
	return r.Replace(s)
}

// debFields returns the control fields of a .deb.
func debFields(ctx context.Context, r Runner, deb string) (map[string]string, error) {
	out, err := r.Run(ctx, "dpkg-deb", "--field", deb)
	if err != nil {
		return nil, fmt.Errorf("read control fields of %s: %w", filepath.Base(deb), err)
	}
	fields, err := parseControl(strings.NewReader(string(out)))
	if err != nil {
		return nil, fmt.Errorf("read control fields of %s: %w", filepath.Base(deb), err)
	}
	if fields["Package"] == "" || fields["Version"] == "" {
		return nil, fmt.Errorf("control fields of %s lack Package or Version", filepath.Base(deb))
	}
	return fields, nil
}

// parseControl parses one deb822 stanza. Continuation lines (starting
// with a space or tab) are joined to the field with a newline.
func parseControl(r io.Reader) (map[string]string, error) {
	fields := map[string]string{}
	last := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last == "" {
				return nil, fmt.Errorf("continuation line before any field: %q", line)
			}
			fields[last] += "\n" + strings.TrimSpace(line)
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("not a control field: %q", line)
		}
		last = strings.TrimSpace(k)
		fields[last] = strings.TrimSpace(v)
	}
	return fields, sc.Err()
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// moveTree renames src to dst, copying when they are on different
// filesystems.
func moveTree(src, dst string) error {
	err := os.Rename(src, dst)
	if err == nil || !errors.Is(err, syscall.EXDEV) {
		return err
	}
	if err := artifact.CopyTree(src, dst, false); err != nil {
		return err
	}
	return os.RemoveAll(src)
}
