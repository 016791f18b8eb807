package daemon

import (
	"bufio"
	"os"
	"sort"
	"strings"
	"testing"
)

// TestDispatchTableMatchesDocs fails when docs/rpc.md and the dispatch table
// differ in either direction.
func TestDispatchTableMatchesDocs(t *testing.T) {
	f, err := os.Open("../../docs/rpc.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	documented := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(line, "### "); ok {
			documented[strings.Trim(strings.TrimSpace(name), "`")] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	d := &Daemon{}
	table := d.Methods()
	var missingDocs, missingImpl []string
	for name := range table {
		if !documented[name] {
			missingDocs = append(missingDocs, name)
		}
	}
	for name := range documented {
		if _, ok := table[name]; !ok {
			missingImpl = append(missingImpl, name)
		}
	}
	sort.Strings(missingDocs)
	sort.Strings(missingImpl)
	if len(missingDocs) > 0 {
		t.Errorf("methods in the dispatch table but not in docs/rpc.md: %v", missingDocs)
	}
	if len(missingImpl) > 0 {
		t.Errorf("methods documented in docs/rpc.md but not in the dispatch table: %v", missingImpl)
	}
	if len(table) == 0 {
		t.Fatal("empty dispatch table")
	}
}
