package daemon

import (
	"io"
	"os"
)

// consoleMax caps a VM's console log: past it the log is rotated to
// console.log.1 (the newest consoleMax bytes kept there) and emptied in
// place, so a guest printing without end costs at most about twice this
// (plus what it writes between two watch-loop ticks). The VMM appends
// (O_APPEND), so its next write lands at the emptied file's start.
const consoleMax = 8 << 20

// rotateConsole rotates the console log at path when it is over max.
func rotateConsole(path string, max int64) (bool, error) {
	st, err := os.Stat(path)
	if err != nil || st.Size() <= max {
		return false, nil
	}
	in, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer in.Close()
	if _, err := in.Seek(st.Size()-max, io.SeekStart); err != nil {
		return false, err
	}
	tmp := path + ".1.tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return false, err
	}
	_, err = io.CopyN(out, in, max)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path+".1")
	}
	if err != nil {
		_ = os.Remove(tmp)
		return false, err
	}
	return true, os.Truncate(path, 0)
}

// capConsoles rotates every VM's console log that grew past consoleMax.
func (d *Daemon) capConsoles(vms []string) {
	for _, id := range vms {
		p := d.pathsFor(id).console
		if rotated, err := rotateConsole(p, consoleMax); err != nil {
			d.log.Warn("rotate a console log", "path", p, "err", err)
		} else if rotated {
			d.log.Info("console log rotated", "path", p, "kept", p+".1")
		}
	}
}
