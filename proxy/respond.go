package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
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
// the proxy does not guess types for untrusted output. On a route with
// Server-Timing the worker's own is dropped: the field is cellgate's
// figures (addServerTiming), and the worker's would stand before them.
func (x *exchange) setHeader(hdr *cgiHeader) {
	h := x.w.Header()
	ownTiming := x.route != nil && x.route.ServerTiming
	for k, vv := range hdr.Header {
		if ownTiming && k == "Server-Timing" {
			continue
		}
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

// sendSpooled sends a worker's response from its spool, with its length
// (on HEAD the length a GET would have had, or none): sendfile when the
// spool is a file and the connection is plain HTTP/1.1.
func (x *exchange) sendSpooled(run *cellRun) {
	hdr := run.hdr
	x.setHeader(hdr)
	x.addServerTiming(false)
	n := run.body.Len()
	allowed := bodyAllowed(hdr.Status)
	head := x.r.Method == http.MethodHead
	switch {
	case allowed && head:
		// The length a GET would have had, or none (RFC 9110 §8.6): the
		// worker's own, else that of a body it wrote despite the HEAD. A
		// worker that rightly wrote none (RFC 3875 §4.3.2) and gave no
		// length gets none: a "0" would differ from its GET's.
		if hdr.ContentLength >= 0 {
			x.w.Header().Set("Content-Length", strconv.FormatInt(hdr.ContentLength, 10))
		} else if n > 0 {
			x.w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		}
	case allowed:
		x.w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
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

// writeSpool writes the spooled body in pieces, each under its own write
// deadline (deadlines.next).
func (x *exchange) writeSpool(run *cellRun) (int64, error) {
	w := x.w
	dl := x.writeDeadlines()
	f, err := run.body.File()
	if err != nil {
		return 0, err
	}
	var sent int64
	if f != nil {
		n := run.body.Len()
		for sent < n {
			c, err := io.CopyN(w, f, dl.next(n-sent, sendChunk))
			sent += c
			if err != nil {
				return sent, err
			}
		}
	} else {
		c, err := dl.write(w, run.body.Bytes())
		sent += int64(c)
		if err != nil {
			return sent, err
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
	err := dl.flush()
	if err == nil && (!bodyAllowed(hdr.Status) || x.r.Method == http.MethodHead) {
		return nil
	}
	if err != nil {
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
			if hdr.ContentLength >= 0 && x.rec.BytesOut+int64(n) > hdr.ContentLength {
				cancel()
				return fmt.Errorf("%w: Content-Length %d but more body bytes", ErrInvalidResponse, hdr.ContentLength)
			}
			c, err := dl.write(x.w, buf[:n])
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
			if hdr.ContentLength >= 0 && x.rec.BytesOut != hdr.ContentLength {
				// Sent as it came (chunked): the stream is cut, not
				// ended, so that the client sees it incomplete, as a
				// spooled response's mismatch is a 502.
				return fmt.Errorf("%w: Content-Length %d but %d body bytes", ErrInvalidResponse, hdr.ContentLength, x.rec.BytesOut)
			}
			return nil
		}
		if rerr != nil {
			cancel()
			return fmt.Errorf("read worker output: %w", rerr)
		}
	}
}

// clientLost records a response the client stopped taking: it left
// (client_gone), or a write deadline passed (slow_reader, see
// Config.WriteMinRate). The connection is reset and the error returned
// wraps ErrClientGone.
func (x *exchange) clientLost(err error) error {
	x.rec.Outcome = lostOutcome(err)
	x.abort = true
	return fmt.Errorf("write response after %d bytes: %w: %w", x.rec.BytesOut, ErrClientGone, err)
}

// lostOutcome is the outcome of a response the client stopped taking
// (err wraps the write's error): slow_reader when a write deadline
// passed, client_gone otherwise.
func lostOutcome(err error) accounting.Outcome {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return accounting.OutcomeSlowReader
	}
	return accounting.OutcomeClientGone
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

// deadlines gives each piece of a response its own write deadline, so that
// a client is held to progress rather than to an average over the whole
// response (see Config.WriteMinRate). A no-op when the check is off or the
// ResponseWriter has no deadlines.
type deadlines struct {
	rc     *http.ResponseController
	window time.Duration // Config.WriteTimeout
	grace  time.Duration // added to the next deadline, the first one's only
	rate   int64
	step   int64 // the largest piece under one deadline
	on     bool
}

// Bounds of a piece: below minStep a deadline per write costs more than it
// checks; above sendChunk a stalled client holds on longer than the window.
const minStep = 4 << 10

func (x *exchange) writeDeadlines() *deadlines {
	cfg := &x.s.cfg
	d := &deadlines{
		rc:     x.rc,
		window: cfg.WriteTimeout,
		grace:  cfg.WriteRateGrace,
		rate:   cfg.WriteMinRate,
		on:     cfg.WriteMinRate > 0,
	}
	if d.on {
		d.step = min(max(d.rate*int64(d.window/time.Millisecond)/1000, minStep), sendChunk)
	}
	return d
}

// next returns how many of n bytes to write next, at most limit, and gives
// them a deadline of the window from now, or of their size at the minimum
// rate when that is longer.
func (d *deadlines) next(n, limit int64) int64 {
	if !d.on {
		return min(n, limit)
	}
	p := min(n, limit, d.step)
	t := max(d.window, time.Duration(p)*time.Second/time.Duration(d.rate)) + d.grace
	d.grace = 0
	if err := d.rc.SetWriteDeadline(time.Now().Add(t)); errors.Is(err, http.ErrNotSupported) {
		d.on = false
	}
	return p
}

// write writes b to w in pieces, each under its own deadline.
func (d *deadlines) write(w io.Writer, b []byte) (int, error) {
	var written int
	for len(b) > 0 {
		p := b[:d.next(int64(len(b)), writeChunk)]
		c, err := w.Write(p)
		written += c
		if err != nil {
			return written, err
		}
		b = b[len(p):]
	}
	return written, nil
}

// flush sends what is buffered, under a deadline of its own: a header
// block alone may be more than the socket takes.
func (d *deadlines) flush() error {
	d.next(0, 0)
	if err := d.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// boundWrites, as a handler starts, replaces the write deadline its
// connection's last response left (tail), before anything of this one is
// written, by one of the window for what net/http writes on its own
// before the response: its 100 Continue, at the body's first read (the
// response's writes set their own, next). Without one, a client that
// pipelined requests with "Expect: 100-continue" and read nothing held
// the handler and its connection for good. HTTP/1.x only: an HTTP/2
// stream's deadline resets the stream when it passes, written to or not
// (its 100 Continue is a frame, which WriteByteTimeout bounds). A no-op
// when the check is off (Config.WriteMinRate).
func (x *exchange) boundWrites() {
	if x.s.cfg.WriteMinRate > 0 && x.r.ProtoMajor == 1 {
		_ = x.rc.SetWriteDeadline(time.Now().Add(x.s.cfg.WriteTimeout))
	}
}

// tail, as a handler returns, bounds by a write deadline of the window
// what net/http writes of the response after it: an answer without a
// body or an error's, buffered and flushed only then, and the last chunk
// of a chunked body. Without one, a client that stopped reading (a
// pipeline of HEADs, of 404s) would hold the connection and its goroutine
// until it went away. The next request's handler removes it
// (boundWrites). (After a failed write net/http's buffered writer keeps
// the error, so its last flush before closing the connection does not
// write, and cannot wait for a stalled client.)
func (x *exchange) tail() {
	if x.s.cfg.WriteMinRate > 0 {
		_ = x.rc.SetWriteDeadline(time.Now().Add(x.s.cfg.WriteTimeout))
	}
}
