package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// deliver sends sig to the channel notify has it sent to, as os/signal
// does: without waiting, dropped when the channel is full. It reports
// whether the signal was kept.
func deliver(sigs *serveSignals, sig os.Signal) bool {
	ch := map[os.Signal]chan os.Signal{
		syscall.SIGTERM: sigs.stop, syscall.SIGINT: sigs.stop, syscall.SIGHUP: sigs.hup, syscall.SIGUSR1: sigs.usr1,
	}[sig]
	select {
	case ch <- sig:
		return true
	default:
		return false
	}
}

// loopRun is serve's loop running with a reload the test holds: each
// reload says it started (its number, from 1) and returns what the test
// releases it with, or, abandoned (the end of its context), the cause,
// which it also sends on abandoned.
type loopRun struct {
	sigs      *serveSignals
	reqs      *reloadRequests
	started   chan int
	release   chan error
	abandoned chan error
	reloads   atomic.Int32
	ended     chan error
}

func startLoop(t *testing.T) *loopRun {
	t.Helper()
	d, _ := testDaemon(t, reloadPolicyA)
	l := &loopRun{sigs: newServeSignals(), reqs: newReloadRequests(), started: make(chan int, 16), release: make(chan error),
		abandoned: make(chan error, 16), ended: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	stopping, endWatch := l.sigs.watchStop(ctx)
	reload := func(ctx context.Context) error {
		l.started <- int(l.reloads.Add(1))
		select {
		case err := <-l.release:
			return err
		case <-ctx.Done():
			l.abandoned <- context.Cause(ctx)
			return context.Cause(ctx)
		}
	}
	go func() {
		err := d.loop(stopping, l.sigs, l.reqs, nil, reload)
		endWatch()
		l.ended <- err
	}()
	t.Cleanup(func() {
		cancel()
		<-l.ended
	})
	return l
}

// waitStarted waits for reload n to start.
func (l *loopRun) waitStarted(t *testing.T, n int) {
	t.Helper()
	select {
	case got := <-l.started:
		if got != n {
			t.Fatalf("reload %d started, want reload %d", got, n)
		}
	case <-time.After(hangGuard):
		t.Fatalf("reload %d did not start", n)
	}
}

// waitEnded waits for the loop to end (the drain to start).
func (l *loopRun) waitEnded(t *testing.T) {
	t.Helper()
	select {
	case <-l.ended:
		l.ended <- nil // for the cleanup
	case n := <-l.started:
		t.Fatalf("reload %d started instead of the drain", n)
	case <-time.After(hangGuard):
		t.Fatal("the loop did not stop: the drain never started")
	}
}

// TestServeLoopDrainsAfterReloadBurst: SIGHUPs, SIGUSR1s and reloads asked
// by the poller and the control socket while a reload runs, then SIGTERM:
// the SIGTERM is kept, ends the reload running, and the drain starts as
// soon as that reload returns, with no reload after it. With one channel
// of 4 for every signal, the SIGTERM was dropped (os/signal does not wait)
// and serve never drained.
func TestServeLoopDrainsAfterReloadBurst(t *testing.T) {
	l := startLoop(t)
	if !deliver(l.sigs, syscall.SIGHUP) {
		t.Fatal("the first SIGHUP was dropped")
	}
	l.waitStarted(t, 1)
	for range 10 {
		deliver(l.sigs, syscall.SIGHUP)
		deliver(l.sigs, syscall.SIGUSR1)
		l.reqs.ask()
	}
	if !deliver(l.sigs, syscall.SIGTERM) {
		t.Fatal("SIGTERM sent during a reload, after a burst of SIGHUPs, was dropped")
	}
	l.waitEnded(t)
	if n := l.reloads.Load(); n != 1 {
		t.Errorf("%d reloads, want 1: the drain waited for reloads asked after the SIGTERM", n)
	}
}

// TestServeLoopStopAbandonsReload: a SIGTERM ends a reload under way at
// once (its context ends, its cause the signal), the drain starts, and
// who asked for that reload gets its verdict: abandoned. Before, the
// drain waited for the reload, which waits for every new fork route's app
// to import (up to a minute each), past systemd's TimeoutStopSec (45 s in
// the unit) and the pod's grace period, and serve was killed mid-drain.
func TestServeLoopStopAbandonsReload(t *testing.T) {
	l := startLoop(t)
	verdict := l.reqs.ask()
	l.waitStarted(t, 1)
	deliver(l.sigs, syscall.SIGTERM)
	select {
	case cause := <-l.abandoned:
		var sig stopSignal
		if !errors.As(cause, &sig) || sig.sig != syscall.SIGTERM {
			t.Errorf("the reload was abandoned for %v, want the SIGTERM", cause)
		}
	case <-time.After(hangGuard):
		t.Fatal("the reload under way went on after SIGTERM")
	}
	l.waitEnded(t)
	select {
	case err := <-verdict:
		if err == nil || !strings.Contains(err.Error(), "serve is stopping (terminated)") {
			t.Errorf("the asker's verdict is %v, want the reload abandoned for the stop", err)
		}
	case <-time.After(hangGuard):
		t.Fatal("the asker got no verdict")
	}
	// The watch has ended with the loop: a second signal is the drain's.
	deliver(l.sigs, syscall.SIGTERM)
	select {
	case <-l.sigs.stop:
	case <-time.After(hangGuard):
		t.Fatal("a signal after the loop did not reach the drain's channel")
	}
}

// TestServeLoopCoalescesReloads: every request for a reload made before a
// reload starts gets that reload's verdict; the SIGHUPs and the requests
// made while it runs are one more reload, not one each.
func TestServeLoopCoalescesReloads(t *testing.T) {
	l := startLoop(t)
	first := l.reqs.ask()
	l.waitStarted(t, 1)
	var during []<-chan error
	for range 10 {
		deliver(l.sigs, syscall.SIGHUP)
		during = append(during, l.reqs.ask())
	}
	l.release <- errors.New("verdict 1")
	l.waitStarted(t, 2)
	if err := <-first; err == nil || err.Error() != "verdict 1" {
		t.Errorf("the request made before reload 1 got %v, want its verdict", err)
	}
	l.release <- errors.New("verdict 2")
	for i, w := range during {
		select {
		case err := <-w:
			if err == nil || err.Error() != "verdict 2" {
				t.Errorf("request %d made during reload 1 got %v, want reload 2's verdict", i, err)
			}
		case <-time.After(hangGuard):
			t.Fatalf("request %d made during reload 1 got no verdict", i)
		}
	}
	deliver(l.sigs, syscall.SIGTERM)
	l.waitEnded(t)
	if n := l.reloads.Load(); n != 2 {
		t.Errorf("%d reloads, want 2 (one asked before, one for all asked during the first)", n)
	}
}

// TestServeSignalsNotify: the process's signals reach the channels deliver
// sends them to.
func TestServeSignalsNotify(t *testing.T) {
	sigs := newServeSignals()
	sigs.notify()
	defer sigs.stopNotify()
	for _, tc := range []struct {
		sig syscall.Signal
		ch  chan os.Signal
	}{{syscall.SIGHUP, sigs.hup}, {syscall.SIGUSR1, sigs.usr1}, {syscall.SIGTERM, sigs.stop}, {syscall.SIGINT, sigs.stop}} {
		if err := syscall.Kill(os.Getpid(), tc.sig); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-tc.ch:
			if got != tc.sig {
				t.Errorf("%v came as %v", tc.sig, got)
			}
		case <-time.After(hangGuard):
			t.Fatalf("%v did not reach its channel", tc.sig)
		}
	}
}

