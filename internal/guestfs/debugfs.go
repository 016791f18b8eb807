package guestfs

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"banger/internal/api"
)

// Runner runs a host command and returns its stdout. *system.Exec
// satisfies it.
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// Image is an ext4 image file that guestfs reads and patches through
// debugfs. Opening it does no I/O.
type Image struct {
	path string
	r    Runner
}

// Open returns an Image for the ext4 image at imagePath; commands run
// through r.
func Open(r Runner, imagePath string) *Image {
	return &Image{path: imagePath, r: r}
}

// Path is the host path of the image file.
func (im *Image) Path() string { return im.path }

const (
	maxPath      = 4095 // PATH_MAX - 1
	maxComponent = 255  // EXT4_NAME_LEN
	// debugfs reads its command file with fgets into a BUFSIZ (8192)
	// buffer; a longer line would be split and its tail run as a second
	// command. Stay well below that.
	maxLine = 8000
)

// checkGuestPath accepts absolute, clean paths that debugfs can be told
// about unambiguously.
func checkGuestPath(what, p string) error {
	switch {
	case strings.ContainsAny(p, "\x00\n\r"):
		return api.Errorf(api.CodeBadRequest, "guest %s %q contains NUL, newline or carriage return, which debugfs cannot be given safely; rename it", what, p)
	case p == "" || p[0] != '/':
		return api.Errorf(api.CodeBadRequest, "guest %s %q is not absolute; give the full path from /", what, p)
	case path.Clean(p) != p:
		return api.Errorf(api.CodeBadRequest, "guest %s %q is not clean (no //, /./, /../ or trailing /); use %q", what, p, path.Clean(p))
	case p == "/":
		return api.Errorf(api.CodeBadRequest, "guest %s is the root directory, which cannot be written, linked or removed", what)
	case len(p) > maxPath:
		return api.Errorf(api.CodeBadRequest, "guest %s is %d bytes long; the limit is %d", what, len(p), maxPath)
	}
	for _, c := range strings.Split(p[1:], "/") {
		if len(c) > maxComponent {
			return api.Errorf(api.CodeBadRequest, "guest %s %q has a name of %d bytes; ext4 allows %d", what, p, len(c), maxComponent)
		}
	}
	return nil
}

