package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// guardListener puts a guardConn in front of net/http on every plain
// HTTP/1.x connection.
type guardListener struct {
	net.Listener
	guard func(net.Conn) *guardConn
}

func (l guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.guard(c), nil
}

// tlsListener does the TLS handshakes itself, so that it can put a
// guardConn in front of net/http on every HTTP/1.1 connection, which it can
// only do on the decrypted stream. net/http serves HTTP/2 only on a
// *tls.Conn and takes r.TLS from a ConnectionState method otherwise, so an
// "h2" connection goes to it bare (HTTP/2's framing has no such ambiguity)
// and an HTTP/1.1 one as a tlsGuardConn.
//
// Each handshake runs in a goroutine of its own within timeout, so a slow
// or silent client holds only its own connection (the connection caps
// bound how many there are), never the accept loop.
type tlsListener struct {
	inner   net.Listener
	config  *tls.Config
	timeout time.Duration
	guard   func(net.Conn) *guardConn
	failed  func(err error, addr net.Addr) // a handshake failed

	start sync.Once
	conns chan net.Conn
	errs  chan error
	done  chan struct{}
	close sync.Once
}

func newTLSListener(inner net.Listener, config *tls.Config, timeout time.Duration,
	guard func(net.Conn) *guardConn, failed func(error, net.Addr)) *tlsListener {
	return &tlsListener{
		inner: inner, config: config, timeout: timeout, guard: guard, failed: failed,
		conns: make(chan net.Conn),
		errs:  make(chan error),
		done:  make(chan struct{}),
	}
}

// Accept returns the next connection whose handshake succeeded. The
// handshakes start with the first call, once net/http has set itself up.
func (l *tlsListener) Accept() (net.Conn, error) {
	l.start.Do(func() { go l.acceptLoop() })
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *tlsListener) Close() error {
	l.close.Do(func() { close(l.done) })
	return l.inner.Close()
}

func (l *tlsListener) Addr() net.Addr { return l.inner.Addr() }

// acceptLoop accepts TCP connections and starts their handshakes until the
// listener is closed. Other accept errors go to Accept's caller, which
// decides (net/http retries temporary ones).
func (l *tlsListener) acceptLoop() {
	for {
		c, err := l.inner.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case l.errs <- err:
				continue
			case <-l.done:
				return
			}
		}
		go l.handshake(c)
	}
}

// plainHTTPAnswer is what a client that speaks plain HTTP to the TLS port
// gets, as from net/http.
const plainHTTPAnswer = "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"

// handshake runs c's TLS handshake and hands the connection to Accept.
func (l *tlsListener) handshake(c net.Conn) {
	tc := tls.Server(c, l.config)
	_ = tc.SetDeadline(time.Now().Add(l.timeout))
	if err := tc.Handshake(); err != nil {
		var re tls.RecordHeaderError
		if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
			_, _ = io.WriteString(re.Conn, plainHTTPAnswer)
		}
		_ = c.Close()
		if l.failed != nil {
			l.failed(err, c.RemoteAddr())
		}
		return
	}
	_ = tc.SetDeadline(time.Time{})
	var out net.Conn = tc
	if tc.ConnectionState().NegotiatedProtocol != "h2" {
		out = tlsGuardConn{guardConn: l.guard(tc), tc: tc}
	}
	select {
	case l.conns <- out:
	case <-l.done:
		_ = out.Close()
	}
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
