package update

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// errStalled cancels a download that received nothing for StallTimeout.
var errStalled = errors.New("stalled")

// fetch downloads url whole into memory, refusing more than max bytes.
func (o *Options) fetch(ctx context.Context, url string, max int64) ([]byte, error) {
	var b bytes.Buffer
	if _, err := o.fetchTo(ctx, url, max, &b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// fetchTo streams url into w, refusing more than max bytes and ending a
// transfer that receives nothing for StallTimeout (a whole-download
// timeout would cut a slow link's large tarball; a stall never ends
// without one).
func (o *Options) fetchTo(ctx context.Context, url string, max int64, w io.Writer) (int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(o.StallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()
	fail := func(err error) error {
		if errors.Is(context.Cause(ctx), errStalled) {
			return fmt.Errorf("download %s: nothing received for %s; the server stalled", url, o.StallTimeout)
		}
		return fmt.Errorf("download %s: %w", url, err)
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", url, err)
	}
	resp, err := o.HTTP.Do(req)
	if err != nil {
		return 0, fail(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("download %s: %s", url, resp.Status)
	}
	if resp.ContentLength > max {
		return 0, fmt.Errorf("download %s: %d bytes, over the %d-byte limit", url, resp.ContentLength, max)
	}
	var n int64
	buf := make([]byte, 64<<10)
	for {
		k, rerr := resp.Body.Read(buf)
		if k > 0 {
			stall.Reset(o.StallTimeout)
			if n+int64(k) > max {
				return n, fmt.Errorf("download %s: over the %d-byte limit", url, max)
			}
			if _, err := w.Write(buf[:k]); err != nil {
				return n, err
			}
			n += int64(k)
		}
		if errors.Is(rerr, io.EOF) {
			return n, nil
		}
		if rerr != nil {
			return n, fail(rerr)
		}
	}
}
