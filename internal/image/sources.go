package image

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// hostDebianSources returns the host's apt sources for suite (and its
// -updates and -security pockets) as one-line "deb URI SUITE COMPONENTS"
// entries, the form mmdebstrap takes as MIRROR arguments. aptDir is
// normally /etc/apt. Other suites and third-party repositories on the host
// are left out: they are not part of a Debian image. Options such as
// signed-by are dropped; mmdebstrap verifies against the host's keyrings.
// No matching source gives nil; the caller refuses to build without one.
func hostDebianSources(aptDir, suite string) ([]string, error) {
	var entries []sourceEntry
	if f, err := os.Open(filepath.Join(aptDir, "sources.list")); err == nil {
		e, err := parseOneLineSources(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", filepath.Join(aptDir, "sources.list"), err)
		}
		entries = append(entries, e...)
	} else if !os.IsNotExist(err) {
		return nil, err
	}
	dir := filepath.Join(aptDir, "sources.list.d")
	names, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	for _, n := range names {
		var parse func(io.Reader) ([]sourceEntry, error)
		switch filepath.Ext(n.Name()) {
		case ".list":
			parse = parseOneLineSources
		case ".sources":
			parse = parseDeb822Sources
		default:
			continue // apt ignores other names too (.disabled, .save, ...)
		}
		f, err := os.Open(filepath.Join(dir, n.Name()))
		if err != nil {
			return nil, err
		}
		e, err := parse(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, n.Name()), err)
		}
		entries = append(entries, e...)
	}

	pockets := []string{suite, suite + "-updates", suite + "-security"}
	var lines []string
	for _, e := range entries {
		if e.typ != "deb" || !slices.Contains(pockets, e.suite) {
			continue
		}
		line := strings.Join(append([]string{"deb", e.uri, e.suite}, e.components...), " ")
		if !slices.Contains(lines, line) {
			lines = append(lines, line)
		}
	}
	return lines, nil
}

type sourceEntry struct {
	typ, uri, suite string
	components      []string
}

// parseOneLineSources reads sources.list syntax:
// "deb [opt=val ...] URI SUITE COMPONENT...".
func parseOneLineSources(r io.Reader) ([]sourceEntry, error) {
	var out []sourceEntry
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		typ := f[0]
		f = f[1:]
		if len(f) > 0 && strings.HasPrefix(f[0], "[") {
			end := slices.IndexFunc(f, func(s string) bool { return strings.HasSuffix(s, "]") })
			if end < 0 {
				return nil, fmt.Errorf("line %d: unterminated [options]", n)
			}
			f = f[end+1:]
		}
		if len(f) < 2 {
			return nil, fmt.Errorf("line %d: want \"%s URI SUITE [COMPONENT...]\"", n, typ)
		}
		out = append(out, sourceEntry{typ: typ, uri: f[0], suite: f[1], components: f[2:]})
	}
	return out, sc.Err()
}

// parseDeb822Sources reads .sources files: stanzas of Types, URIs,
// Suites, Components (each a space-separated list) and Enabled.
func parseDeb822Sources(r io.Reader) ([]sourceEntry, error) {
	stanzas, err := parseStanzas(r)
	if err != nil {
		return nil, err
	}
	var out []sourceEntry
	for _, s := range stanzas {
		if strings.EqualFold(s["Enabled"], "no") {
			continue
		}
		for _, typ := range strings.Fields(s["Types"]) {
			for _, uri := range strings.Fields(s["URIs"]) {
				for _, suite := range strings.Fields(s["Suites"]) {
					out = append(out, sourceEntry{typ: typ, uri: uri, suite: suite, components: strings.Fields(s["Components"])})
				}
			}
		}
	}
	return out, nil
}
