package proxy

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// guardConn stands between an HTTP/1.x client connection and net/http's
// parser: every byte net/http reads has been through a frameCheck first.
// A request head is held back until it is complete and found good, then
// handed on with whatever follows it; body bytes pass as they come (in
// place when nothing is held, so a body costs no copy). The empty lines
// before a request line are dropped, never handed on. When a head is
// refused (smuggling attempts: obs-fold, a bare CR or LF, Transfer-Encoding
// with Content-Length, ...; an Expect net/http would answer itself) net/http
// gets, instead of it, a fixed request that carries the Server's secret
// rejection token and the status, and then the end of the stream: the
// handler answers that request with the 400 (431 when too large, 417 for
// an Expect), a request id and an access-log record, and net/http closes
// the connection after it. The answer goes through net/http rather than
// straight onto the socket because a response to an earlier request may
// still be being written: net/http reads ahead while a handler runs. When
// a body's framing goes wrong, net/http's read fails instead, and it never
// reads from the connection again.
//
// Memory: a connection's first head is read by awaitHead, before net/http
// has the connection (headListener), into a small pooled buffer grown up
// to the head limit (Config.MaxHeaderBytes plus 4 KiB) only as the head
// grows, and given back once handed on: a slowloris costs a few hundred
// bytes here, not a head's worth, and none of net/http's buffers. Later
// heads are checked in net/http's own buffer when they arrive whole in one
// read (the usual case) and held in the same way when they span reads.
//
// Time: net/http waits for a keep-alive connection's next request under
// its idle deadline and starts its header timeout only once the first
// bytes of the head have come (conn.serve peeks at them first), which the
// guard holds until the whole head is in. So the guard times a head held
// back itself: from its first byte it bounds the connection's read
// deadline by the header timeout (Config.ReadHeaderTimeout), as
// headListener does on a fresh connection, and it learns net/http's own
// deadline through SetReadDeadline, to keep the earlier of the two. The
// bound holds only while net/http has a read deadline of its own: it has
// none during the background read it does while a handler runs, where a
// head pipelined behind the request must not fail the read, which would
// cancel the running request; the head's time counts from its first byte
// all the same, and runs out once net/http waits for it.
type guardConn struct {
	net.Conn
	check  frameCheck
	reject func(*frameError) []byte // the request that stands for a refused head

	buf   *[]byte // bytes read and not yet handed on: (*buf)[off:]
	off   int
	free  int    // bytes of (*buf)[off:] that may be handed on
	bad   []byte // the rest of the rejection request
	err   error  // the stream's end, once refused
	limit int    // the largest buffer: a head plus 4 KiB of one read

	// awaiting, when set by headListener, counts this connection until
	// its first request reaches the handler or it closes (began).
	awaiting *atomic.Int64
	begun    atomic.Bool
	// bodyRefused: a request body's framing was refused (the stream ends
	// in errFraming). net/http may read that end with an error of its
	// own (its trailer reader's), and cancel the request's context: the
	// handler asks here (framingRefused) before it takes the client for
	// gone.
	bodyRefused atomic.Bool

	headTimeout time.Duration // a held head's time from its first byte; 0: none
	dlMu        sync.Mutex    // net/http sets deadlines from other goroutines
	readDL      time.Time     // net/http's read deadline
	headDL      time.Time     // the held head's, zero when none is held; written by the reader only
}

// guardBufSize is the size of a pooled buffer: the start of a head that
// arrives in pieces.
const guardBufSize = 512

var guardBufPool = sync.Pool{New: func() any { b := make([]byte, 0, guardBufSize); return &b }}

// errFraming ends a connection whose request body framing was refused.
var errFraming = errors.New("request framing refused")

func newGuardConn(c net.Conn, maxHead int, headTimeout time.Duration, reject func(*frameError) []byte) *guardConn {
	return &guardConn{Conn: c, check: newFrameCheck(maxHead), reject: reject, limit: maxHead + 4<<10,
		headTimeout: headTimeout}
}

