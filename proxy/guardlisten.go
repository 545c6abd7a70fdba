package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// headListener hands net/http a connection only once it is ready to be
// served: every connection is accepted here and prepared in a goroutine of
// its own within timeout (Config.ReadHeaderTimeout), and one that fails
// (or is still being prepared when the listener closes) is closed without
// net/http ever seeing it. At shutdown drain comes first: it stops
// accepting and lets the connections being prepared become ready and be
// served, as net/http's own Shutdown waits for a new connection's first
// request; without it a client whose request was on its way when the
// server stopped would get its new connection reset.
//
// Plain HTTP/1.x (prepareHead): a connection is ready when its first
// request head has arrived whole, or has been refused by the guard. Until
// then it costs a small goroutine, the guardConn and the few hundred
// bytes of head held so far; net/http's per-connection goroutine, its 4
// KiB read and 4 KiB write buffers and its deeper stack come only with a
// complete head. This is what 5,000 slowloris connections cost: measured
// by BenchmarkGateSlowloris, about half of serve's memory per connection
// was net/http's buffers, held while a head trickled in. A keep-alive
// connection between requests is net/http's again (its IdleTimeout
// applies, and the guard times a head it holds back: see guardConn).
//
// TLS (tlsListener.prepare): the handshake, then the same wait for an
// HTTP/1.1 connection; an "h2" connection goes to net/http bare at once
// (HTTP/2's framing has no such ambiguity, and net/http serves HTTP/2 only
// on a *tls.Conn).
type headListener struct {
	inner   net.Listener
	timeout time.Duration
	// prepare makes c ready, or fails (having answered c if it should);
	// c's deadline is set to the timeout around it.
	prepare func(c net.Conn) (net.Conn, error)

	start    sync.Once
	conns    chan net.Conn
	errs     chan error
	done     chan struct{}
	loopDone chan struct{} // closed when acceptLoop has returned (or will never run)

	// closeInner closes inner once, for drain and then Close.
	closeInner func() error

	mu      sync.Mutex
	closed  bool
	pending map[net.Conn]struct{} // being prepared; closed by Close
	// unstarted counts the guardConns handed on whose first request has
	// not reached the handler yet and which are still open (see drain).
	unstarted atomic.Int64
}

func newHeadListener(inner net.Listener, timeout time.Duration, prepare func(net.Conn) (net.Conn, error)) *headListener {
	return &headListener{
		inner: inner, timeout: timeout, prepare: prepare,
		conns:      make(chan net.Conn),
		errs:       make(chan error),
		done:       make(chan struct{}),
		loopDone:   make(chan struct{}),
		closeInner: sync.OnceValue(inner.Close),
		pending:    make(map[net.Conn]struct{}),
	}
}

// drainGrace is how long drain waits at most for the connections being
// prepared: net/http's Shutdown likewise waits up to 5 s for a new
// connection's first request before it counts the connection as idle.
const drainGrace = 5 * time.Second

