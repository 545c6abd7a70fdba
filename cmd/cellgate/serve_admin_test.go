package main

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/prometheus/client_golang/prometheus"
)

// adminProbe is an admin server on loopback that counts the connections
// it has accepted and not yet closed (file descriptors, beneath the cap).
type adminProbe struct {
	addr string

	mu                   sync.Mutex
	open, peak, accepted int
}

func startAdmin(t testing.TB, lim adminLimits) *adminProbe {
	t.Helper()
	p := &adminProbe{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	a := newAdminServer(h, slog.New(slog.DiscardHandler), lim)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- a.Serve(&countingListener{Listener: ln, p: p}) }()
	t.Cleanup(func() {
		a.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return p
}

type countingListener struct {
	net.Listener
	p *adminProbe
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	l.p.accepted++
	l.p.open++
	l.p.peak = max(l.p.peak, l.p.open)
	return &countingConn{Conn: c, p: l.p}, nil
}

type countingConn struct {
	net.Conn
	p    *adminProbe
	once sync.Once
}

func (c *countingConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.p.mu.Lock()
		defer c.p.mu.Unlock()
		c.p.open--
	})
	return err
}

func (p *adminProbe) counts() (open, peak, accepted int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open, p.peak, p.accepted
}

// adminClient is a keep-alive connection that sent one request and then
// sits idle: answered when the response came, closed when the server
// closed the connection (or the read deadline passed, err says which).
type adminClient struct {
	conn     net.Conn
	answered chan struct{}
	closed   chan error
}

func dialAdmin(t testing.TB, addr string, deadline time.Time) *adminClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(deadline)
	ac := &adminClient{conn: c, answered: make(chan struct{}), closed: make(chan error, 1)}
	go func() {
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			ac.closed <- err
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		close(ac.answered)
		_, err = br.ReadByte()
		ac.closed <- err
	}()
	return ac
}

