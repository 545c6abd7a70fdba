package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// Runner runs one worker in a fresh cell: *sandbox.Runner, or PlainExec in
// tests and for the no-cell benchmark baseline. Run must return once the
// worker and everything it started are gone, and must end the run early when
// ctx is cancelled.
type Runner interface {
	Run(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error)
}

// Router finds the route of a request. A match holds the policy it was
// made under (its route, the route's limits and the tenant it names) until
// release is called: the handler calls it exactly once, when the request
// has ended (its cells ended, their admission released), so a reload can
// tell when the last request routed under an older policy is gone. release
// is nil when err is not.
type Router interface {
	Match(host, method, urlPath string) (m *policy.Match, release func(), err error)
}

// Admitter reserves room for a cell in a tenant's budget, queueing when
// there is none: policy's admission control. release gives the room back
// and is called exactly once; waited is the time spent queued. Its errors
// wrap policy.ErrQueueFull or policy.ErrQueueTimeout (503), or the ctx's
// error.
type Admitter interface {
	Admit(ctx context.Context, tenant string, memory int64) (release func(), waited time.Duration, err error)
}

// Observer takes one finished request's record: *accounting.Metrics.
type Observer interface {
	ObserveRequest(accounting.Record)
}

// Deps are the server's collaborators. Runner, Router and CellSpec are
// required.
type Deps struct {
	Runner Runner
	Router Router
	// Admitter admits requests to cells; nil admits everything at once
	// (no budgets, no queue).
	Admitter Admitter
	// AccessLog receives one record per request (accounting.Log); nil
	// writes none.
	AccessLog *slog.Logger
	// Metrics observes one record per request; nil observes nothing.
	Metrics Observer
	// Logger receives server errors and workers' stderr, each with the
	// request id; nil discards them.
	Logger *slog.Logger
	// LookupEnv resolves a route's PassEnv names in cellgate's own
	// environment (os.LookupEnv); nil passes none of them.
	LookupEnv func(name string) (string, bool)
	// CellSpec completes a route's Spec with what the proxy cannot derive
	// (required): Profile, the cell's tenant and limits (cgroup.NewProfile
	// of route.Tenant and route.Resources, built once per route when its
	// policy is loaded, at start-up or reload), and User, the credentials
	// of a route whose User is not Auto. It is called for every cell, so it
	// should only look up what was built. Its error fails the request with
	// a 500 and is logged.
	CellSpec func(route *policy.Route, spec *sandbox.Spec) error
	// Now is the clock of the access-log times and durations (deadlines
	// always use the wall clock); nil is time.Now.
	Now func() time.Time
}

// Server is the front. Build it with New, run it with Serve or
// ListenAndServe, stop it with Shutdown.
type Server struct {
	cfg        Config
	deps       Deps
	log        *slog.Logger
	now        func() time.Time
	srv        *http.Server
	ids        *idSource
	envOpt     envOptions
	retryAfter string // Retry-After value
	// spools is the budget of all request and response spools.
	spools *spoolBudget
	// rejectToken marks the requests that stand for refused heads
	// (guardConn); made at random by New, known to no client.
	rejectToken string

	// base is the parent of every request's context; Shutdown cancels it
	// when its own context ends, which kills the cells still running.
	base       context.Context
	cancelBase context.CancelFunc

	// inflight holds an *inflight per request in the handler (InFlight).
	inflight sync.Map
	// clients counts the requests in flight of clients forwarded by
	// trusted proxies (forwarded.go).
	clients clientRequests

	// lateSlots bounds the records written after their responses
	// (recordLate); lateRecords counts them for Shutdown.
	lateSlots   chan struct{}
	lateRecords sync.WaitGroup

	mu        sync.Mutex
	closing   bool           // set by Shutdown before it waits for handlers
	handlers  sync.WaitGroup // requests in the handler; Add only under mu while !closing
	listeners []*capListener
	heads     []*headListener // drained by Shutdown before net/http's
}

// discard is a logger that writes nothing.
var discard = slog.New(slog.DiscardHandler)

