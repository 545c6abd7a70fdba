package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/sandbox"
)

// admitFunc is a fake Admitter.
type admitFunc func(ctx context.Context, tenant string, memory int64) (func(), time.Duration, error)

func (f admitFunc) Admit(ctx context.Context, tenant string, memory int64) (func(), time.Duration, error) {
	return f(ctx, tenant, memory)
}

// InFlight shows a request queued for admission, then running in its
// cell (with the cell's path from the runner), and nothing once it ended.
func TestInFlight(t *testing.T) {
	admit := make(chan struct{})
	queued := make(chan struct{})
	admitter := admitFunc(func(ctx context.Context, tenant string, memory int64) (func(), time.Duration, error) {
		close(queued)
		<-admit
		return func() {}, 5 * time.Millisecond, nil
	})
	running := make(chan struct{})
	finish := make(chan struct{})
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		spec.Started("/sys/fs/cgroup/cellgate/cells/default/c1", 700)
		close(running)
		<-finish
		io.WriteString(spec.Stdout, "Content-Type: text/plain\n\nok")
		return fakeResult(sandbox.CauseOK), nil
	})
	ts := startServer(t, Config{}, Deps{Runner: runner, Admitter: admitter}, route("slow", "/", "/x"))

	done := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequest("GET", ts.URL+"/work?x=1", nil)
		req.Host = "a.example"
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		done <- resp
	}()

	one := func(state string) InFlight {
		t.Helper()
		fl := ts.InFlight()
		if len(fl) != 1 {
			t.Fatalf("InFlight() = %+v, want one request", fl)
		}
		if fl[0].State != state {
			t.Fatalf("state %q, want %q", fl[0].State, state)
		}
		return fl[0]
	}
	<-queued
	q := one(StateQueued)
	if q.Route != "slow" || q.Tenant != "default" || q.Host != "a.example" || q.Path != "/work" || q.RequestID == "" || q.CellPath != "" {
		t.Errorf("queued request: %+v", q)
	}
	close(admit)
	<-running
	r := one(StateRunning)
	if r.CellPath != "/sys/fs/cgroup/cellgate/cells/default/c1" || r.CellStarted.IsZero() || r.QueueWait != 5*time.Millisecond || r.CellCPUBefore != 700 {
		t.Errorf("running request: %+v", r)
	}
	close(finish)
	if resp := <-done; resp == nil || resp.StatusCode != 200 {
		t.Fatalf("response %v", resp)
	}
	for i := 0; i < 500 && len(ts.InFlight()) > 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if fl := ts.InFlight(); len(fl) != 0 {
		t.Errorf("after the request ended: %+v", fl)
	}
}

// TestInFlightClipped: a request in flight shows its client's strings cut
// as the access log cuts them (accounting.Clip). Before, a path of 15 KiB
// of bytes that are not UTF-8 was shown whole: 500 of them made /status's
// JSON 45 MB.
func TestInFlightClipped(t *testing.T) {
	running := make(chan struct{})
	finish := make(chan struct{})
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		close(running)
		<-finish
		io.WriteString(spec.Stdout, "Content-Type: text/plain\n\nok")
		return fakeResult(sandbox.CauseOK), nil
	})
	ts := startServer(t, Config{}, Deps{Runner: runner}, route("slow", "/", "/x"))
	path := "/" + strings.Repeat("\xff", 15000)
	c, err := net.Dial("tcp", ts.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-running:
	case <-time.After(time.Minute):
		t.Fatal("the request did not reach its runner")
	}
	fl := ts.InFlight()
	if len(fl) != 1 {
		t.Fatalf("InFlight() = %d requests, want one", len(fl))
	}
	if fl[0].Path != accounting.Clip(path) || len(fl[0].Path) > 1024 {
		t.Errorf("in flight: the path of %d bytes, want it clipped", len(fl[0].Path))
	}
	close(finish)
	io.Copy(io.Discard, c)
}

// observeFunc is a fake Observer.
type observeFunc func(accounting.Record)

func (f observeFunc) ObserveRequest(rec accounting.Record) { f(rec) }

// TestInFlightRefusedHead: a head the guard refused is listed in flight,
// while its 400 goes out, without the stand-in request's method, host and
// path (its record has none either). Before, /status showed it as
// "GET rejected.invalid /", a request no client sent.
func TestInFlightRefusedHead(t *testing.T) {
	var ts *testServer
	seen := make(chan []InFlight, 1)
	metrics := observeFunc(func(accounting.Record) { seen <- ts.InFlight() })
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		t.Error("a refused head reached the runner")
		return fakeResult(sandbox.CauseOK), nil
	})
	ts = startServer(t, Config{}, Deps{Runner: runner, Metrics: metrics}, route("r", "/", "/x"))
	c, err := net.Dial("tcp", ts.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST /smuggle HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	var fl []InFlight
	select {
	case fl = <-seen:
	case <-time.After(time.Minute):
		t.Fatal("no record of the refused head")
	}
	if len(fl) != 1 {
		t.Fatalf("in flight at the record: %+v, want the refused request", fl)
	}
	if f := fl[0]; f.Method != "" || f.Host != "" || f.Path != "" {
		t.Errorf("refused head in flight as %q %q %q, want no method, host or path", f.Method, f.Host, f.Path)
	}
	io.Copy(io.Discard, c)
}