// Read hands on checked bytes.
func (g *guardConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		switch {
		case g.free > 0:
			n := copy(p, (*g.buf)[g.off:g.off+g.free])
			g.off += n
			g.free -= n
			g.putBuf()
			return n, nil
		case len(g.bad) > 0:
			n := copy(p, g.bad)
			g.bad = g.bad[n:]
			return n, nil
		case g.err != nil:
			return 0, g.err
		case g.buf == nil:
			// Nothing held: read in place.
			n, err := g.Conn.Read(p)
			if n == 0 {
				return 0, err
			}
			n, free, ferr := g.check.feed(p[:n])
			if ferr == nil && free < n {
				g.hold(p[free:n])
				g.timeHead(true) // nothing was held: the head starts here
			}
			g.fail(ferr)
			if free > 0 || err != nil {
				return free, err
			}
		default:
			// A head held since before net/http's first read (awaitHead's
			// pipelined next one) is timed from this read.
			g.timeHead(false)
			fresh, err := g.readMore()
			if err != nil {
				return 0, err
			}
			if g.err == nil {
				g.timeHead(fresh)
			}
		}
	}
}

// readMore reads behind the held bytes and examines what came. freed says
// that bytes were freed: a head still held after them starts in this read.
func (g *guardConn) readMore() (freed bool, err error) {
	b := *g.buf
	if g.off > 0 {
		b = b[:copy(b, b[g.off:])]
		g.off = 0
	}
	if len(b) == cap(b) {
		nb := make([]byte, len(b), min(2*cap(b), g.limit))
		copy(nb, b)
		b = nb
	}
	held := len(b)
	read, err := g.Conn.Read(b[held:cap(b)])
	n, free, ferr := g.check.feed(b[held : held+read])
	*g.buf = b[:held+n]
	// The held bytes go too once the head they start is complete.
	if free > 0 {
		g.free = held + free
	}
	g.fail(ferr)
	if g.free > 0 || ferr != nil {
		return free > 0, nil
	}
	return false, err
}

// timeHead starts a held head's time (started: its first byte came in
// this read), or ends it once no head is held, and sets the read deadline
// to match. Only net/http's reads time heads: a connection's first head is
// headListener's to time.
func (g *guardConn) timeHead(started bool) {
	if g.headTimeout <= 0 {
		return
	}
	held := g.check.inHead()
	if held == !g.headDL.IsZero() && !(held && started) {
		return // the usual case: nothing held, before and after
	}
	g.dlMu.Lock()
	defer g.dlMu.Unlock()
	g.headDL = time.Time{}
	if held {
		g.headDL = time.Now().Add(g.headTimeout)
	}
	_ = g.setReadDeadline()
}

// setReadDeadline sets the connection's read deadline: net/http's, or a
// held head's when it is earlier and net/http has one. dlMu is held.
func (g *guardConn) setReadDeadline() error {
	dl := g.readDL
	if !dl.IsZero() && !g.headDL.IsZero() && g.headDL.Before(dl) {
		dl = g.headDL
	}
	return g.Conn.SetReadDeadline(dl)
}

// SetReadDeadline is net/http's: kept, and bounded by a held head's.
func (g *guardConn) SetReadDeadline(t time.Time) error {
	g.dlMu.Lock()
	defer g.dlMu.Unlock()
	g.readDL = t
	return g.setReadDeadline()
}

// SetDeadline is SetReadDeadline and SetWriteDeadline.
func (g *guardConn) SetDeadline(t time.Time) error {
	if err := g.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return g.SetReadDeadline(t)
}

// awaitHead reads until the first request head is complete or refused,
// handing nothing on yet (headListener): what came is held in a pooled
// buffer, grown as the head grows, for Read to hand on. It returns the
// read error of a connection that ended or timed out before.
func (g *guardConn) awaitHead() error {
	for g.free == 0 && len(g.bad) == 0 && g.err == nil {
		if g.buf == nil {
			g.hold(nil)
		}
		if _, err := g.readMore(); err != nil {
			return err
		}
	}
	return nil
}

// hold keeps b, the start of a head, until the head is complete.
func (g *guardConn) hold(b []byte) {
	g.buf = guardBufPool.Get().(*[]byte)
	*g.buf = append((*g.buf)[:0], b...)
	g.off, g.free = 0, 0
}

// putBuf gives the buffer back once everything in it has been handed on.
func (g *guardConn) putBuf() {
	if g.buf == nil || g.off < len(*g.buf) {
		return
	}
	if cap(*g.buf) == guardBufSize {
		*g.buf = (*g.buf)[:0]
		guardBufPool.Put(g.buf)
	}
	g.buf, g.off, g.free = nil, 0, 0
}