// http2Config is HTTP/2's: the streams a connection may have open, and,
// with the write checks on (Config.WriteMinRate), WriteTimeout as the
// longest a connection may take no byte the server has for it. Without
// that, a client that opened its flow-control windows and stopped reading
// the TCP connection blocked HTTP/2's one frame writer for good, and with
// it every stream's handler, spool and deadline (a stream is reset by a
// frame the same writer sends): they held the spool budget for as long as
// it kept the connection open.
func http2Config(cfg Config) *http.HTTP2Config {
	c := &http.HTTP2Config{MaxConcurrentStreams: cfg.MaxStreams}
	if cfg.WriteMinRate > 0 {
		c.WriteByteTimeout = cfg.WriteTimeout
	}
	return c
}

// New validates cfg (defaults applied) and returns a Server.
func New(cfg Config, deps Deps) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if deps.Runner == nil || deps.Router == nil || deps.CellSpec == nil {
		return nil, errors.New("proxy: Deps.Runner, Deps.Router and Deps.CellSpec are required")
	}
	// A spool file made now: an unwritable TempDir fails the start, not
	// the first large request.
	probe, err := openTempFile(cfg.TempDir)
	if err != nil {
		return nil, fmt.Errorf("proxy config: %w", err)
	}
	probe.Close()
	if deps.AccessLog == nil {
		deps.AccessLog = discard
	}
	if deps.Logger == nil {
		deps.Logger = discard
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	ids, err := newIDSource()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:  cfg,
		deps: deps,
		log:  deps.Logger,
		now:  deps.Now,
		ids:  ids,
		envOpt: envOptions{
			software:          "SERVER_SOFTWARE=cellgate/" + cfg.Version,
			passAuthorization: cfg.PassAuthorization,
			lookupEnv:         deps.LookupEnv,
		},
		retryAfter:  retryAfterSeconds(cfg.RetryAfter),
		rejectToken: rand.Text(),
		lateSlots:   make(chan struct{}, maxLateRecords),
	}
	s.spools = newSpoolBudget(cfg.SpoolMemory, cfg.SpoolDisk)
	s.base, s.cancelBase = context.WithCancel(context.Background())
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true) // used only under TLS (ALPN h2)
	s.srv = &http.Server{
		Addr:              cfg.Addr,
		Handler:           http.HandlerFunc(s.serveHTTP),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		Protocols:         &protocols,
		HTTP2:             http2Config(cfg),
		// "OPTIONS *" too is cellgate's to answer, with a request id and
		// a record, not net/http's built-in 200.
		DisableGeneralOptionsHandler: true,
		BaseContext:                  func(net.Listener) context.Context { return s.base },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if g := guardOf(c); g != nil {
				return context.WithValue(ctx, guardKey{}, g)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(deps.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// retryAfterSeconds is d in whole seconds, rounded up, at least 1.
func retryAfterSeconds(d time.Duration) string {
	sec := int64((d + time.Second - 1) / time.Second)
	if sec < 1 {
		sec = 1
	}
	return strconv.FormatInt(sec, 10)
}

// Serve accepts connections on ln, within the connection caps, until
// Shutdown. With TLS configured it serves HTTPS (HTTP/2 and HTTP/1.1) on
// ln. It returns http.ErrServerClosed after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	tlsOn := s.cfg.TLSCertFile != ""
	var refusalBytes []byte // under TLS plain text would be garbage: a bare close
	if !tlsOn {
		refusalBytes = refusal(s.retryAfter)
	}
	capped := newCapListener(ln, capValue(s.cfg.MaxConns), capValue(s.cfg.MaxConnsPerIP), refusalBytes, s.refused)
	capped.trusted = s.cfg.TrustedProxies
	s.mu.Lock()
	s.listeners = append(s.listeners, capped)
	s.mu.Unlock()
	if !tlsOn {
		return s.serveHeads(newHeadListener(capped, s.cfg.ReadHeaderTimeout, prepareHead(s.guard)))
	}
	cert, err := tls.LoadX509KeyPair(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate %s and key %s: %w", s.cfg.TLSCertFile, s.cfg.TLSKeyFile, err)
	}
	config := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
	s.mu.Lock()
	if s.srv.TLSConfig == nil {
		// What makes net/http's Serve set up HTTP/2 for the "h2"
		// connections tlsListener hands it.
		s.srv.TLSConfig = config.Clone()
	}
	s.mu.Unlock()
	return s.serveHeads(newTLSListener(capped, config, s.cfg.ReadHeaderTimeout, s.guard, s.handshakeFailed).headListener)
}

// serveHeads serves the connections l hands on; Shutdown drains l first.
func (s *Server) serveHeads(l *headListener) error {
	s.mu.Lock()
	s.heads = append(s.heads, l)
	s.mu.Unlock()
	return s.srv.Serve(l)
}

// guard puts a request-head check in front of net/http on an HTTP/1.x
// connection (guardConn). Its heads may be as large as net/http's own
// limit, MaxHeaderBytes plus 4 KiB.
func (s *Server) guard(c net.Conn) *guardConn {
	return newGuardConn(c, s.cfg.MaxHeaderBytes+4096, s.cfg.ReadHeaderTimeout, s.rejection)
}

// rejection is the request that stands for a refused head (see guardConn).
func (s *Server) rejection(ferr *frameError) []byte { return rejection(s.rejectToken, ferr) }

// handshakeFailed logs a failed TLS handshake, as a debug line like a
// refused connection.
func (s *Server) handshakeFailed(err error, addr net.Addr) {
	s.log.Debug("TLS handshake failed", "client", addr.String(), "err", err)
}

// ListenAndServe listens on Config.Addr and calls Serve.
func (s *Server) ListenAndServe() error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
	return s.Serve(ln)
}

// Shutdown stops accepting connections, closes idle ones and waits for the
// requests in flight to finish (their cells to end and responses to be
// written). When ctx ends first, it cancels the requests still running
// (their cells are killed; they are logged as killed), closes every
// connection, waits for the handlers to return and reports ctx's error.
// Either way it returns once every request's record is written, those
// written after their responses included (recordLate): up to the Runner's
// EmptyWait after the last cell's end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	heads := slices.Clone(s.heads)
	s.mu.Unlock()
	var drains sync.WaitGroup
	for _, l := range heads {
		drains.Go(func() { l.drain(ctx, drainGrace) })
	}
	drains.Wait()
	err := s.srv.Shutdown(ctx)
	s.mu.Lock()
	s.closing = true // no handler is counted from here on
	s.mu.Unlock()
	if err != nil {
		// The drain's time is up: the requests still running are
		// cancelled (their cells killed) and answered 503 before the
		// connections close; closed at once, they got no answer at all,
		// though their records said 503. Bounded: a handler stuck on a
		// write is not waited for.
		s.cancelBase()
		waitFor(&s.handlers, cancelledAnswerWait)
		_ = s.srv.Close()
	}
	s.handlers.Wait()
	s.lateRecords.Wait()
	s.cancelBase()
	if err != nil {
		return fmt.Errorf("shut down proxy: %w", err)
	}
	return nil
}

