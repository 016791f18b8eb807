package agent

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
)

// Protocol constants. Both ends of this package speak every protocol version
// in MinProtocolVersion..ProtocolVersion.
const (
	// ProtocolVersion is the newest wire protocol version this package speaks.
	ProtocolVersion = 1
	// MinProtocolVersion is the oldest wire protocol version this package
	// speaks. A peer outside MinProtocolVersion..ProtocolVersion is refused.
	MinProtocolVersion = 1

	// VsockPort is the AF_VSOCK port the agent listens on under Firecracker;
	// the host reaches it with "CONNECT 52\n" on the VM's hybrid-vsock
	// socket.
	VsockPort uint32 = 52

	// PortName is the virtio-serial port name the agent opens under QEMU
	// (/dev/virtio-ports/org.banger.agent); it matches qemu.AgentPortName.
	PortName = "org.banger.agent"

	// MaxFrameSize is the largest frame payload, in bytes. A header that
	// announces more is not a frame.
	MaxFrameSize = 1 << 20

	headerSize = 4
)

// Frame types.
const (
	typeHello    = "hello"
	typeRequest  = "request"
	typeResponse = "response"
)

// Methods.
const (
	MethodHealth = "health"
	MethodPorts  = "ports"
)

// Error codes a response may carry in RemoteError.Code.
const (
	CodeUnknownMethod = "unknown_method"
	CodeInternal      = "internal"
	CodeTooLarge      = "too_large"
)

// frame is every message on the wire: a JSON object whose "type" says which
// of the other fields matter. "type" is marshalled first, so a payload always
// starts with `{"type"`.
type frame struct {
	Type         string          `json:"type"`
	Version      int             `json:"version,omitempty"`
	MinVersion   int             `json:"min_version,omitempty"`
	AgentVersion string          `json:"agent_version,omitempty"`
	Nonce        string          `json:"nonce,omitempty"`
	ID           uint64          `json:"id,omitempty"`
	Method       string          `json:"method,omitempty"`
	Params       json.RawMessage `json:"params,omitempty"`
	Result       json.RawMessage `json:"result,omitempty"`
	Error        *RemoteError    `json:"error,omitempty"`
}

// RemoteError is an error the agent returned for a request.
type RemoteError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("guest agent: %s (%s)", e.Message, e.Code)
}

// errFrameTooLarge is returned by encodeFrame for a payload over MaxFrameSize.
var errFrameTooLarge = errors.New("frame larger than MaxFrameSize")

// encodeFrame returns f as one wire frame: 4-byte big-endian payload length,
// then the JSON payload. Callers write it with a single Write so frames from
// concurrent writers cannot interleave.
func encodeFrame(f *frame) ([]byte, error) {
	p, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	if len(p) > MaxFrameSize {
		return nil, fmt.Errorf("%w: %d bytes", errFrameTooLarge, len(p))
	}
	b := make([]byte, headerSize+len(p))
	binary.BigEndian.PutUint32(b, uint32(len(p)))
	copy(b[headerSize:], p)
	return b, nil
}

// frameReader splits a byte stream into frame payloads and resynchronises
// after anything that is not a frame.
//
// A candidate frame at the current position is accepted only if its header
// announces 1..MaxFrameSize bytes, its payload starts with '{', holds no NUL
// byte and is valid JSON. Anything else is abandoned one byte at a time (to
// the next NUL, since every header starts with one: lengths are below
// 1<<24). Because a real frame starts with a NUL and JSON never holds one, a
// bogus candidate cannot swallow a real frame that follows it: the real
// frame's header ends the candidate and the scan resumes there. The buffer
// never grows past headerSize+MaxFrameSize, whatever the stream holds; a
// header claiming 0xFFFFFFFF bytes is rejected before anything is allocated.
type frameReader struct {
	r          io.Reader
	buf        []byte
	start, end int   // buf[start:end] is read but not consumed
	err        error // sticky error of r; buffered bytes are still scanned
	// discarded counts bytes dropped while resynchronising (never reset);
	// atomic so others may read it while next runs.
	discarded atomic.Int64
	// maxDiscard, when positive, makes next fail with errTooMuchGarbage once
	// more than that many bytes were dropped since the last good frame.
	maxDiscard int64
	sinceGood  int64
}