// fail ends the stream after the free bytes: a refused head becomes the
// rejection request, a refused body a read error.
func (g *guardConn) fail(ferr *frameError) {
	if ferr == nil {
		return
	}
	if ferr.Head {
		g.bad = g.reject(ferr)
		g.err = io.EOF
	} else {
		g.err = errors.Join(errFraming, ferr)
		g.bodyRefused.Store(true)
	}
	if g.buf != nil {
		*g.buf = (*g.buf)[:g.off+g.free]
	}
}

// began says the connection's first request reached the handler (or that
// it never will: Close): headListener's drain stops waiting for it.
func (g *guardConn) began() {
	if g.awaiting != nil && g.begun.CompareAndSwap(false, true) {
		g.awaiting.Add(-1)
	}
}

// Close closes the connection; it no longer holds up a drain.
func (g *guardConn) Close() error {
	g.began()
	return g.Conn.Close()
}

// guardOf is the guardConn of a connection headListener handed on, or nil
// (an HTTP/2 connection goes to net/http bare).
func guardOf(c net.Conn) *guardConn {
	switch c := c.(type) {
	case *guardConn:
		return c
	case tlsGuardConn:
		return c.guardConn
	}
	return nil
}

// guardKey is the context key of a request's guardConn (Server's
// ConnContext).
type guardKey struct{}

// resetOnClose has r's connection end with a reset (SO_LINGER 0) when
// net/http closes it after the handler aborted, for an HTTP/1.0 request:
// without chunks, a streamed body ends where the connection does, and a
// plain close (FIN) showed the client a body cut short (the worker
// killed, short of its own Content-Length) as a whole one. An HTTP/1.1
// client tells a cut from the missing last chunk or the short
// Content-Length, and keeps what was sent before the cut, which a reset
// would throw away with the socket's buffers. Only HTTP/1 connections
// have a guardConn.
func resetOnClose(r *http.Request) {
	g, _ := r.Context().Value(guardKey{}).(*guardConn)
	if g == nil {
		return
	}
	setLinger(g.Conn, 0)
}

// framingRefused reports whether r's connection had a request body's
// framing refused.
func framingRefused(r *http.Request) bool {
	g, _ := r.Context().Value(guardKey{}).(*guardConn)
	return g != nil && g.bodyRefused.Load()
}

// ReadFrom lets a response from a spool file reach the connection's
// sendfile path.
func (g *guardConn) ReadFrom(r io.Reader) (int64, error) { return readFrom(g.Conn, r) }

// CloseWrite half-closes the connection when the transport can.
func (g *guardConn) CloseWrite() error { return closeWrite(g.Conn) }

// tlsGuardConn is a guardConn over TLS: net/http takes the TLS state from
// ConnectionState, so the handler still sees r.TLS.
type tlsGuardConn struct {
	*guardConn
	tc *tls.Conn
}

func (g tlsGuardConn) ConnectionState() tls.ConnectionState { return g.tc.ConnectionState() }

// rejectHeader carries a refused head's verdict from guardConn to the
// handler, inside the request that stands for it. Its value starts with a
// secret made at start-up, so no client can send it.
const rejectHeader = "Cellgate-Rejected-Head"

// rejection builds the request that stands for a refused head:
// "Cellgate-Rejected-Head: <token> <status> <reason>". The reason is
// frameCheck's fixed text.
func rejection(token string, ferr *frameError) []byte {
	return []byte("GET / HTTP/1.1\r\nHost: rejected.invalid\r\nConnection: close\r\n" +
		rejectHeader + ": " + token + " " + strconv.Itoa(ferr.StatusCode()) + " " + ferr.Reason + "\r\n\r\n")
}

// rejectedHead returns the status and reason of a request that stands for
// a refused head, and ok false for any other request.
func rejectedHead(token string, r *http.Request) (status int, reason string, ok bool) {
	v := r.Header[rejectHeader]
	if len(v) != 1 || len(v[0]) <= len(token) {
		return 0, "", false
	}
	if subtle.ConstantTimeCompare([]byte(v[0][:len(token)]), []byte(token)) != 1 || v[0][len(token)] != ' ' {
		return 0, "", false
	}
	code, reason, _ := strings.Cut(v[0][len(token)+1:], " ")
	status, err := strconv.Atoi(code)
	if err != nil {
		return 0, "", false
	}
	return status, reason, true
}
