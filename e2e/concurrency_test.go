//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrency: 20 creates at once, several with the same name (one
// wins each name, the others are refused, no address or tap is shared);
// deletes and starts at once; a create racing the delete of its image;
// two CLIs cancelling the same create. Nothing leaks.
func TestConcurrency(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")

	// 20 creates (without booting: the race is in the daemon, not the
	// guests), 14 names: n0..n9 once, d0..d3 twice or more.
	names := []string{}
	for i := range 10 {
		names = append(names, fmt.Sprintf("n%d", i))
	}
	for i := range 10 {
		names = append(names, fmt.Sprintf("d%d", i%4))
	}
	type result struct {
		name string
		code int
		err  string
	}
	results := make([]result, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errOut, code := e.banger("vm", "create", "--name", n, "--no-start")
			results[i] = result{n, code, errOut}
		}()
	}
	wg.Wait()
	won := map[string]int{}
	for _, r := range results {
		if r.code == 0 {
			won[r.name]++
		} else if !strings.Contains(r.err, "already exists") && !strings.Contains(r.err, "is being created") {
			t.Errorf("create %s failed for another reason than its name: %s", r.name, r.err)
		}
	}
	if len(won) != 14 {
		t.Errorf("%d names created, want 14: %v", len(won), won)
	}
	for n, c := range won {
		if c != 1 {
			t.Errorf("%s created %d times", n, c)
		}
	}
	var vms []vmJSON
	if err := json.Unmarshal([]byte(e.must("vm", "list", "--json")), &vms); err != nil {
		t.Fatal(err)
	}
	ips, macs := map[string]string{}, map[string]string{}
	for _, v := range vms {
		if o, dup := ips[v.IP]; dup {
			t.Errorf("%s and %s share address %s", o, v.Name, v.IP)
		}
		if o, dup := macs[v.MAC]; dup {
			t.Errorf("%s and %s share MAC %s", o, v.Name, v.MAC)
		}
		ips[v.IP], macs[v.MAC] = v.Name, v.Name
	}
	if len(vms) != 14 {
		t.Errorf("vm list has %d VMs, want 14", len(vms))
	}
	e.assertNoLeaks("after 20 concurrent creates")

	// Starts of three at once, and deletes of the rest at once.
	e.parallel([]string{"n0", "n1", "n2"}, func(n string) []string { return []string{"vm", "start", n} })
	rest := []string{}
	for _, v := range vms {
		if v.Name != "n0" && v.Name != "n1" && v.Name != "n2" {
			rest = append(rest, v.Name)
		}
	}
	e.parallel(rest, func(n string) []string { return []string{"vm", "delete", n} })
	for _, n := range []string{"n0", "n1", "n2"} {
		e.must("vm", "exec", n, "--", "true")
	}
	e.parallel([]string{"n0", "n1", "n2"}, func(n string) []string { return []string{"vm", "delete", n} })
	e.assertNoLeaks("after concurrent starts and deletes")

	// A create racing the delete of its image: either the image goes and
	// the create is refused, or the create wins and the delete is refused
	// naming it; never a VM whose image is gone.
	e.must("image", "register", "--name", "victim", "--rootfs", rootfs, "--kernel", "debian-6.1")
	var createErr, deleteErr string
	var createCode, deleteCode int
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, createErr, createCode = e.banger("vm", "create", "--name", "racer", "--image", "victim", "--no-start")
	}()
	go func() { defer wg.Done(); _, deleteErr, deleteCode = e.banger("image", "delete", "victim") }()
	wg.Wait()
	switch {
	case createCode == 0 && deleteCode != 0:
		if !strings.Contains(deleteErr, "racer") {
			t.Errorf("image delete refused without naming the VM: %s", deleteErr)
		}
		e.must("vm", "delete", "racer")
		e.must("image", "delete", "victim")
	case createCode != 0 && deleteCode == 0:
		if !strings.Contains(createErr, "victim") {
			t.Errorf("create refused without naming the image: %s", createErr)
		}
	default:
		t.Errorf("create (exit %d: %s) and image delete (exit %d: %s) both succeeded or both failed", createCode, createErr, deleteCode, deleteErr)
	}
	e.assertNoLeaks("after a create raced its image's delete")

	// Two CLIs cancelling the same create.
	create := exec.Command("ip", "netns", "exec", e.ns, filepath.Join(e.bin, "banger"), "--no-autostart", "vm", "create", "--name", "cancelled")
	create.Env = e.vars
	var out bytes.Buffer
	create.Stdout, create.Stderr = &out, &out
	if err := create.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- create.Wait() }()
	var opID string
	for deadline := time.Now().Add(30 * time.Second); opID == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var ops []struct {
			ID, Kind, Target string
			Done             bool
		}
		_ = json.Unmarshal([]byte(e.must("ops", "--json")), &ops)
		for _, op := range ops {
			if op.Target == "cancelled" && !op.Done {
				opID = op.ID
			}
		}
	}
	if opID == "" {
		t.Fatalf("the create never showed in ops: %s", out.String())
	}
	codes := make([]int, 2)
	errs := make([]string, 2)
	for i := range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[i], codes[i] = e.banger("ops", "cancel", opID) }()
	}
	wg.Wait()
	for i := range 2 {
		if codes[i] != 0 {
			t.Errorf("cancel %d of the same op: exit %d: %s", i, codes[i], errs[i])
		}
	}
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("the cancelled create succeeded: %s", out.String())
		}
	case <-time.After(2 * time.Minute):
		_ = create.Process.Kill()
		t.Fatal("the cancelled create never returned")
	}
	if _, _, code := e.banger("vm", "show", "cancelled"); code == 0 {
		t.Error("the cancelled VM exists")
	}
	e.assertNoLeaks("after a double cancel")
}