const readChunk = 64 << 10

// errTooMuchGarbage is returned by frameReader.next when maxDiscard is hit.
var errTooMuchGarbage = errors.New("too many bytes that are not frames")

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: r}
}

func (fr *frameReader) buffered() []byte { return fr.buf[fr.start:fr.end] }

// fill reads until at least need bytes are buffered. It returns false when
// the reader failed first (fr.err is set).
func (fr *frameReader) fill(need int) bool {
	for fr.end-fr.start < need {
		if fr.err != nil {
			return false
		}
		if fr.start > 0 && (fr.end == len(fr.buf) || fr.start+need > len(fr.buf)) {
			n := copy(fr.buf, fr.buf[fr.start:fr.end])
			fr.start, fr.end = 0, n
		}
		if fr.end == len(fr.buf) || need > len(fr.buf) {
			size := max(2*len(fr.buf), readChunk, need)
			size = min(size, headerSize+MaxFrameSize)
			if size <= len(fr.buf) {
				// Cannot happen: need never exceeds headerSize+MaxFrameSize.
				fr.err = errors.New("frame reader: buffer limit")
				return false
			}
			nb := make([]byte, size)
			fr.end = copy(nb, fr.buf[fr.start:fr.end])
			fr.start = 0
			fr.buf = nb
		}
		n, err := fr.r.Read(fr.buf[fr.end:])
		fr.end += n
		if err != nil {
			fr.err = err
		} else if n == 0 {
			// A reader returning 0, nil repeatedly would spin; treat it as
			// progress-less and retry, as io.ReadFull does.
			continue
		}
	}
	return true
}

// drop discards n buffered bytes as garbage.
func (fr *frameReader) drop(n int) {
	fr.start += n
	fr.discarded.Add(int64(n))
	fr.sinceGood += int64(n)
}

// skip abandons the candidate at the current position: it drops at least one
// byte, then everything up to the next NUL already buffered.
func (fr *frameReader) skip() {
	b := fr.buffered()
	n := len(b)
	if i := bytes.IndexByte(b[1:], 0); i >= 0 {
		n = i + 1
	}
	fr.drop(n)
}

// next returns the next frame's payload (a fresh slice the caller owns). It
// returns the reader's error once no complete frame is left in the buffer.
func (fr *frameReader) next() ([]byte, error) {
	for {
		if fr.maxDiscard > 0 && fr.sinceGood > fr.maxDiscard {
			return nil, fmt.Errorf("%w: %d bytes discarded", errTooMuchGarbage, fr.sinceGood)
		}
		if !fr.fill(headerSize + 1) {
			if n := fr.end - fr.start; n > 0 {
				fr.drop(n) // a partial header before the end of the stream
			}
			return nil, fr.err
		}
		b := fr.buffered()
		n := binary.BigEndian.Uint32(b)
		if n == 0 || n > MaxFrameSize || b[headerSize] != '{' {
			fr.skip()
			continue
		}
		total := headerSize + int(n)
		// Read the payload, checking each new byte for a NUL, which would
		// be the start of the next real frame.
		scanned := headerSize + 1
		ok := true
		for {
			b = fr.buffered()
			upto := min(len(b), total)
			if i := bytes.IndexByte(b[scanned:upto], 0); i >= 0 {
				ok = false
				break
			}
			scanned = upto
			if scanned == total {
				break
			}
			if !fr.fill(min(total, fr.end-fr.start+1)) {
				ok = false // the stream ended inside the candidate
				break
			}
		}
		if ok {
			payload := fr.buffered()[headerSize:total]
			if json.Valid(payload) {
				out := bytes.Clone(payload)
				fr.start += total
				fr.sinceGood = 0
				return out, nil
			}
		}
		fr.skip()
	}
}
