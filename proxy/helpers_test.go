package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// runFunc is a fake Runner.
type runFunc func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error)

func (f runFunc) Run(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
	return f(ctx, spec)
}

// cgiOutput returns a fake Runner whose worker writes out to stdout and
// ends with cause.
func cgiOutput(out string, cause sandbox.Cause) runFunc {
	return func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		if spec.Stdin != nil {
			if _, err := io.Copy(io.Discard, spec.Stdin); err != nil {
				return sandbox.Result{}, err
			}
		}
		if _, err := io.WriteString(spec.Stdout, out); err != nil {
			return sandbox.Result{}, err
		}
		return fakeResult(cause), nil
	}
}

func fakeResult(cause sandbox.Cause) sandbox.Result {
	res := sandbox.Result{Cause: cause, Started: time.Now(), Wall: time.Millisecond, UID: 61000}
	switch cause {
	case sandbox.CauseExit:
		res.ExitCode = 3
	case sandbox.CauseSignal, sandbox.CauseOOM, sandbox.CauseDeadline, sandbox.CauseKilled:
		res.ExitCode, res.Signal = -1, 9
	}
	if cause == sandbox.CauseOOM {
		res.Usage.OOMKill = 1
	}
	return res
}

// recorder collects the records of finished requests (the Metrics
// observer).
type recorder struct {
	mu   sync.Mutex
	recs []accounting.Record
}

func (r *recorder) ObserveRequest(rec accounting.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
}

func (r *recorder) all() []accounting.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]accounting.Record(nil), r.recs...)
}

// byID returns the record of the response with the request id (not a
// local redirect's hop), waiting for it a little: the record is written
// after the response.
func (r *recorder) byID(t testing.TB, id string) accounting.Record {
	t.Helper()
	for i := 0; i < 500; i++ {
		for _, rec := range r.all() {
			if rec.RequestID == id && rec.Outcome != accounting.OutcomeLocalRedirect {
				return rec
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no access-log record with request id %q among %d", id, len(r.all()))
	return accounting.Record{}
}

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// route returns a route for prefix, with the limits the policy would fill.
func route(name, prefix, program string) *policy.Route {
	return &policy.Route{
		Name:       name,
		PathPrefix: prefix,
		Tenant:     "default",
		Driver:     policy.DriverCGI,
		Program:    program,
		Limits:     policy.Limits{Memory: 64 << 20, Timeout: 10 * time.Second, MaxBody: new(int64(1 << 20))},
		User:       policy.User{Auto: true},
		Response:   policy.ResponseSpool,
	}
}

// staticRouter is the Router of a policy that is never reloaded: its
// matches hold nothing.
type staticRouter struct{ p *policy.Policy }

func (r staticRouter) Match(host, method, urlPath string) (*policy.Match, func(), error) {
	m, err := r.p.Match(host, method, urlPath)
	if err != nil {
		return nil, nil, err
	}
	return m, func() {}, nil
}

// noCellSpec is a Deps.CellSpec that adds nothing.
func noCellSpec(*policy.Route, *sandbox.Spec) error { return nil }

// testServer is a Server on a loopback listener.
type testServer struct {
	*Server
	URL  string
	Addr string
	recs *recorder
	logs *syncBuffer
}

// startServer starts a Server for routes with the runner. deps may set
// more; cfg is used as given (defaults apply).
func startServer(t testing.TB, cfg Config, deps Deps, routes ...*policy.Route) *testServer {
	t.Helper()
	if cfg.TempDir == "" {
		cfg.TempDir = t.TempDir()
	}
	recs := &recorder{}
	logs := &syncBuffer{}
	if deps.Router == nil {
		deps.Router = staticRouter{&policy.Policy{Routes: routes}}
	}
	if deps.CellSpec == nil {
		deps.CellSpec = noCellSpec
	}
	if deps.Metrics == nil {
		deps.Metrics = recs
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := New(cfg, deps)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	scheme := "http://"
	if cfg.TLSCertFile != "" {
		scheme = "https://"
	}
	return &testServer{Server: s, URL: scheme + ln.Addr().String(), Addr: ln.Addr().String(), recs: recs, logs: logs}
}

// get does a request and returns the response with its body read.
func do(t testing.TB, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body of %s %s: %v", req.Method, req.URL, err)
	}
	return resp, string(b)
}

func newRequest(t testing.TB, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// script writes an executable /bin/sh script into a temporary directory
// and returns its path.
func script(t testing.TB, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
