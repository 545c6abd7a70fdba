package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cellgate/cellgate/sandbox"
)

// dialFrom opens a connection to addr from the local IP.
func dialFrom(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectRefused reads the refusal from c: a 503 and the end of the
// connection.
func expectRefused(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read refusal: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || string(body) != "503 too many connections\r\n" || !resp.Close {
		t.Fatalf("refusal %d %q close %v", resp.StatusCode, body, resp.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("refused connection not closed: %v", err)
	}
}

// expectServed does a request on c and checks it is answered.
func expectServed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// waitOpen waits until the listener counts n connections (the accept loop
// runs in its own goroutine).
func waitOpen(t *testing.T, s *Server, n int) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if s.ConnStats().Open == n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("listener counts %d connections, never %d", s.ConnStats().Open, n)
}

func TestPerIPCap(t *testing.T) {
	ts := startServer(t, Config{MaxConnsPerIP: 2, MaxConns: -1},
		Deps{Runner: cgiOutput("Status: 200\n\n", sandbox.CauseOK)}, route("r", "/", "/x"))
	a1 := dialFrom(t, "127.0.0.1", ts.Addr)
	a2 := dialFrom(t, "127.0.0.1", ts.Addr)
	expectServed(t, a1)
	expectServed(t, a2)
	waitOpen(t, ts.Server, 2)
	expectRefused(t, dialFrom(t, "127.0.0.1", ts.Addr))
	// Another address is not affected.
	expectServed(t, dialFrom(t, "127.0.0.2", ts.Addr))
	// Closing one makes room again.
	a1.Close()
	waitOpen(t, ts.Server, 2) // a2 and the 127.0.0.2 connection
	expectServed(t, dialFrom(t, "127.0.0.1", ts.Addr))
	if n := len(ts.recs.all()); n != 4 {
		t.Errorf("%d requests recorded, want 4 (refusals spawn no request)", n)
	}
	if st := ts.ConnStats(); st.RefusedPerIP != 1 || st.RefusedTotal != 0 {
		t.Errorf("ConnStats %+v, want one per-IP refusal", st)
	}
}

func TestTotalCap(t *testing.T) {
	var runs atomic.Int32
	ts := startServer(t, Config{MaxConns: 2, MaxConnsPerIP: -1},
		Deps{Runner: runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
			runs.Add(1)
			return cgiOutput("Status: 200\n\n", sandbox.CauseOK)(ctx, spec)
		})}, route("r", "/", "/x"))
	a := dialFrom(t, "127.0.0.1", ts.Addr)
	b := dialFrom(t, "127.0.0.2", ts.Addr)
	expectServed(t, a)
	expectServed(t, b)
	c := dialFrom(t, "127.0.0.3", ts.Addr)
	expectRefused(t, c)
	if n := runs.Load(); n != 2 {
		t.Errorf("%d runs, want 2", n)
	}
	if st := ts.ConnStats(); st.RefusedTotal != 1 || st.RefusedPerIP != 0 {
		t.Errorf("ConnStats %+v, want one total-cap refusal", st)
	}
	b.Close()
	waitOpen(t, ts.Server, 1)
	expectServed(t, dialFrom(t, "127.0.0.3", ts.Addr))
}

func TestClientIP(t *testing.T) {
	for _, tt := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1}, "192.0.2.1"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 1}, "192.0.2.1"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1}, "2001:db8::1"},
		{&net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, "invalid IP"},
	} {
		if got := clientIP(tt.addr).String(); got != tt.want {
			t.Errorf("clientIP(%v) = %s, want %s", tt.addr, got, tt.want)
		}
	}
}

// onceListener hands out one connection, then blocks until closed.
type onceListener struct {
	c    net.Conn
	done chan struct{}
}

func (l *onceListener) Accept() (net.Conn, error) {
	if c := l.c; c != nil {
		l.c = nil
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}
func (l *onceListener) Close() error   { close(l.done); return nil }
func (l *onceListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// closeHook is a connection that runs a function when it is closed.
type closeHook struct {
	net.Conn
	onClose func()
}

func (c *closeHook) Close() error { c.onClose(); return c.Conn.Close() }

func (c *closeHook) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1} }

// TestRefusalCountedBeforeAnswer: a refused connection is counted (and
// reported) by the time its client is answered, so a client, or a test,
// that reads the refusal finds it in ConnStats.
func TestRefusalCountedBeforeAnswer(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go io.Copy(io.Discard, client)
	var atClose uint64
	var reported bool
	ol := &onceListener{done: make(chan struct{})}
	l := newCapListener(ol, 0, 0, nil, func(RefusedReason, net.Addr) { reported = true })
	ol.c = &closeHook{Conn: server, onClose: func() {
		atClose = l.refusedTotal.Load()
		if !reported {
			t.Error("refusal reported after the connection was closed")
		}
	}}
	l.maxTotal = 1
	l.total.Store(1) // the cap is full
	go func() { time.Sleep(50 * time.Millisecond); ol.Close() }()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept: %v, want the listener closed after the refusal", err)
	}
	if atClose != 1 {
		t.Errorf("refusals counted when the refused connection was closed: %d, want 1", atClose)
	}
}
