package main

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/proxy"
	"github.com/cellgate/cellgate/sandbox"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type noRouter struct{}

func (noRouter) Match(host, method, path string) (*policy.Match, func(), error) {
	return nil, nil, policy.ErrNoRoute
}

type noRunner struct{}

func (noRunner) Run(context.Context, sandbox.Spec) (sandbox.Result, error) {
	return sandbox.Result{}, sandbox.ErrNoCell
}

// TestConnCounters: a connection refused by the per-IP cap, which the
// access log never sees, shows in the metrics.
func TestConnCounters(t *testing.T) {
	srv, err := proxy.New(proxy.Config{MaxConnsPerIP: 1, TempDir: t.TempDir()}, proxy.Deps{
		Runner:   noRunner{},
		Router:   noRouter{},
		CellSpec: func(*policy.Route, *sandbox.Spec) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	cs := connCounters(srv)
	open, refusedPerIP := cs[0], cs[2]

	first, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	waitFor(t, "one open connection", func() bool { return testutil.ToFloat64(open) == 1 })
	second, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	waitFor(t, "a connection refused per IP", func() bool { return testutil.ToFloat64(refusedPerIP) == 1 })
	if got := testutil.ToFloat64(cs[1]); got != 0 {
		t.Errorf("connections refused by the total cap = %v, want 0", got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