// TestAdminConnCap: no more than MaxConns admin connections are open at
// once; the ones over it wait, unanswered, and one is taken as soon as an
// open one closes.
func TestAdminConnCap(t *testing.T) {
	const maxConns, extra = 3, 5
	p := startAdmin(t, adminLimits{MaxConns: maxConns, ReadHeaderTimeout: time.Minute, ReadTimeout: time.Minute,
		WriteTimeout: time.Minute, IdleTimeout: time.Hour})
	deadline := time.Now().Add(time.Minute)
	var clients []*adminClient
	for range maxConns + extra {
		clients = append(clients, dialAdmin(t, p.addr, deadline))
	}
	// answered waits until want clients have an answer and returns their
	// indexes.
	answered := func(want int) []int {
		t.Helper()
		for {
			var got []int
			for i, c := range clients {
				select {
				case <-c.answered:
					got = append(got, i)
				default:
				}
			}
			if len(got) >= want {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d admin connections answered, want %d", len(got), len(clients), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	first := answered(maxConns)
	if open, peak, accepted := p.counts(); len(first) != maxConns || accepted != maxConns || peak > maxConns {
		t.Fatalf("with %d idle connections: %d answered, %d accepted, %d open at most (now %d), want %d each",
			len(clients), len(first), accepted, peak, open, maxConns)
	}
	clients[first[0]].conn.Close()
	if next := answered(maxConns + 1); len(next) != maxConns+1 {
		t.Fatalf("after one closed: %d answered, want %d", len(next), maxConns+1)
	}
	if _, peak, accepted := p.counts(); accepted != maxConns+1 || peak > maxConns {
		t.Errorf("after one closed: %d accepted, %d open at most; want %d and at most %d", accepted, peak, maxConns+1, maxConns)
	}
}

// TestAdminIdleTimeout: an idle keep-alive admin connection is closed by
// serve after IdleTimeout, which frees its place for one waiting over the
// cap: every connection is answered and closed without the clients doing
// anything, and never more than MaxConns at once.
func TestAdminIdleTimeout(t *testing.T) {
	const maxConns, extra = 3, 5
	p := startAdmin(t, adminLimits{MaxConns: maxConns, ReadHeaderTimeout: time.Minute, ReadTimeout: time.Minute,
		WriteTimeout: time.Minute, IdleTimeout: 100 * time.Millisecond})
	// Far longer than the idle timeout: reached only if serve never
	// closes an idle connection.
	deadline := time.Now().Add(time.Minute)
	var clients []*adminClient
	for range maxConns + extra {
		clients = append(clients, dialAdmin(t, p.addr, deadline))
	}
	for i, c := range clients {
		err := <-c.closed
		select {
		case <-c.answered:
		default:
			t.Errorf("connection %d: not answered: %v", i, err)
			continue
		}
		if !errors.Is(err, io.EOF) {
			t.Errorf("connection %d: answered, then %v; want closed by serve (EOF) before the deadline", i, err)
		}
	}
	if _, peak, accepted := p.counts(); accepted != len(clients) || peak > maxConns {
		t.Errorf("%d accepted, %d open at most; want %d and at most %d", accepted, peak, len(clients), maxConns)
	}
}

// TestAdminHostAllowed: the admin listener answers IP addresses, localhost
// and the names of --admin-hosts in Host, with or without a port; a name
// a DNS-rebinding page would send is refused.
func TestAdminHostAllowed(t *testing.T) {
	names, err := adminHostNames([]string{"Cellgate.Internal.", "metrics.example"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"", true}, // HTTP/1.0 without Host
		{"127.0.0.1", true},
		{"127.0.0.1:9090", true},
		{"10.1.2.3:9090", true}, // a pod address: the kubelet, Prometheus
		{"[::1]", true},
		{"[::1]:9090", true},
		{"::1", true},
		{"[fe80::1%25eth0]:9090", true},
		{"localhost", true},
		{"LocalHost:9090", true},
		{"localhost.:9090", true},
		{"admin.localhost:9090", true},
		{"cellgate.internal", true},
		{"CELLGATE.INTERNAL:9090", true},
		{"cellgate.internal.:9090", true},
		{"metrics.example", true},
		{"rebind.attacker.example", false},
		{"rebind.attacker.example:9090", false},
		{"127.0.0.1.attacker.example", false},
		{"localhost.attacker.example", false},
		{"notlocalhost", false},
		{"internal", false},
		{"x.cellgate.internal", false},
		{"[127.0.0.1]:9090", false},
		{"[::1]x", false},
		{"[::1", false},
		{"[rebind.attacker.example]:9090", false},
	} {
		if got := adminHostAllowed(tc.host, names); got != tc.want {
			t.Errorf("Host %q: allowed %v, want %v", tc.host, got, tc.want)
		}
	}
	if adminHostAllowed("cellgate.internal", nil) {
		t.Errorf("a name is allowed without --admin-hosts")
	}
	for _, bad := range []string{"", "host:9090", "*.example", "a..b", ".example", "[::1]", "a b"} {
		if _, err := adminHostNames([]string{bad}); err == nil {
			t.Errorf("--admin-hosts %q accepted", bad)
		}
	}
}

// TestAdminHostGuardStatus: /status (and every admin path) answers a
// request by IP address and refuses one that names another host, as a
// DNS-rebinding page's does, with a 421 that shows nothing of it.
func TestAdminHostGuardStatus(t *testing.T) {
	status := func() accounting.Status {
		return accounting.Status{InFlight: 1, Requests: []accounting.StatusRequest{{Host: "secret-tenant.example", Path: "/private"}}}
	}
	h := adminHandler(accounting.AdminHandler(prometheus.NewRegistry(), func() error { return nil }, status), false, nil)
	for _, tc := range []struct {
		host, path string
		want       int
		body       string
	}{
		{"127.0.0.1:9090", "/status?format=json", 200, "secret-tenant.example"},
		{"[::1]:9090", "/status?format=json", 200, "secret-tenant.example"},
		{"localhost:9090", "/healthz", 200, ""},
		{"rebind.attacker.example:9090", "/status?format=json", 421, "--admin-hosts"},
		{"rebind.attacker.example", "/status?format=html", 421, "--admin-hosts"},
		{"rebind.attacker.example", "/metrics", 421, "--admin-hosts"},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", tc.path, nil)
		req.Host = tc.host
		h.ServeHTTP(rec, req)
		body := rec.Body.String()
		if rec.Code != tc.want || !strings.Contains(body, tc.body) {
			t.Errorf("GET %s with Host %q: %d %.200q, want %d with %q", tc.path, tc.host, rec.Code, body, tc.want, tc.body)
		}
		if tc.want != 200 && strings.Contains(body, "secret-tenant") {
			t.Errorf("GET %s with Host %q: the refusal shows the status: %.200q", tc.path, tc.host, body)
		}
	}
}

// failOnce fails its first Accept with err, then accepts as its listener
// does, counting the calls.
type failOnce struct {
	net.Listener
	err   error
	calls atomic.Int32
}

func (l *failOnce) Accept() (net.Conn, error) {
	if l.calls.Add(1) == 1 {
		return nil, l.err
	}
	return l.Listener.Accept()
}

// enospc is the accept error of a connection Go's poller could not
// register, the user's epoll watches all taken.
var enospc = &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("epollctl", syscall.ENOSPC)}

// TestAdminOutlivesConnFailures: a connection the admin listener could
// not accept does not end its Serve (which ended serve with it).
func TestAdminOutlivesConnFailures(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	a := newAdminServer(h, slog.New(slog.DiscardHandler), defaultAdminLimits)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- a.Serve(&failOnce{Listener: ln, err: enospc}) }()
	defer func() {
		a.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()
	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatalf("GET after a failed accept: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET after a failed accept: %d", resp.StatusCode)
	}
}