// cancelledAnswerWait bounds how long Shutdown, its time up, waits for
// the handlers of the requests it cancelled to answer before it closes
// every connection.
const cancelledAnswerWait = 3 * time.Second

// waitFor waits for wg, at most d.
func waitFor(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// ConnStats are the front's connection counts, for metrics.
type ConnStats struct {
	// Open is the number of client connections open now.
	Open int
	// RefusedTotal and RefusedPerIP count the connections refused since
	// start by Config.MaxConns and Config.MaxConnsPerIP.
	RefusedTotal, RefusedPerIP uint64
}

// ConnStats returns the connection counts over every listener served.
func (s *Server) ConnStats() ConnStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st ConnStats
	for _, l := range s.listeners {
		st.Open += l.open()
		st.RefusedTotal += l.refusedTotal.Load()
		st.RefusedPerIP += l.refusedPerIP.Load()
	}
	return st
}

// capValue turns a Config cap (negative = none) into capListener's
// (0 = none).
func capValue(n int) int {
	if n < 0 {
		return 0
	}
	return n
}

// refused logs a connection refused by a cap. It is a debug line: under a
// flood, one warning per connection would be a second flood.
func (s *Server) refused(reason RefusedReason, addr net.Addr) {
	s.log.Debug("connection refused", "reason", string(reason), "client", addr.String())
}