// drain stops accepting connections and waits, until grace or ctx ends,
// for the ones being prepared to be handed on (Accept's caller is still
// serving) and for the first request of each to reach the handler, or for
// them to fail. Close then closes whatever is left. Only then may net/http
// hear of the shutdown: a connection whose first request it reads after
// Shutdown began is closed unanswered (net/http's conn.serve).
func (l *headListener) drain(ctx context.Context, grace time.Duration) {
	t := time.NewTimer(grace)
	defer t.Stop()
	_ = l.closeInner()
	l.start.Do(func() { close(l.loopDone) }) // never accepted: nothing to wait for
	select {
	case <-l.loopDone: // every accepted connection is in pending
	case <-t.C:
		return
	case <-ctx.Done():
		return
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		l.mu.Lock()
		busy := len(l.pending) > 0 || l.unstarted.Load() > 0
		l.mu.Unlock()
		if !busy {
			return
		}
		select {
		case <-tick.C:
		case <-t.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// prepareHead is a plain connection's preparation: the guard, and its
// first request head.
func prepareHead(guard func(net.Conn) *guardConn) func(net.Conn) (net.Conn, error) {
	return func(c net.Conn) (net.Conn, error) {
		g := guard(c)
		if err := g.awaitHead(); err != nil {
			return nil, err
		}
		return g, nil
	}
}

// Accept returns the next connection that is ready. Accepting starts with
// the first call, once net/http has set itself up.
func (l *headListener) Accept() (net.Conn, error) {
	l.start.Do(func() {
		go func() {
			defer close(l.loopDone)
			l.acceptLoop()
		}()
	})
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting and closes the connections still being prepared.
func (l *headListener) Close() error {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.done)
		for c := range l.pending {
			_ = c.Close()
		}
		clear(l.pending)
	}
	l.mu.Unlock()
	return l.closeInner()
}

func (l *headListener) Addr() net.Addr { return l.inner.Addr() }

// acceptLoop accepts connections and starts their preparation until the
// listener is closed. Other accept errors go to Accept's caller, those of
// one connection as temporary (ConnFailure), which net/http retries.
func (l *headListener) acceptLoop() {
	for {
		c, err := l.inner.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case l.errs <- ConnFailure(err):
				continue
			case <-l.done:
				return
			}
		}
		// Registered here, not in the goroutine, so that drain, which
		// waits for this loop to end, sees every connection accepted.
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			_ = c.Close()
			continue
		}
		l.pending[c] = struct{}{}
		l.mu.Unlock()
		go l.prepareConn(c)
	}
}

// prepareConn prepares c (in pending) within the timeout and hands it to
// Accept.
func (l *headListener) prepareConn(c net.Conn) {
	if l.timeout > 0 {
		_ = c.SetDeadline(time.Now().Add(l.timeout))
	}
	out, err := l.prepare(c)
	if err == nil {
		if g := guardOf(out); g != nil {
			g.awaiting = &l.unstarted
			l.unstarted.Add(1) // before pending loses c: drain sees one or the other
		}
	}
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
	if err != nil {
		_ = c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	select {
	case l.conns <- out:
	case <-l.done:
		_ = out.Close()
	}
}

// tlsListener does the TLS handshakes itself (in headListener's
// goroutines, within its timeout), so that it can put a guardConn in front
// of net/http on every HTTP/1.1 connection, which it can only do on the
// decrypted stream. net/http serves HTTP/2 only on a *tls.Conn and takes
// r.TLS from a ConnectionState method otherwise, so an "h2" connection
// goes to it bare and an HTTP/1.1 one as a tlsGuardConn.
type tlsListener struct {
	*headListener
	config *tls.Config
	guard  func(net.Conn) *guardConn
	failed func(err error, addr net.Addr) // a handshake failed
}

func newTLSListener(inner net.Listener, config *tls.Config, timeout time.Duration,
	guard func(net.Conn) *guardConn, failed func(error, net.Addr)) *tlsListener {
	l := &tlsListener{config: config, guard: guard, failed: failed}
	l.headListener = newHeadListener(inner, timeout, l.prepare)
	return l
}

// plainHTTPAnswer is what a client that speaks plain HTTP to the TLS port
// gets, as from net/http.
const plainHTTPAnswer = "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"

// prepare runs c's TLS handshake and, on an HTTP/1.1 connection, waits
// for its first request head.
func (l *tlsListener) prepare(c net.Conn) (net.Conn, error) {
	tc := tls.Server(c, l.config)
	if err := tc.Handshake(); err != nil {
		var re tls.RecordHeaderError
		if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
			_, _ = io.WriteString(re.Conn, plainHTTPAnswer)
		}
		if l.failed != nil {
			l.failed(err, c.RemoteAddr())
		}
		return nil, err
	}
	if tc.ConnectionState().NegotiatedProtocol == "h2" {
		return tc, nil
	}
	g := l.guard(tc)
	if err := g.awaitHead(); err != nil {
		return nil, err
	}
	return tlsGuardConn{guardConn: g, tc: tc}, nil
}

// looksLikeHTTP reports whether the first 5 bytes of a connection are the
// start of a plain HTTP request.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}
