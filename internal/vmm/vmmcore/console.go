package vmmcore

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// TailLines is how many console lines a start failure carries.
const TailLines = 20

// OpenConsoleLog opens (creating) the console log for appending, so the
// VMM's output from every boot of a VM accumulates in one file.
func OpenConsoleLog(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create console log directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open console log: %w", err)
	}
	return f, nil
}

// MarkBoot writes one line to the console log that separates this boot's
// output from the previous one's.
func MarkBoot(f *os.File, driver string, argv []string) {
	fmt.Fprintf(f, "\n[banger %s] starting %s: %s\n",
		time.Now().UTC().Format(time.RFC3339), driver, strings.Join(argv, " "))
}

// ConsoleTail returns the last n lines of the file at path, with control
// characters (the guest's terminal escapes) removed. It reads at most the
// last 64 KiB. A missing or unreadable file yields a note, not an error,
// because it is only ever used to explain another error.
func ConsoleTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(console log unreadable: %v)", err)
	}
	defer f.Close()
	const window = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > window {
		if _, err := f.Seek(st.Size()-window, io.SeekStart); err != nil {
			return fmt.Sprintf("(console log unreadable: %v)", err)
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(console log unreadable: %v)", err)
	}
	text := strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || (r >= ' ' && r != 0x7f) {
			return r
		}
		return -1
	}, string(b))
	lines := strings.Split(strings.TrimRight(text, "\n "), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	out := strings.TrimSpace(strings.Join(lines, "\n"))
	if out == "" {
		return "(console log is empty)"
	}
	return out
}

// WithConsoleTail wraps err with the last TailLines lines of the console
// log, which usually say why a VMM or guest failed.
func WithConsoleTail(err error, path string) error {
	return fmt.Errorf("%w\nlast lines of %s:\n%s", err, path, ConsoleTail(path, TailLines))
}
