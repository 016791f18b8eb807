package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"
)

func mustFrame(t testing.TB, f *frame) []byte {
	t.Helper()
	b, err := encodeFrame(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readAll returns every payload fr yields before its reader's error.
func readAll(fr *frameReader) ([]string, error) {
	var out []string
	for {
		p, err := fr.next()
		if err != nil {
			return out, err
		}
		out = append(out, string(p))
	}
}

func TestEncodeFrame(t *testing.T) {
	b := mustFrame(t, &frame{Type: typeRequest, ID: 7, Method: MethodHealth})
	want := `{"type":"request","id":7,"method":"health"}`
	if got := string(b[4:]); got != want {
		t.Errorf("payload %s, want %s", got, want)
	}
	if n := binary.BigEndian.Uint32(b); int(n) != len(want) {
		t.Errorf("length %d, want %d", n, len(want))
	}
	_, err := encodeFrame(&frame{Type: typeResponse, Result: []byte(`"` + strings.Repeat("x", MaxFrameSize) + `"`)})
	if !errors.Is(err, errFrameTooLarge) {
		t.Errorf("oversized frame: err = %v", err)
	}
}

func TestFrameReaderFrames(t *testing.T) {
	a := mustFrame(t, &frame{Type: typeHello, Nonce: "a"})
	b := mustFrame(t, &frame{Type: typeRequest, ID: 1, Method: "x"})
	// Deliver byte by byte to exercise every partial state.
	fr := newFrameReader(&oneByteReader{r: bytes.NewReader(append(a, b...))})
	got, err := readAll(fr)
	if err != io.EOF {
		t.Fatalf("err = %v, want EOF", err)
	}
	want := []string{string(a[4:]), string(b[4:])}
	if !equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if d := fr.discarded.Load(); d != 0 {
		t.Errorf("discarded %d bytes of a clean stream", d)
	}
}

func TestFrameReaderResync(t *testing.T) {
	good := mustFrame(t, &frame{Type: typeHello, Nonce: "n1"})
	good2 := mustFrame(t, &frame{Type: typeResponse, ID: 9, Result: []byte(`{"k":"v"}`)})
	hdr := func(n uint32, rest string) []byte {
		b := binary.BigEndian.AppendUint32(nil, n)
		return append(b, rest...)
	}
	cases := map[string][]byte{
		"oversized length":         hdr(0xFFFFFFFF, "{garbage"),
		"length just over max":     hdr(MaxFrameSize+1, `{"type":"hello"}`),
		"zero length":              hdr(0, ""),
		"text":                     []byte("login: root\r\nPassword: \r\n"),
		"payload not json":         hdr(5, "{abcd"),
		"payload not an object":    hdr(4, `"ab"`),
		"nul bytes":                make([]byte, 37),
		"truncated frame":          good2[:len(good2)-3],
		"truncated header":         good[:3],
		"claims more than follows": hdr(50_000, `{"type":"response","id":1`), // real frame's NUL ends it
		"header then real frame":   hdr(200, "{"),
	}
	for name, garbage := range cases {
		t.Run(name, func(t *testing.T) {
			stream := append(append(bytes.Clone(garbage), good...), good2...)
			fr := newFrameReader(bytes.NewReader(stream))
			got, err := readAll(fr)
			if err != io.EOF {
				t.Fatalf("err = %v", err)
			}
			want := []string{string(good[4:]), string(good2[4:])}
			if !equal(got, want) {
				t.Errorf("got %q, want %q", got, want)
			}
			if fr.discarded.Load() != int64(len(garbage)) {
				t.Errorf("discarded %d, want %d", fr.discarded.Load(), len(garbage))
			}
		})
	}
}

// TestFrameReaderOversizedNoAlloc: a header announcing 4 GiB is dropped
// without allocating for it, and the frame after it is found.
func TestFrameReaderOversizedNoAlloc(t *testing.T) {
	good := mustFrame(t, &frame{Type: typeHello, Nonce: "x"})
	stream := append([]byte{0xFF, 0xFF, 0xFF, 0xFF, '{'}, good...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 10 {
		fr := newFrameReader(bytes.NewReader(stream))
		if p, err := fr.next(); err != nil || string(p) != string(good[4:]) {
			t.Fatalf("next = %q, %v", p, err)
		}
	}
	runtime.ReadMemStats(&after)
	// Ten readers: each a 64 KiB buffer plus the payload, nowhere near 4 GiB
	// or even one MaxFrameSize each.
	if d := after.TotalAlloc - before.TotalAlloc; d > 10*(readChunk+4096) {
		t.Errorf("allocated %d bytes for 10 oversized headers", d)
	}
}

// TestFrameReaderBoundedBuffer: a flood of frames that claim MaxFrameSize
// and never complete keeps the buffer at headerSize+MaxFrameSize at most.
func TestFrameReaderBoundedBuffer(t *testing.T) {
	flood := binary.BigEndian.AppendUint32(nil, MaxFrameSize)
	flood = append(flood, '{')
	flood = append(flood, bytes.Repeat([]byte("a"), 3*MaxFrameSize)...)
	fr := newFrameReader(bytes.NewReader(flood))
	if _, err := readAll(fr); err != io.EOF {
		t.Fatalf("err = %v", err)
	}
	if c := cap(fr.buf); c > headerSize+MaxFrameSize {
		t.Errorf("buffer grew to %d", c)
	}
	if fr.discarded.Load() != int64(len(flood)) {
		t.Errorf("discarded %d of %d", fr.discarded.Load(), len(flood))
	}
}

// TestFrameReaderLiveStream: on a stream that does not end, a header
// claiming more bytes than follow does not stall the reader: the next real
// frame's leading NUL ends the bogus candidate at once.
func TestFrameReaderLiveStream(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	good := mustFrame(t, &frame{Type: typeHello, Nonce: "live"})
	go func() {
		pw.Write(binary.BigEndian.AppendUint32(nil, 50_000))
		pw.Write([]byte(`{"type":"response","id":1,"result":`))
		pw.Write(good)
		// ...and the stream stays open.
	}()
	got := make(chan string, 1)
	go func() {
		p, _ := newFrameReader(pr).next()
		got <- string(p)
	}()
	select {
	case p := <-got:
		if p != string(good[4:]) {
			t.Errorf("got %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reader waits for the bogus frame's 50000 bytes")
	}
}

// TestFrameReaderHugeClaimThenText: a 0xFFFFFFFF header followed by more
// than MaxFrameSize of text (no NUL to end it) is dropped without the
// buffer outgrowing one frame, and the stream still works after it.
func TestFrameReaderHugeClaimThenText(t *testing.T) {
	good := mustFrame(t, &frame{Type: typeHello, Nonce: "after"})
	stream := []byte{0xFF, 0xFF, 0xFF, 0xFF, '{'}
	stream = append(stream, bytes.Repeat([]byte("a"), 2*MaxFrameSize)...)
	stream = append(stream, good...)
	fr := newFrameReader(bytes.NewReader(stream))
	got, err := readAll(fr)
	if err != io.EOF || len(got) != 1 || got[0] != string(good[4:]) {
		t.Errorf("got %d frames, err %v", len(got), err)
	}
	if c := cap(fr.buf); c > readChunk {
		t.Errorf("buffer grew to %d for a header it rejects", c)
	}
}

func TestFrameReaderMaxDiscard(t *testing.T) {
	fr := newFrameReader(infiniteGarbage{})
	fr.maxDiscard = 1 << 20
	done := make(chan error, 1)
	go func() { _, err := fr.next(); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, errTooMuchGarbage) {
			t.Errorf("err = %v, want errTooMuchGarbage", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("next did not give up on endless garbage")
	}
}

// FuzzFrameReaderResync checks the resynchronisation promise: whatever
// precedes them, frames written whole are all read back, in order.
func FuzzFrameReaderResync(f *testing.F) {
	f.Add([]byte{0xFF, 0xFF, 0xFF, 0xFF})
	f.Add([]byte{0, 0, 0, 0x10, '{', '"'})
	f.Add([]byte{0, 0, 0x7B})
	f.Add([]byte{0, 0, 0, 0, 0, 0})
	f.Add([]byte(`{"type":"hello"}`))
	f.Add([]byte{0, 0x0F, 0xFF, 0xFF, '{', 'a', 'b'})
	f.Add([]byte{0, 0, 0, 2, '{', '}', 0, 0})
	f.Fuzz(func(t *testing.T, garbage []byte) {
		frames := [][]byte{
			mustFrame(t, &frame{Type: typeHello, Version: 1, Nonce: "abc"}),
			mustFrame(t, &frame{Type: typeResponse, ID: 0x7B, Result: []byte(`{"a":[1,2,3]}`)}),
			mustFrame(t, &frame{Type: typeRequest, ID: 2, Method: strings.Repeat("m", 0x7B00)}),
			mustFrame(t, &frame{Type: typeRequest, ID: 3, Method: "ports"}),
		}
		stream := bytes.Clone(garbage)
		var want []string
		for _, fr := range frames {
			stream = append(stream, fr...)
			want = append(want, string(fr[4:]))
		}
		got, err := readAll(newFrameReader(bytes.NewReader(stream)))
		if err != io.EOF {
			t.Fatalf("err = %v", err)
		}
		if len(got) < len(want) || !equal(got[len(got)-len(want):], want) {
			t.Fatalf("garbage %q: last frames\n got %.200q\nwant %.200q", garbage, got, want)
		}
	})
}

// TestFrameReaderRandomGarbage runs the fuzz property on random garbage.
func TestFrameReaderRandomGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	good := mustFrame(t, &frame{Type: typeHello, Nonce: "z"})
	good2 := mustFrame(t, &frame{Type: typeRequest, ID: 5, Method: MethodPorts})
	for i := range 2000 {
		g := make([]byte, rng.IntN(300))
		for j := range g {
			// Bias towards bytes that make plausible headers.
			switch rng.IntN(4) {
			case 0:
				g[j] = 0
			case 1:
				g[j] = '{'
			default:
				g[j] = byte(rng.IntN(256))
			}
		}
		stream := append(append(g, good...), good2...)
		got, err := readAll(newFrameReader(bytes.NewReader(stream)))
		if err != io.EOF {
			t.Fatal(err)
		}
		if len(got) < 2 || got[len(got)-2] != string(good[4:]) || got[len(got)-1] != string(good2[4:]) {
			t.Fatalf("case %d: garbage %x: got %q", i, g, got)
		}
	}
}

func equal(a, b []string) bool {
	return fmt.Sprint(a) == fmt.Sprint(b) && len(a) == len(b)
}

type oneByteReader struct{ r io.Reader }

func (o *oneByteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

// infiniteGarbage reads as an endless stream of 'x'.
type infiniteGarbage struct{}

func (infiniteGarbage) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}