// TestReloadFailureNotTakenForStop: a reload that fails on its own (a
// program that is not there) while a stop signal has ended its context
// reports its own failure, not "abandoned"; stoppedBy holds only for the
// stop's own error. Before, any failure once a signal had come was
// reported as the stop's, and serve's start exited 0 on a real failure.
func TestReloadFailureNotTakenForStop(t *testing.T) {
	d, path := testDaemon(t, reloadPolicyA)
	writeFile(t, path, strings.Replace(reloadPolicyA, "program: /bin/true}", "program: /nonexistent/prog}", 1))
	ctx, cancel := context.WithCancelCause(context.Background())
	stop := stopSignal{syscall.SIGTERM}
	cancel(stop)
	err := d.reload(ctx)
	if err == nil || strings.Contains(err.Error(), "abandoned") || !strings.Contains(err.Error(), "/nonexistent/prog") {
		t.Errorf("reload = %v, want its own failure (the missing program), not the stop", err)
	}
	if stoppedBy(ctx, err) {
		t.Errorf("stoppedBy(%v) = true for a failure of the reload's own", err)
	}
	if !stoppedBy(ctx, fmt.Errorf("route r: start abandoned: %w", stop)) {
		t.Error("stoppedBy = false for the stop's own error")
	}
	if stoppedBy(context.Background(), errors.New("x")) {
		t.Error("stoppedBy = true without a stop")
	}
}

// TestServeLoopPendingStopFirst: a stop signal the watch has not taken
// yet keeps a reload asked for at the same time from starting: the loop
// waits for the watch to end its context. Before, the SIGHUP could win
// the loop's select, and a reload ran after the SIGTERM.
func TestServeLoopPendingStopFirst(t *testing.T) {
	d, _ := testDaemon(t, reloadPolicyA)
	sigs, reqs := newServeSignals(), newReloadRequests()
	deliver(sigs, syscall.SIGTERM) // no watch takes it: the test ends ctx
	deliver(sigs, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(context.Background())
	var reloads atomic.Int32
	ended := make(chan error, 1)
	go func() {
		ended <- d.loop(ctx, sigs, reqs, nil, func(context.Context) error { reloads.Add(1); return nil })
	}()
	time.Sleep(100 * time.Millisecond) // the watch's moment, long drawn out
	cancel()
	select {
	case <-ended:
	case <-time.After(hangGuard):
		t.Fatal("the loop did not end")
	}
	if n := reloads.Load(); n != 0 {
		t.Errorf("%d reloads ran after the SIGTERM, want none", n)
	}
}
