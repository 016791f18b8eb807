package vmcp

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
)

const (
	// chunkSize is how much is read at a time. SFTP reads and writes
	// this large are split into concurrent requests by the client.
	chunkSize = 1 << 20
	// blockSize is the granularity at which zeros are skipped: a
	// filesystem block, the unit a hole is made of.
	blockSize = 4096
)

var zeroBlock [blockSize]byte

func (w *walker) progress(n int64) {
	if n > 0 && w.c.Progress != nil {
		w.c.Progress(n)
	}
}

// copyFile copies a regular file's data, mode and times. Runs of zeros
// are not written (see copyData), and the file is given its full size at
// the end, which leaves holes where they were.
func (w *walker) copyFile(sp, dp string, fi fs.FileInfo) error {
	if err := w.clear(dp, true, "file "+w.src.label(sp)); err != nil {
		return err
	}
	in, err := w.src.open(sp)
	if err != nil {
		return pathError(w.src, "open", sp, err)
	}
	defer in.Close()
	out, err := w.dst.create(dp)
	if err != nil {
		return pathError(w.dst, "create", dp, err)
	}
	perm := permOf(fi)
	// The final permission bits at once, so a private file is never
	// readable by others while it is written; setuid and setgid come
	// last, as writing clears them.
	if err := out.Chmod(perm & fs.ModePerm); err != nil {
		out.Close()
		return pathError(w.dst, "set mode of", dp, err)
	}
	size, err := w.copyData(in, out, fi.Size(), sp, dp)
	if err == nil {
		if terr := out.Truncate(size); terr != nil {
			err = pathError(w.dst, "set the size of", dp, terr)
		}
	}
	if cerr := out.Close(); err == nil && cerr != nil {
		err = pathError(w.dst, "write", dp, cerr)
	}
	if err != nil {
		return err
	}
	if perm&^fs.ModePerm != 0 {
		if err := w.dst.chmod(dp, perm); err != nil {
			return pathError(w.dst, "set mode of", dp, err)
		}
	}
	w.stats.Files++
	w.stats.Bytes += size
	return w.setTimes(dp, fi, false)
}

// copyData copies the first size bytes of in to out, which starts empty,
// skipping the holes in reports and every all-zero block. It returns how
// many bytes the file turned out to have (less than size if it shrank
// while being read; what it grew by is not copied).
func (w *walker) copyData(in srcFile, out dstFile, size int64, sp, dp string) (int64, error) {
	if w.buf == nil {
		w.buf = make([]byte, chunkSize)
	}
	if size == 0 {
		// Kernel files (/proc, /sys) say 0 and have data: read to EOF.
		return w.copyToEOF(in, out, sp, dp)
	}
	var off int64
	for off < size {
		start, end := in.nextData(off, size)
		w.progress(start - off) // a hole, done by not writing it
		off = start
		for off < end {
			if err := w.ctx.Err(); err != nil {
				return off, err
			}
			n := int(min(int64(len(w.buf)), end-off))
			got, err := in.ReadAt(w.buf[:n], off)
			shrank := false
			switch {
			case got == n:
			case err == nil || errors.Is(err, io.EOF):
				shrank = true
			default:
				return off, pathError(w.src, "read", sp, err)
			}
			if err := writeSparse(out, w.buf[:got], off); err != nil {
				return off, pathError(w.dst, "write", dp, err)
			}
			w.progress(int64(got))
			off += int64(got)
			if shrank {
				return off, nil
			}
		}
	}
	return size, nil
}

// copyToEOF copies in to out until a read comes back short.
func (w *walker) copyToEOF(in srcFile, out dstFile, sp, dp string) (int64, error) {
	var off int64
	for {
		if err := w.ctx.Err(); err != nil {
			return off, err
		}
		got, err := in.ReadAt(w.buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return off, pathError(w.src, "read", sp, err)
		}
		if werr := writeSparse(out, w.buf[:got], off); werr != nil {
			return off, pathError(w.dst, "write", dp, werr)
		}
		w.progress(int64(got))
		off += int64(got)
		if got < len(w.buf) {
			return off, nil
		}
	}
}

// writeSparse writes b at off, leaving out every all-zero block (blocks
// aligned to blockSize in the file), so that they stay holes. Adjacent
// blocks with data go out in one write.
func writeSparse(out io.WriterAt, b []byte, off int64) error {
	runStart := -1 // start in b of the blocks with data not yet written
	flush := func(end int) error {
		if runStart < 0 {
			return nil
		}
		_, err := out.WriteAt(b[runStart:end], off+int64(runStart))
		runStart = -1
		return err
	}
	for i := 0; i < len(b); {
		e := i + blockSize - int((off+int64(i))%blockSize)
		if e > len(b) {
			e = len(b)
		}
		if bytes.Equal(b[i:e], zeroBlock[:e-i]) {
			if err := flush(i); err != nil {
				return err
			}
		} else if runStart < 0 {
			runStart = i
		}
		i = e
	}
	return flush(len(b))
}
