package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func fakeStatfs(path string) (Disk, error) {
	switch path {
	case "/":
		return Disk{Size: 10 << 30, Used: 3 << 30, Avail: 6 << 30}, nil
	case "/root":
		return Disk{Size: 20 << 30, Used: 1 << 30, Avail: 18 << 30}, nil
	}
	return Disk{}, errors.New("no such filesystem")
}

var wantHealth = Health{
	AgentVersion: "v9.9.9-test",
	UptimeS:      1234.56,
	Load1:        0.52, Load5: 0.31, Load15: 0.15,
	MemTotal:     2027600 * 1024,
	MemAvailable: 1790308 * 1024,
	Disks: []Disk{
		{Path: "/", Size: 10 << 30, Used: 3 << 30, Avail: 6 << 30},
		{Path: "/root", Size: 20 << 30, Used: 1 << 30, Avail: 18 << 30},
	},
	Hostname: "dev-vm",
	BootID:   "3f2c1a9e-5b7d-4e21-9c0a-8d6f4b2e1c77",
}

func TestHealth(t *testing.T) {
	s := &Server{AgentVersion: "v9.9.9-test", ProcRoot: fakeProc(t), Statfs: fakeStatfs}
	if got := s.Health(); !reflect.DeepEqual(got, wantHealth) {
		t.Errorf("Health:\n got  %+v\n want %+v", got, wantHealth)
	}
}

func TestHealthRootNotMounted(t *testing.T) {
	root := fakeProc(t)
	// The same mountinfo without the /root line.
	b, err := os.ReadFile(filepath.Join(root, "self/mountinfo"))
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, " /root ") {
			keep = append(keep, l)
		}
	}
	mustWrite(t, filepath.Join(root, "self/mountinfo"), strings.Join(keep, "\n"))
	s := &Server{ProcRoot: root, Statfs: fakeStatfs}
	h := s.Health()
	if len(h.Disks) != 1 || h.Disks[0].Path != "/" {
		t.Errorf("disks = %+v, want / only", h.Disks)
	}
	if len(h.Warnings) != 0 {
		t.Errorf("warnings: %q", h.Warnings)
	}
}

func TestHealthBestEffort(t *testing.T) {
	root := t.TempDir() // an empty /proc
	s := &Server{ProcRoot: root, Statfs: fakeStatfs}
	h := s.Health()
	if len(h.Disks) != 1 || h.Disks[0].Path != "/" {
		t.Errorf("disks = %+v, want /", h.Disks)
	}
	for _, w := range []string{"uptime", "loadavg", "meminfo", "hostname", "boot_id", "mountinfo"} {
		found := false
		for _, got := range h.Warnings {
			found = found || strings.HasPrefix(got, w+":")
		}
		if !found {
			t.Errorf("no %s warning in %q", w, h.Warnings)
		}
	}
}

func TestStatfsDisk(t *testing.T) {
	d, err := statfsDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if d.Size == 0 || d.Used > d.Size || d.Avail > d.Size {
		t.Errorf("implausible %+v", d)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/mnt/with\040space`: "/mnt/with space",
		`/a\134b`:            `/a\b`,
		`/plain`:             "/plain",
		`/trail\04`:          `/trail\04`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
	ok, err := isMountPoint("testdata/proc/self/mountinfo", "/mnt/with space")
	if err != nil || !ok {
		t.Errorf("isMountPoint(with space) = %v, %v", ok, err)
	}
}
