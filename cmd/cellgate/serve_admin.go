package main

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
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
		return nil, err
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
