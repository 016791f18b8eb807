// Command fakebanger stands in for banger, bangerd and banger-agent (by
// the name it runs as) in the updater's unit tests: it answers the few
// invocations the updater makes with the version it was linked with.
// The end-to-end test updates real releases.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

var (
	version    = "v0.0.0"
	migrations = "0" // bangerd --check-migrations exit status
)

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	switch {
	case strings.HasPrefix(name, "banger-agent"):
		fmt.Printf("banger-agent %s (test), protocol 1\n", version)
	case strings.HasPrefix(name, "bangerd"):
		code, _ := strconv.Atoi(migrations)
		fmt.Println("migrations: test")
		os.Exit(code)
	case slices.Contains(args, "version"):
		fmt.Printf("{\"client\":{\"version\":%q}}\n", version)
	case slices.Contains(args, "doctor"):
		// FAKE_DOCTOR_FAIL names a file whose existence makes a check fail.
		if p := os.Getenv("FAKE_DOCTOR_FAIL"); p != "" {
			if _, err := os.Stat(p); err == nil {
				fmt.Println(`[{"name":"tool e2fsck","status":"FAIL","detail":"not found on PATH"}]`)
				os.Exit(1)
			}
		}
		fmt.Println(`[{"name":"kvm","status":"WARN","detail":"no /dev/kvm"},{"name":"vmm","status":"PASS","detail":"qemu"}]`)
	default:
		fmt.Fprintf(os.Stderr, "fakebanger: unexpected %s %v\n", name, args)
		os.Exit(3)
	}
}
