package daemon

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestRotateConsole(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	// The VMM's own handle: appends, as QEMU's append=on file does.
	w, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000) // 16000 bytes
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if rotated, err := rotateConsole(p, 16000); err != nil || rotated {
		t.Fatalf("a log at the cap was rotated: %v %v", rotated, err)
	}
	if _, err := w.Write([]byte("tail\n")); err != nil {
		t.Fatal(err)
	}
	rotated, err := rotateConsole(p, 4096)
	if err != nil || !rotated {
		t.Fatalf("rotate = %v, %v", rotated, err)
	}
	kept, _ := os.ReadFile(p + ".1")
	want := append(append([]byte{}, data...), "tail\n"...)
	if !bytes.Equal(kept, want[len(want)-4096:]) {
		t.Errorf("console.log.1 holds %d bytes, not the newest 4096", len(kept))
	}
	if st, _ := os.Stat(p); st.Size() != 0 {
		t.Errorf("console.log is %d bytes after rotation", st.Size())
	}
	// The VMM's next write lands at the start of the emptied file.
	if _, err := w.Write([]byte("after\n")); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); string(got) != "after\n" {
		t.Errorf("console.log after a write = %q", got)
	}
}
