package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Health collects the health answer. It is best effort: what it cannot read
// is left zero and named in Warnings, so a guest with an odd /proc still
// answers.
func (s *Server) Health() Health {
	root := s.procRoot()
	h := Health{AgentVersion: s.AgentVersion, Disks: []Disk{}}
	warn := func(format string, args ...any) {
		h.Warnings = append(h.Warnings, fmt.Sprintf(format, args...))
	}

	if f, err := readFields(filepath.Join(root, "uptime"), 1); err != nil {
		warn("uptime: %v", err)
	} else if h.UptimeS, err = strconv.ParseFloat(f[0], 64); err != nil {
		warn("uptime: %v", err)
	}

	if f, err := readFields(filepath.Join(root, "loadavg"), 3); err != nil {
		warn("loadavg: %v", err)
	} else {
		for i, dst := range []*float64{&h.Load1, &h.Load5, &h.Load15} {
			if *dst, err = strconv.ParseFloat(f[i], 64); err != nil {
				warn("loadavg: %v", err)
				break
			}
		}
	}

	if mem, err := readMeminfo(filepath.Join(root, "meminfo")); err != nil {
		warn("meminfo: %v", err)
	} else {
		var ok bool
		if h.MemTotal, ok = mem["MemTotal"]; !ok {
			warn("meminfo: no MemTotal")
		}
		if h.MemAvailable, ok = mem["MemAvailable"]; !ok {
			warn("meminfo: no MemAvailable")
		}
	}

	var err error
	if h.Hostname, err = readLine(filepath.Join(root, "sys/kernel/hostname")); err != nil {
		warn("hostname: %v", err)
	}
	if h.BootID, err = readLine(filepath.Join(root, "sys/kernel/random/boot_id")); err != nil {
		warn("boot_id: %v", err)
	}

	paths := []string{"/"}
	if mounted, err := isMountPoint(filepath.Join(root, "self/mountinfo"), "/root"); err != nil {
		warn("mountinfo: %v", err)
	} else if mounted {
		paths = append(paths, "/root")
	}
	statfs := s.Statfs
	if statfs == nil {
		statfs = statfsDisk
	}
	for _, p := range paths {
		d, err := statfs(p)
		if err != nil {
			warn("statfs %s: %v", p, err)
			continue
		}
		d.Path = p
		h.Disks = append(h.Disks, d)
	}
	return h
}

// statfsDisk measures the filesystem holding path as df does.
func statfsDisk(path string) (Disk, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return Disk{}, err
	}
	bs := uint64(st.Frsize)
	if bs == 0 {
		bs = uint64(st.Bsize)
	}
	return Disk{
		Path:  path,
		Size:  st.Blocks * bs,
		Used:  (st.Blocks - st.Bfree) * bs,
		Avail: st.Bavail * bs,
	}, nil
}

// readFields returns the whitespace-separated fields of a small file,
// failing when there are fewer than n.
func readFields(path string, n int) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(string(b))
	if len(f) < n {
		return nil, fmt.Errorf("%s: %d fields, want %d", path, len(f), n)
	}
	return f, nil
}

// readLine returns a one-line file's content without the newline.
func readLine(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return string(bytes.TrimSpace(b)), nil
}

// readMeminfo parses /proc/meminfo into bytes per key ("kB" values are
// multiplied by 1024).
func readMeminfo(path string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			continue
		}
		if len(fields) > 1 && fields[1] == "kB" {
			v *= 1024
		}
		out[key] = v
	}
	return out, sc.Err()
}

// isMountPoint reports whether mountinfo (a /proc/PID/mountinfo) lists dir
// as a mount point.
func isMountPoint(mountinfo, dir string) (bool, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && unescapeMount(fields[4]) == dir {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMount undoes the octal escapes (\040 for a space, ...) the kernel
// puts in mountinfo paths.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