// quote renders s as one debugfs argument: inside double quotes spaces
// and tabs are literal and "" stands for one ".
func quote(s string) (string, error) {
	if strings.ContainsAny(s, "\x00\n\r") {
		return "", fmt.Errorf("%q contains NUL, newline or carriage return and cannot be passed to debugfs", s)
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`, nil
}

// command builds one debugfs request line from a verb and its arguments,
// quoting every argument.
func command(verb string, args ...string) (string, error) {
	var b strings.Builder
	b.WriteString(verb)
	for _, a := range args {
		q, err := quote(a)
		if err != nil {
			return "", err
		}
		b.WriteByte(' ')
		b.WriteString(q)
	}
	if b.Len() > maxLine {
		return "", api.Errorf(api.CodeBadRequest, "debugfs request for %q is %d bytes after quoting; the limit is %d", args[0], b.Len(), maxLine)
	}
	return b.String(), nil
}

// echoPrefix is what debugfs prints before echoing each request it reads
// from a command file.
const echoPrefix = "debugfs: "

// rootSentinel is the first request of every script: if the image could
// not be opened, it (like every request) prints only to stderr, and the
// missing answer tells us.
const rootSentinel = `stat "/"`

// runScript runs cmds in one debugfs invocation and returns the stdout
// lines each request produced (index i belongs to cmds[i]). The first
// request must be rootSentinel; its answer is checked here. dir is a
// private temporary directory for the command file.
func (im *Image) runScript(ctx context.Context, dir string, write bool, cmds []string) ([][]string, error) {
	if st, err := os.Stat(im.path); err != nil {
		return nil, fmt.Errorf("guest image %s: %w", im.path, err)
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("guest image %s is not a regular file", im.path)
	}
	var script bytes.Buffer
	for _, c := range cmds {
		script.WriteString(c)
		script.WriteByte('\n')
	}
	cmdFile := filepath.Join(dir, "requests")
	if err := os.WriteFile(cmdFile, script.Bytes(), 0o600); err != nil {
		return nil, fmt.Errorf("write debugfs request file: %w", err)
	}
	defer os.Remove(cmdFile)

	argv := []string{"debugfs"}
	if write {
		argv = append(argv, "-w")
	}
	argv = append(argv, "-f", cmdFile, im.path)
	out, err := im.r.Run(ctx, argv...)
	if err != nil {
		return nil, fmt.Errorf("debugfs on %s: %w (is e2fsprogs installed?)", im.path, err)
	}
	sections, err := splitByEcho(out, cmds)
	if err != nil {
		return nil, fmt.Errorf("debugfs on %s: %w", im.path, err)
	}
	if info := parseStat(sections[0]); info == nil || info.Mode&fs.ModeDir == 0 {
		mode := "read"
		if write {
			mode = "read-write"
		}
		return nil, fmt.Errorf("debugfs could not open %s %s as an ext4 file system; check that it is an ext4 image, that it is writable, and that no VM is using it", im.path, mode)
	}
	return sections, nil
}

// splitByEcho cuts debugfs's stdout into the output of each request,
// using the "debugfs: REQUEST" lines it echoes in order.
func splitByEcho(out []byte, cmds []string) ([][]string, error) {
	sections := make([][]string, len(cmds))
	next := 0
	cur := -1
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if next < len(cmds) && line == echoPrefix+cmds[next] {
			cur = next
			next++
			continue
		}
		if cur >= 0 {
			sections[cur] = append(sections[cur], line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read debugfs output: %w", err)
	}
	if next != len(cmds) {
		return nil, fmt.Errorf("debugfs stopped after %d of %d requests (last seen: %q)", next, len(cmds), lastOr(cmds, next-1))
	}
	return sections, nil
}

func lastOr(cmds []string, i int) string {
	if i < 0 || i >= len(cmds) {
		return "none"
	}
	return cmds[i]
}

// FileInfo describes one inode as debugfs's stat shows it.
type FileInfo struct {
	Inode uint64
	// Mode carries Go type bits (fs.ModeDir, fs.ModeSymlink, ...) and the
	// permission bits including setuid, setgid and sticky.
	Mode fs.FileMode
	UID  uint32
	GID  uint32
	Size int64
	// LinkTarget is set for symlinks short enough to be stored in the
	// inode ("fast" links, under 60 bytes).
	LinkTarget string
}

// IsDir reports whether the inode is a directory.
func (fi FileInfo) IsDir() bool { return fi.Mode.IsDir() }

var (
	reInode = regexp.MustCompile(`^Inode: (\d+)\s+Type: (.+?)\s+Mode:\s+([0-7]+)\s`)
	reUser  = regexp.MustCompile(`^User:\s*(-?\d+)\s+Group:\s*(-?\d+)\b.*\bSize:\s*(\d+)`)
	reFast  = regexp.MustCompile(`^Fast link dest: "(.*)"$`)
)

var typeBits = map[string]fs.FileMode{
	"regular":           0,
	"directory":         fs.ModeDir,
	"symlink":           fs.ModeSymlink,
	"block special":     fs.ModeDevice,
	"character special": fs.ModeDevice | fs.ModeCharDevice,
	"FIFO":              fs.ModeNamedPipe,
	"socket":            fs.ModeSocket,
}

// parseStat reads the output of one debugfs `stat`; nil means the path
// did not resolve (debugfs said why on stderr).
func parseStat(lines []string) *FileInfo {
	var fi *FileInfo
	for _, l := range lines {
		if m := reInode.FindStringSubmatch(l); m != nil && fi == nil {
			ino, _ := strconv.ParseUint(m[1], 10, 64)
			perm, _ := strconv.ParseUint(m[3], 8, 32)
			tb, ok := typeBits[m[2]]
			if !ok {
				tb = fs.ModeIrregular
			}
			fi = &FileInfo{Inode: ino, Mode: tb | PermFromUnix(uint32(perm))}
			continue
		}
		if fi == nil {
			continue
		}
		if m := reUser.FindStringSubmatch(l); m != nil {
			uid, _ := strconv.ParseInt(m[1], 10, 64)
			gid, _ := strconv.ParseInt(m[2], 10, 64)
			fi.UID, fi.GID = uint32(uid), uint32(gid)
			fi.Size, _ = strconv.ParseInt(m[3], 10, 64)
		} else if m := reFast.FindStringSubmatch(l); m != nil {
			fi.LinkTarget = m[1]
		}
	}
	return fi
}

// PermFromUnix converts st_mode permission bits (07777, setuid, setgid and
// sticky included) to fs.FileMode.
func PermFromUnix(p uint32) fs.FileMode {
	m := fs.FileMode(p & 0o777)
	if p&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if p&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if p&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// permBits converts the permission part of an fs.FileMode to st_mode bits.
func permBits(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

const permMask = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// Lstat describes p inside the image without following a final symlink.
// A missing path gives an error wrapping fs.ErrNotExist.
// MaxReadFile bounds what ReadFile reads from an image (16 MiB: the
// files banger reads are a few KB of configuration).
var MaxReadFile int64 = 16 << 20

func (im *Image) Lstat(ctx context.Context, p string) (FileInfo, error) {
	if err := checkGuestPathOrRoot(p); err != nil {
		return FileInfo{}, err
	}
	dir, err := im.tempDir()
	if err != nil {
		return FileInfo{}, fmt.Errorf("guestfs: temporary directory: %w", err)
	}
	defer os.RemoveAll(dir)
	st, err := command("stat", p)
	if err != nil {
		return FileInfo{}, err
	}
	sec, err := im.runScript(ctx, dir, false, []string{rootSentinel, st})
	if err != nil {
		return FileInfo{}, err
	}
	fi := parseStat(sec[1])
	if fi == nil {
		return FileInfo{}, fmt.Errorf("%s in %s: %w", p, im.path, fs.ErrNotExist)
	}
	return *fi, nil
}

func checkGuestPathOrRoot(p string) error {
	if p == "/" {
		return nil
	}
	return checkGuestPath("path", p)
}

// ReadFile returns the content of the regular file p inside the image. A
// missing path gives an error wrapping fs.ErrNotExist; a symlink or
// directory is an error (ReadFile does not follow a final symlink).
func (im *Image) ReadFile(ctx context.Context, p string) ([]byte, error) {
	if err := checkGuestPath("file", p); err != nil {
		return nil, err
	}
	// An image is untrusted input: look at the size before dumping, so a
	// multi-GiB (sparse) file can neither fill the host's disk through the
	// dump nor its memory through the read.
	pre, err := im.Lstat(ctx, p)
	if err != nil {
		return nil, err
	}
	if pre.Mode.IsRegular() && pre.Size > MaxReadFile {
		return nil, fmt.Errorf("read %s in %s: the file is %d bytes; banger reads at most %d bytes of a file from an image", p, im.path, pre.Size, MaxReadFile)
	}
	dir, err := im.tempDir()
	if err != nil {
		return nil, fmt.Errorf("guestfs: temporary directory: %w", err)
	}
	defer os.RemoveAll(dir)
	host := filepath.Join(dir, "out")
	st, err := command("stat", p)
	if err != nil {
		return nil, err
	}
	dump, err := command("dump", p, host)
	if err != nil {
		return nil, err
	}
	sec, err := im.runScript(ctx, dir, false, []string{rootSentinel, st, dump})
	if err != nil {
		return nil, err
	}
	fi := parseStat(sec[1])
	if fi == nil {
		return nil, fmt.Errorf("%s in %s: %w", p, im.path, fs.ErrNotExist)
	}
	if !fi.Mode.IsRegular() {
		return nil, fmt.Errorf("read %s in %s: not a regular file (%s)", p, im.path, fi.Mode.Type())
	}
	data, err := os.ReadFile(host)
	if err != nil {
		return nil, fmt.Errorf("read %s in %s: debugfs did not dump it: %w", p, im.path, err)
	}
	if int64(len(data)) != fi.Size {
		return nil, fmt.Errorf("read %s in %s: got %d bytes, the inode says %d", p, im.path, len(data), fi.Size)
	}
	return data, nil
}

// tempDir makes the scratch directory one operation uses, beside the
// image (inside banger's state directory, like the image), never under
// $TMPDIR: a shared /tmp is no place for files read out of an image.
func (im *Image) tempDir() (string, error) {
	return os.MkdirTemp(filepath.Dir(im.path), ".guestfs-")
}
