package image

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strings"
)

// parseStanzas reads deb822 paragraphs (dpkg's status file, .sources
// files). Field names are case-sensitive as written; continuation lines are
// joined with a newline; '#' lines are comments.
func parseStanzas(r io.Reader) ([]map[string]string, error) {
	var out []map[string]string
	cur := map[string]string{}
	last := ""
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
		}
		cur, last = map[string]string{}, ""
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case strings.HasPrefix(line, "#"):
		case line[0] == ' ' || line[0] == '\t':
			if last == "" {
				return nil, fmt.Errorf("line %d: continuation line before any field", n)
			}
			cur[last] += "\n" + strings.TrimSpace(line)
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				return nil, fmt.Errorf("line %d: not a field: %q", n, line)
			}
			last = strings.TrimSpace(k)
			cur[last] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	flush()
	return out, nil
}

// Package is one installed Debian package.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
}

// parseDpkgStatus lists the packages dpkg's status file (var/lib/dpkg/status)
// records as installed, sorted by name.
func parseDpkgStatus(r io.Reader) ([]Package, error) {
	stanzas, err := parseStanzas(r)
	if err != nil {
		return nil, fmt.Errorf("parse dpkg status: %w", err)
	}
	var pkgs []Package
	for _, s := range stanzas {
		if s["Package"] == "" {
			return nil, fmt.Errorf("parse dpkg status: a stanza has no Package field")
		}
		// Status: want flag status, e.g. "install ok installed".
		st := strings.Fields(s["Status"])
		if len(st) != 3 || st[2] != "installed" {
			continue
		}
		pkgs = append(pkgs, Package{Name: s["Package"], Version: s["Version"], Arch: s["Architecture"]})
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].Name < pkgs[j].Name })
	return pkgs, nil
}
