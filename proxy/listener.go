package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// refusal is the whole response a plain-HTTP client gets when a connection
// cap refuses it: fixed bytes written once, with no request read and nothing
// spawned. retryAfter is the Retry-After value in seconds.
func refusal(retryAfter string) []byte {
	const body = "503 too many connections\r\n"
	return []byte("HTTP/1.1 503 Service Unavailable\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n" +
		"Retry-After: " + retryAfter + "\r\n" +
		"Connection: close\r\n" +
		"\r\n" + body)
}

// refusalWriteTimeout bounds the write of refusal; a fresh socket's send
// buffer takes it at once, so this only guards against a pathological peer.
const refusalWriteTimeout = 100 * time.Millisecond

// RefusedReason says which cap refused a connection.
type RefusedReason string

const (
	RefusedTotal RefusedReason = "total"  // Config.MaxConns
	RefusedPerIP RefusedReason = "per_ip" // Config.MaxConnsPerIP
)

// capListener enforces a cap on open connections in total and per client IP
// address. A connection over a cap is refused inside Accept (a fixed 503 on
// plain HTTP, a bare close under TLS, where plain text would be garbage) and
// Accept goes on to the next one, so http.Server never sees it: no goroutine,
// no request, no cell. A client's address is its IP (IPv4-mapped IPv6 folded
// to IPv4); one IPv6 host may hold several addresses, which the per-IP cap
// does not group.
type capListener struct {
	net.Listener
	maxTotal int    // 0 = no cap
	maxPerIP int    // 0 = no cap
	refusal  []byte // written to a refused connection; nil closes it bare
	onRefuse func(RefusedReason, net.Addr)
	trusted  []netip.Prefix // proxies exempt from maxPerIP (forwarded.go)

	total        atomic.Int64
	refusedTotal atomic.Uint64
	refusedPerIP atomic.Uint64
	mu           sync.Mutex
	perIP        map[netip.Addr]int // only addresses with open connections
}

func newCapListener(ln net.Listener, maxTotal, maxPerIP int, refusal []byte, onRefuse func(RefusedReason, net.Addr)) *capListener {
	return &capListener{
		Listener: ln,
		maxTotal: maxTotal,
		maxPerIP: maxPerIP,
		refusal:  refusal,
		onRefuse: onRefuse,
		perIP:    make(map[netip.Addr]int),
	}
}

// Accept returns the next connection within the caps.
func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := clientIP(c.RemoteAddr())
		reason := l.admit(ip)
		if reason == "" {
			return &capConn{Conn: c, l: l, ip: ip}, nil
		}
		// Counted before the client is answered, so that whoever sees the
		// refusal (the client, a test) sees it counted.
		if reason == RefusedTotal {
			l.refusedTotal.Add(1)
		} else {
			l.refusedPerIP.Add(1)
		}
		if l.onRefuse != nil {
			l.onRefuse(reason, c.RemoteAddr())
		}
		l.refuse(c)
	}
}

// admit counts a connection from ip, or says which cap refuses it.
func (l *capListener) admit(ip netip.Addr) RefusedReason {
	if n := l.total.Add(1); l.maxTotal > 0 && n > int64(l.maxTotal) {
		l.total.Add(-1)
		return RefusedTotal
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.maxPerIP > 0 && l.perIP[ip] >= l.maxPerIP && !isTrusted(l.trusted, ip) {
		l.total.Add(-1)
		return RefusedPerIP
	}
	l.perIP[ip]++
	return ""
}

// release uncounts a connection from ip.
func (l *capListener) release(ip netip.Addr) {
	l.total.Add(-1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.perIP[ip] - 1; n > 0 {
		l.perIP[ip] = n
	} else {
		delete(l.perIP, ip)
	}
}

// refuse answers and closes a connection over a cap.
func (l *capListener) refuse(c net.Conn) {
	if l.refusal != nil {
		_ = c.SetWriteDeadline(time.Now().Add(refusalWriteTimeout))
		_, _ = c.Write(l.refusal)
	}
	_ = c.Close()
}

// open returns the number of connections counted now.
func (l *capListener) open() int { return int(l.total.Load()) }

// clientIP is the address the per-IP cap counts: the remote IP, unmapped;
// the zero Addr for a non-IP address (all such clients share one count).
func clientIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// capConn uncounts itself once when closed. It forwards ReadFrom and
// CloseWrite to the TCP connection so that net/http still uses sendfile and
// half-closes as it would on a bare *net.TCPConn.
type capConn struct {
	net.Conn
	l    *capListener
	ip   netip.Addr
	once sync.Once
}

func (c *capConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}

// ReadFrom lets io.Copy from an *os.File reach the TCP connection's
// sendfile path.
func (c *capConn) ReadFrom(r io.Reader) (int64, error) { return readFrom(c.Conn, r) }

// CloseWrite half-closes the connection when the transport can.
func (c *capConn) CloseWrite() error { return closeWrite(c.Conn) }

// SetLinger sets SO_LINGER on the TCP connection (resetOnClose).
func (c *capConn) SetLinger(sec int) error { return setLinger(c.Conn, sec) }

// setLinger sets SO_LINGER on c's TCP connection, through the wrappers of
// a connection (a TLS connection's too).
func setLinger(c net.Conn, sec int) error {
	if t, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = t.NetConn()
	}
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		return l.SetLinger(sec)
	}
	return errors.ErrUnsupported
}

// readFrom copies r to c through c's own ReadFrom when it has one (a
// *net.TCPConn's is sendfile), for wrappers of a connection.
func readFrom(c net.Conn, r io.Reader) (int64, error) {
	if rf, ok := c.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c}, r)
}

// closeWrite half-closes c when its transport can, for wrappers of a
// connection.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
