package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cellgate/cellgate/accounting"
)

// Chunk sizes of the response body writes, each with its own write
// deadline: sendfile from a spool file moves up to sendChunk per call.
const (
	sendChunk  = 1 << 20
	writeChunk = 64 << 10
)

// bodyAllowed reports whether a response with this status has a body:
// 204, 304 and 205 (RFC 9110 §15.3.6: "MUST NOT generate content") have
// none, whatever the worker wrote.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified &&
		status != http.StatusResetContent
}

// setHeader puts a worker's checked header fields in the response. A
// response without Content-Type is sent without one rather than sniffed:
// the proxy does not guess types for untrusted output.
func (x *exchange) setHeader(hdr *cgiHeader) {
	h := x.w.Header()
	for k, vv := range hdr.Header {
		h[k] = vv
	}
	if _, ok := hdr.Header["Content-Type"]; !ok {
		h["Content-Type"] = nil
	}
}

// addServerTiming adds the Server-Timing field (or trailer) when the route
// asks for it.
func (x *exchange) addServerTiming(trailer bool) {
	if x.route == nil || !x.route.ServerTiming {
		return
	}
	name := "Server-Timing"
	if trailer {
		name = http.TrailerPrefix + name
	}
	x.w.Header().Add(name, accounting.ServerTiming(x.rec))
}

// sendSpooled sends a worker's response from its spool, with its length:
// sendfile when the spool is a file and the connection is plain HTTP/1.1.
func (x *exchange) sendSpooled(run *cellRun) {
	hdr := run.hdr
	x.setHeader(hdr)
	x.addServerTiming(false)
	n := run.body.Len()
	allowed := bodyAllowed(hdr.Status)
	head := x.r.Method == http.MethodHead
	switch {
	case allowed:
		length := n
		if head && hdr.ContentLength >= 0 {
			length = hdr.ContentLength // the length a GET would have had
		}
		x.w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
	case hdr.Status == http.StatusResetContent:
		// Unlike 204 and 304, a 205 says that it has no content.
		x.w.Header().Set("Content-Length", "0")
	}
	x.rec.Status = hdr.Status
	x.w.WriteHeader(hdr.Status)
	if !allowed || head || n == 0 {
		return
	}
	written, err := x.writeSpool(run)
	x.rec.BytesOut = written
	if err != nil {
		x.clientLost(err)
	}
}

// writeSpool writes the spooled body, holding the client to
// Config.WriteMinRate after WriteRateGrace with a write deadline per chunk.
func (x *exchange) writeSpool(run *cellRun) (int64, error) {
	w := x.w
	dl := x.writeDeadlines()
	defer dl.clear()
	f, err := run.body.File()
	if err != nil {
		return 0, err
	}
	var sent int64
	if f != nil {
		n := run.body.Len()
		for sent < n {
			chunk := min(int64(sendChunk), n-sent)
			dl.set(sent + chunk)
			c, err := io.CopyN(w, f, chunk)
			sent += c
			if err != nil {
				return sent, err
			}
		}
	} else {
		b := run.body.Bytes()
		for len(b) > 0 {
			chunk := b[:min(len(b), writeChunk)]
			dl.set(sent + int64(len(chunk)))
			c, err := w.Write(chunk)
			sent += int64(c)
			if err != nil {
				return sent, err
			}
			b = b[len(chunk):]
		}
	}
	return sent, dl.flush()
}

// stream sends a worker's response as it writes it: headers at once, then
// each read from the pipe written and flushed, bounded by
// Config.MaxResponse. An error cancels the run (cancel) and is returned.
func (x *exchange) stream(hdr *cgiHeader, br *bufio.Reader, cancel context.CancelFunc) error {
	x.setHeader(hdr)
	x.rec.Status = hdr.Status
	x.w.WriteHeader(hdr.Status)
	dl := x.writeDeadlines()
	defer dl.clear()
	if !bodyAllowed(hdr.Status) || x.r.Method == http.MethodHead {
		return dl.flush()
	}
	if err := dl.flush(); err != nil {
		cancel()
		return x.clientLost(err)
	}
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	buf := *bufp
	limit := x.s.cfg.MaxResponse
	for {
		n, rerr := br.Read(buf)
		if n > 0 {
			if x.rec.BytesOut+int64(n) > limit {
				cancel()
				return fmt.Errorf("%w: streamed over %d bytes", ErrResponseTooLarge, limit)
			}
			dl.set(x.rec.BytesOut + int64(n))
			c, err := x.w.Write(buf[:n])
			x.rec.BytesOut += int64(c)
			if err == nil {
				err = dl.flush()
			}
			if err != nil {
				cancel()
				return x.clientLost(err)
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			cancel()
			return fmt.Errorf("read worker output: %w", rerr)
		}
	}
}

// clientLost records a response the client stopped taking (it left, or read
// slower than Config.WriteMinRate): the connection is reset and the error
// returned wraps ErrClientGone.
func (x *exchange) clientLost(err error) error {
	x.rec.Outcome = accounting.OutcomeClientGone
	x.abort = true
	return fmt.Errorf("write response after %d bytes: %w: %w", x.rec.BytesOut, ErrClientGone, err)
}

// sendError sends a short text/plain error. Nothing is sent to a client
// that is gone: its connection (or stream) is reset, so that net/http does
// not answer for the handler with an empty 200.
func (x *exchange) sendError(v verdict) {
	x.rec.Status = v.Status
	if v.Status == StatusClientClosed {
		x.abort = true
		return
	}
	h := x.w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	if v.RetryAfter {
		h.Set("Retry-After", x.s.retryAfter)
	}
	if len(v.Allow) > 0 {
		h.Set("Allow", strings.Join(v.Allow, ", "))
	}
	if (v.Close || x.unreadBody()) && x.r.ProtoMajor == 1 {
		h.Set("Connection", "close")
	}
	x.addServerTiming(false)
	body := strconv.Itoa(v.Status) + " " + http.StatusText(v.Status) + ": " + v.Message + "\n"
	h.Set("Content-Length", strconv.Itoa(len(body)))
	x.w.WriteHeader(v.Status)
	if x.r.Method == http.MethodHead {
		return
	}
	n, _ := io.WriteString(x.w, body)
	x.rec.BytesOut = int64(n)
}

// deadlines moves a connection's write deadline forward as a response is
// written; a no-op when the rate check is off or the ResponseWriter has no
// deadlines.
type deadlines struct {
	rc    *http.ResponseController
	start time.Time
	grace time.Duration
	rate  int64
	on    bool
}

func (x *exchange) writeDeadlines() *deadlines {
	return &deadlines{
		rc:    http.NewResponseController(x.w),
		start: time.Now(),
		grace: x.s.cfg.WriteRateGrace,
		rate:  x.s.cfg.WriteMinRate,
		on:    x.s.cfg.WriteMinRate > 0,
	}
}

// set gives the client until start + grace + n/rate to have taken n bytes.
func (d *deadlines) set(n int64) {
	if !d.on {
		return
	}
	if err := d.rc.SetWriteDeadline(rateDeadline(d.start, d.grace, d.rate, n)); errors.Is(err, http.ErrNotSupported) {
		d.on = false
	}
}

// flush sends what is buffered.
func (d *deadlines) flush() error {
	if err := d.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// clear removes the write deadline, which would otherwise outlive the
// response on a keep-alive connection.
func (d *deadlines) clear() {
	if d.on {
		_ = d.rc.SetWriteDeadline(time.Time{})
	}
}
