//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func gitIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@e", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@e")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v: %s", args, err, out)
	}
	return string(out)
}

// TestWorkspace: vm run copies a repository with its HEAD as a real
// commit, runs a command with its exit status, syncs again on re-run,
// exports the guest's changes as a patch, and --rm leaves nothing.
func TestWorkspace(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t, `forward_ports = "auto"`)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")

	repo := filepath.Join(e.root, "fixture-repo")
	if err := os.MkdirAll(filepath.Join(repo, "src"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(rel, body string) {
		if err := os.WriteFile(filepath.Join(repo, rel), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gitIn(t, repo, "init", "-q", "-b", "main")
	write("README", "hello\n")
	write("src/main.sh", "echo main\n")
	write(".gitignore", "*.log\n")
	gitIn(t, repo, "add", "-A")
	gitIn(t, repo, "commit", "-q", "-m", "first")
	write("README", "hello, changed\n") // uncommitted
	write("debug.log", "ignored\n")
	head := strings.TrimSpace(gitIn(t, repo, "rev-parse", "HEAD"))

	// Refusals before anything is made.
	if _, errOut, code := e.banger("vm", "run", "-d", "--rm", repo); code == 0 || !strings.Contains(errOut, "contradict") {
		t.Errorf("-d --rm: exit %d: %s", code, errOut)
	}
	if _, errOut, code := e.banger("vm", "run", "-d", repo, "--", "true"); code == 0 || !strings.Contains(errOut, "-d runs no command") {
		t.Errorf("-d -- CMD: exit %d: %s", code, errOut)
	}

	// The status of the command is the status of vm run.
	out, errOut, code := e.banger("vm", "run", "--name", "ws", repo, "--", "sh", "-c", "git rev-parse HEAD; git status --porcelain; exit 3")
	if code != 3 {
		t.Fatalf("vm run -- exit 3: exit %d\n%s\n%s", code, out, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 || lines[0] != head || !strings.Contains(out, " M README") {
		t.Errorf("in the guest: HEAD and status\n%s\nwant HEAD %s and README modified", out, head)
	}
	if got, want := e.must("vm", "exec", "ws", "--", "git", "-C", "/root/repo", "ls-files"), gitIn(t, repo, "ls-files"); got != want {
		t.Errorf("guest ls-files\n%s\nwant\n%s", got, want)
	}
	if e.guestHas("ws", "/root/repo/debug.log") {
		t.Error("an ignored file was copied")
	}
	// Re-run on the existing VM syncs instead of creating.
	write("src/new.sh", "echo new\n")
	gitIn(t, repo, "add", "src/new.sh")
	if _, errOut, code := e.banger("vm", "run", "--name", "ws", repo, "--", "test", "-f", "src/new.sh"); code != 0 {
		t.Errorf("re-run did not sync a new file: exit %d: %s", code, errOut)
	}

	// The guest's edits come back as a patch that applies on the host.
	e.must("vm", "exec", "ws", "--", "sh", "-c", "cd /root/repo && echo guest >> src/main.sh && echo fresh > added.txt")
	patch := e.must("vm", "workspace", "export", "ws")
	if !strings.Contains(patch, "added.txt") || !strings.Contains(patch, "src/main.sh") {
		t.Errorf("export lacks the guest's changes:\n%s", patch)
	}
	clone := filepath.Join(e.root, "clone")
	if out, err := exec.Command("git", "clone", "-q", repo, clone).CombinedOutput(); err != nil {
		t.Fatalf("git clone: %v: %s", err, out)
	}
	patchFile := filepath.Join(e.root, "changes.patch")
	if err := os.WriteFile(patchFile, []byte(patch), 0o644); err != nil {
		t.Fatal(err)
	}
	gitIn(t, clone, "apply", "--check", patchFile)

	// forward_ports = "auto": a new listener in the guest shows up on the
	// host's loopback by itself, and goes when it stops listening.
	e.must("vm", "exec", "ws", "--", "systemd-run", "--unit", "web8123", "--", "systemd-socket-activate", "-l", "8123", "--inetd", "-a",
		"sh", "-c", `printf 'HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n'`)
	waitForward := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			list := e.must("vm", "forward", "ws", "--list")
			if strings.Contains(list, "127.0.0.1:8123") == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("auto-forward of 8123 present=%v not reached within 15s:\n%s", want, list)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	waitForward(true)
	e.must("vm", "exec", "ws", "--", "systemctl", "stop", "web8123")
	waitForward(false)

	// vm cp: a tree there and back, modes, a link and a sparse file kept.
	tree := filepath.Join(e.root, "cp-src")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sub", "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/run.sh", filepath.Join(tree, "link")); err != nil {
		t.Fatal(err)
	}
	sparse, err := os.Create(filepath.Join(tree, "sparse.img"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sparse.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	sparse.Close()
	e.must("vm", "cp", "-r", tree, "ws:/root/cp-dst")
	if got := strings.TrimSpace(e.must("vm", "exec", "ws", "--", "stat", "-c", "%a %s", "/root/cp-dst/sub/run.sh", "/root/cp-dst/sparse.img")); got != "750 18\n644 1073741824" {
		t.Errorf("in the guest: %q", got)
	}
	if got := strings.TrimSpace(e.must("vm", "exec", "ws", "--", "readlink", "/root/cp-dst/link")); got != "sub/run.sh" {
		t.Errorf("the link in the guest points to %q", got)
	}
	back := filepath.Join(e.root, "cp-back")
	e.must("vm", "cp", "-r", "ws:/root/cp-dst", back)
	if fi, err := os.Stat(filepath.Join(back, "sub", "run.sh")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("back on the host: %v %v", fi, err)
	}
	if target, _ := os.Readlink(filepath.Join(back, "link")); target != "sub/run.sh" {
		t.Errorf("link back on the host: %q", target)
	}

	// --rm: nothing is left of a VM made for one command.
	countVMs := func() int {
		var vms []json.RawMessage
		if err := json.Unmarshal([]byte(e.must("vm", "list", "--json")), &vms); err != nil {
			t.Fatal(err)
		}
		return len(vms)
	}
	before := countVMs()
	if _, errOut, code := e.banger("vm", "run", "--rm", repo, "--", "true"); code != 0 {
		t.Fatalf("vm run --rm: exit %d: %s", code, errOut)
	}
	if after := countVMs(); after != before {
		t.Errorf("vm run --rm left a VM: %d VMs before, %d after", before, after)
	}
}
