package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cellgate/cellgate/proxy"
)

// adminLimits bound what clients of the admin listener may hold. The admin
// listener has no authentication, so whoever reaches it (a local user, a
// cell of a network: host route, a pod when it is not firewalled) must not
// be able to exhaust serve's file descriptors and starve the public
// listener and the cells. They are not flags: its clients are a scraper,
// the kubelet's probes and an operator's curl.
type adminLimits struct {
	// MaxConns is the number of admin connections open at once, across
	// every admin listener. A connection over it is not accepted: it
	// waits in the kernel's listen backlog (no fd, no goroutine) until
	// one closes, as with HAProxy's maxconn, so a probe or a scrape
	// queued behind idle connections is served late rather than refused.
	MaxConns int
	// ReadHeaderTimeout bounds the read of a request's head, ReadTimeout
	// that of a whole request (admin requests have no body).
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	// WriteTimeout bounds a response, from the end of its request's
	// head; /metrics and /status take far less. No admin endpoint
	// streams (the HTML /status reloads itself); net/http/pprof's CPU
	// profile and trace (--admin-pprof) extend it by their ?seconds=.
	WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection with no request for this
	// long; longer than the PodMonitor's 15 s scrape interval, so a
	// scraper keeps its connection.
	IdleTimeout time.Duration
}

// defaultAdminLimits are serve's admin listener's limits.
var defaultAdminLimits = adminLimits{
	MaxConns:          64,
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       10 * time.Second,
	WriteTimeout:      30 * time.Second,
	IdleTimeout:       30 * time.Second,
}

// adminServer is the admin listener's server: h under lim's timeouts, with
// one cap on the connections of all the listeners it serves.
type adminServer struct {
	*http.Server
	slots chan struct{} // a token per open admin connection
	log   *slog.Logger
	// lastFull is when the cap was last logged as reached (UnixNano).
	lastFull atomic.Int64
}

func newAdminServer(h http.Handler, log *slog.Logger, lim adminLimits) *adminServer {
	return &adminServer{
		Server: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: lim.ReadHeaderTimeout,
			ReadTimeout:       lim.ReadTimeout,
			WriteTimeout:      lim.WriteTimeout,
			IdleTimeout:       lim.IdleTimeout,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		slots: make(chan struct{}, lim.MaxConns),
		log:   log,
	}
}

// Serve serves ln within the connection cap until Shutdown or Close.
func (a *adminServer) Serve(ln net.Listener) error {
	return a.Server.Serve(&adminListener{Listener: ln, a: a, done: make(chan struct{})})
}

// adminFullLogEvery spaces out the log line saying the cap is reached.
const adminFullLogEvery = time.Minute

// adminListener takes a slot before it accepts, so that at most MaxConns
// admin connections are open; Close wakes an Accept waiting for a slot.
type adminListener struct {
	net.Listener
	a         *adminServer
	done      chan struct{}
	closeOnce sync.Once
}

func (l *adminListener) Accept() (net.Conn, error) {
	select {
	case l.a.slots <- struct{}{}:
	default:
		now, last := time.Now().UnixNano(), l.a.lastFull.Load()
		if now-last >= int64(adminFullLogEvery) && l.a.lastFull.CompareAndSwap(last, now) {
			l.a.log.Warn("the admin listener is at its cap of open connections: more wait in the listen backlog until one closes",
				"admin", l.Addr().String(), "max_conns", cap(l.a.slots))
		}
		select {
		case l.a.slots <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.a.slots
		return nil, proxy.ConnFailure(err)
	}
	return &adminConn{Conn: c, slots: l.a.slots}, nil
}

func (l *adminListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

// adminConn gives its slot back once when closed.
type adminConn struct {
	net.Conn
	slots chan struct{}
	once  sync.Once
}

func (c *adminConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.slots })
	return err
}

// CloseWrite half-closes the connection, as net/http does to a bare
// *net.TCPConn before it closes one it answered with an error.
func (c *adminConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// adminHostGuard answers only the requests whose Host adminHostAllowed
// admits with names; any other gets a 421 naming --admin-hosts.
//
// This is the admin listener's defence against DNS rebinding: a page an
// operator opens on the machine (or, in a pod, a browser that can reach
// it) has its own name resolve to 127.0.0.1 once loaded, and its script
// then reads /status (hosts, paths, client addresses of every request in
// flight) as same-origin. Its requests carry its name in Host, which no
// attacker can make an IP address, localhost or a name under .localhost
// (browsers resolve those to loopback themselves). The kubelet's probes
// and Prometheus's scrapes by pod address send an IP address; a scraper
// that uses a name needs it in --admin-hosts.
//
// 421 Misdirected Request, not 403: the request is not forbidden to its
// sender, it names a server this listener is not (RFC 9110, 15.5.20), and
// a scraper's error shows the status with the body naming the fix.
func adminHostGuard(h http.Handler, names map[string]bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !adminHostAllowed(r.Host, names) {
			http.Error(w, fmt.Sprintf("cellgate admin listener: Host %q is not answered here (DNS rebinding guard); "+
				"use an IP address or localhost, or allow the name with --admin-hosts NAME (CELLGATE_ADMIN_HOSTS)", r.Host),
				http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// adminHostAllowed reports whether host, a request's Host with or without
// a port, is one the admin listener answers to: none (HTTP/1.0), an IP
// address (IPv6 in brackets or not), localhost or a name under it, or one
// of names (normalized by adminHostNames). Names compare without case and
// without one trailing dot.
func adminHostAllowed(host string, names map[string]bool) bool {
	if host == "" {
		return true
	}
	h := host
	switch {
	case strings.HasPrefix(h, "["):
		end := strings.IndexByte(h, ']')
		if end < 0 || (end+1 < len(h) && h[end+1] != ':') {
			return false
		}
		a, err := netip.ParseAddr(h[1:end])
		return err == nil && a.Is6()
	case strings.Count(h, ":") > 1:
		_, err := netip.ParseAddr(h)
		return err == nil
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	h = strings.ToLower(strings.TrimSuffix(h, "."))
	return h == "localhost" || strings.HasSuffix(h, ".localhost") || names[h]
}

// adminHostNames normalizes the names of --admin-hosts (lower case, no
// trailing dot) and refuses what cannot be a Host's name: a port, a
// wildcard, an empty label.
func adminHostNames(list []string) (map[string]bool, error) {
	names := map[string]bool{}
	for _, n := range list {
		h := strings.ToLower(strings.TrimSuffix(n, "."))
		if h == "" || strings.HasPrefix(h, ".") || strings.Contains(h, "..") ||
			strings.IndexFunc(h, func(c rune) bool {
				return !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_')
			}) >= 0 {
			return nil, fmt.Errorf("%q is not a host name (a name without port or wildcard, such as cellgate.internal; IP addresses and localhost need none)", n)
		}
		names[h] = true
	}
	return names, nil
}
