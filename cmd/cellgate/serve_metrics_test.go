package main

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/proxy"
	"github.com/cellgate/cellgate/sandbox"
	"github.com/prometheus/client_golang/prometheus"
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

// TestRunnerCounters: the counters of work done off the request's path
// register side by side (one name per pair, told apart by result) and
// read a fresh Runner's zeros.
func TestRunnerCounters(t *testing.T) {
	prof, err := cgroup.NewProfile("", nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := sandbox.New(sandbox.Config{Cells: sandbox.TreeCells{}, Profile: prof, AsSelf: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	reg := prometheus.NewRegistry()
	cs := runnerCounters(r)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			t.Fatalf("register: %v", err)
		}
	}
	want := map[string]int{"cellgate_cell_teardowns": 1, "cellgate_warm_cells_total": 2, "cellgate_netns_ahead_total": 2, "cellgate_netns_reused_total": 1, "cellgate_mount_templates_total": 2, "cellgate_resident_ended_total": 6}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if len(mf.GetMetric()) != want[mf.GetName()] {
			t.Errorf("%s: %d series, want %d", mf.GetName(), len(mf.GetMetric()), want[mf.GetName()])
		}
		delete(want, mf.GetName())
	}
	for name := range want {
		t.Errorf("%s not exported", name)
	}
	for _, c := range cs {
		if v := testutil.ToFloat64(c); v != 0 {
			t.Errorf("a fresh Runner's counter reads %v", v)
		}
	}
}
