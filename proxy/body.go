package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
)

// copyBufPool holds the buffers the request body and the response are copied
// through.
var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// rateDeadline is the time by which a transfer that started at start must
// have moved n bytes: grace, plus n at rate bytes per second. Computed in
// whole seconds and a remainder so that it cannot overflow.
func rateDeadline(start time.Time, grace time.Duration, rate, n int64) time.Time {
	d := grace + time.Duration(n/rate)*time.Second + time.Duration(n%rate)*time.Second/time.Duration(rate)
	return start.Add(d)
}

// readBody reads the whole request body into a spool before anything is
// spawned. A declared Content-Length over maxBody fails before a byte is
// read (so a client that sent "Expect: 100-continue" never gets the 100);
// a chunked body fails as soon as it passes maxBody.
//
// The minimum rate is enforced with the connection's read deadline
// (http.ResponseController), moved forward as bytes arrive: with n bytes
// read, the next must come before start + grace + n/rate. One deadline per
// read call, no timer goroutine. Where the ResponseWriter has no deadlines
// (ErrNotSupported: a test recorder) the body is read without one. The
// deadline is cleared once the body is read: net/http's background read
// after the handler has read the body would otherwise hit it and cancel the
// request. After a failure it stays, and serveHTTP ends the connection (see
// endUnreadBody).
//
// Errors wrap ErrBodyTooLarge, ErrClientTimeout, ErrClientGone or
// ErrBadRequest.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, maxBody int64) (*spool, int64, error) {
	if r.ContentLength > maxBody {
		return nil, 0, fmt.Errorf("request body of %d bytes, limit %d: %w", r.ContentLength, maxBody, ErrBodyTooLarge)
	}
	sp := newSpool(s.cfg.TempDir, s.cfg.BodyMemory, maxBody, s.spools)
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return sp, 0, nil
	}
	rc := http.NewResponseController(w)
	rate, grace := s.cfg.BodyMinRate, s.cfg.BodyRateGrace
	deadlines := rate > 0
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	buf := *bufp
	start := time.Now() // deadlines are wall-clock, whatever Deps.Now says
	for {
		if deadlines {
			if err := rc.SetReadDeadline(rateDeadline(start, grace, rate, sp.Len())); errors.Is(err, http.ErrNotSupported) {
				deadlines = false
			}
		}
		n, rerr := r.Body.Read(buf)
		if n > 0 {
			before := sp.Len()
			if _, err := sp.Write(buf[:n]); err != nil {
				read := before + int64(n)
				sp.Close()
				if errors.Is(err, ErrSpoolFull) {
					return nil, read, fmt.Errorf("chunked request body over %d bytes: %w", maxBody, ErrBodyTooLarge)
				}
				return nil, read, fmt.Errorf("spool request body: %w", err)
			}
		}
		if rerr == io.EOF {
			if deadlines {
				// An error means the connection is gone: nothing to clear.
				_ = rc.SetReadDeadline(time.Time{})
			}
			return sp, sp.Len(), nil
		}
		if rerr != nil {
			read := sp.Len()
			sp.Close()
			return nil, read, bodyError(r, read, rerr, s.base.Err() != nil)
		}
	}
}

// bodyError classifies a failed read of the request body; stopping:
// serve's drain has run out and its connections are being closed, which
// fails the read as a client gone would.
func bodyError(r *http.Request, n int64, err error, stopping bool) error {
	var mbe *http.MaxBytesError
	switch {
	case stopping:
		return fmt.Errorf("read request body after %d bytes: %w: %w", n, ErrShuttingDown, err)
	case errors.Is(err, errFraming):
		return fmt.Errorf("read request body after %d bytes: %w: %w", n, ErrBadRequest, err)
	case framingRefused(r):
		// net/http read the refusal as an error of its own (a trailer
		// section's) and cancelled the context: not a client gone.
		return fmt.Errorf("read request body after %d bytes: %w: %w (%w)", n, ErrBadRequest, errFraming, err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("request body stalled after %d bytes: %w", n, ErrClientTimeout)
	case errors.As(err, &mbe):
		return fmt.Errorf("request body over %d bytes: %w", mbe.Limit, ErrBodyTooLarge)
	case r.Context().Err() != nil, errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("read request body after %d bytes: %w: %w", n, ErrClientGone, err)
	default:
		return fmt.Errorf("read request body after %d bytes: %w: %w", n, ErrBadRequest, err)
	}
}
