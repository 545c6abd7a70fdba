package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// serveSignals are the signals serve's loop acts on, each kind on a
// channel of its own. os/signal drops a signal whose channel is full: on
// one channel shared by all of them, the SIGHUPs sent while a reload ran
// (seconds, when fork routes wait for their apps to import) filled it, and
// the SIGTERM after them was lost. Kept on after the loop has ended (the
// drain), so that no signal of these kills serve with its cells in flight.
type serveSignals struct {
	// stop has SIGTERM and SIGINT: drain; a second cuts the drain short.
	stop chan os.Signal
	// hup has SIGHUP: reload. One slot: the SIGHUPs that come while one
	// waits are that one reload.
	hup chan os.Signal
	// usr1 has SIGUSR1: reopen the log files. One slot, likewise.
	usr1 chan os.Signal
}

// newServeSignals makes the channels; notify has the signals sent there.
func newServeSignals() *serveSignals {
	return &serveSignals{stop: make(chan os.Signal, 2), hup: make(chan os.Signal, 1), usr1: make(chan os.Signal, 1)}
}

// notify has the process's signals delivered to the channels until
// stopNotify.
func (s *serveSignals) notify() {
	signal.Notify(s.stop, syscall.SIGTERM, syscall.SIGINT)
	signal.Notify(s.hup, syscall.SIGHUP)
	signal.Notify(s.usr1, syscall.SIGUSR1)
}

func (s *serveSignals) stopNotify() {
	signal.Stop(s.stop)
	signal.Stop(s.hup)
	signal.Stop(s.usr1)
}

// stopSignal is the cause of watchStop's context when a signal ended it.
type stopSignal struct{ sig os.Signal }

func (s stopSignal) Error() string { return "serve is stopping (" + s.sig.String() + ")" }

// stoppedBy reports whether err is a stop signal's (watchStop) ending of
// ctx: a fork route's import abandoned for it, not a failure of its own
// that came before or beside it.
func stoppedBy(ctx context.Context, err error) bool {
	cause := context.Cause(ctx)
	return errors.As(cause, new(stopSignal)) && errors.Is(err, cause)
}

// watchStop returns ctx, also ended by the first SIGTERM or SIGINT (its
// cause a stopSignal), for serve's start and loop: a stop is seen at once
// by a reload under way or the start, whose fork routes' imports (up to a
// minute each) it abandons, where it waited for them, past systemd's
// TimeoutStopSec and the pod's grace period. end stops the watch: from
// then on the signals are shutdown's (a second one cuts the drain short).
func (s *serveSignals) watchStop(ctx context.Context) (stopping context.Context, end func()) {
	stopping, stop := context.WithCancelCause(ctx)
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case sig := <-s.stop:
			stop(stopSignal{sig})
		case <-quit:
		}
	})
	var once sync.Once
	return stopping, func() {
		once.Do(func() {
			close(quit)
			wg.Wait()
			stop(context.Canceled)
		})
	}
}

// reloadRequests are the reloads asked of serve's loop by the policy
// poller and the control socket, coalesced: asking never blocks, and every
// request made before a reload starts is answered by that one reload, so
// that N requests made while a reload runs cause one more reload, not N.
type reloadRequests struct {
	mu      sync.Mutex
	pending chan struct{}  // one slot: a reload is asked for
	waiting []chan<- error // the verdicts owed by the next reload
}

func newReloadRequests() *reloadRequests {
	return &reloadRequests{pending: make(chan struct{}, 1)}
}

// ask asks for a reload and returns where its verdict comes (nil:
// reloaded): the verdict of the next reload serve's loop starts. No
// verdict comes once the loop has ended (the drain).
func (q *reloadRequests) ask() <-chan error {
	reply := make(chan error, 1) // the loop never waits for the asker
	q.mu.Lock()
	defer q.mu.Unlock()
	q.waiting = append(q.waiting, reply)
	select {
	case q.pending <- struct{}{}:
	default: // asked already: the same reload answers both
	}
	return reply
}

// take clears the request and returns who waits for the verdict of the
// reload about to start.
func (q *reloadRequests) take() []chan<- error {
	q.mu.Lock()
	defer q.mu.Unlock()
	select {
	case <-q.pending:
	default:
	}
	w := q.waiting
	q.waiting = nil
	return w
}

// loop is serve's main loop: it reloads (SIGHUP, reqs) and reopens the
// log files (SIGUSR1) until the end of ctx (watchStop's: SIGTERM or
// SIGINT) or a listener's failure (served: returned). A stop is looked
// for before anything else, so that one that came while a reload ran (and
// ended it: reload's context is ctx) starts the drain as soon as that
// reload returns, before any reload asked for meanwhile.
func (d *daemon) loop(ctx context.Context, sigs *serveSignals, reqs *reloadRequests, served <-chan error, reload func(context.Context) error) error {
	for {
		select {
		case <-ctx.Done():
			return d.stopped(ctx)
		case err := <-served:
			return d.listenerFailed(err)
		default:
		}
		if len(sigs.stop) > 0 {
			// A stop the watch has not taken yet, which it ends ctx for
			// at once: no reload starts before it.
			<-ctx.Done()
			return d.stopped(ctx)
		}
		select {
		case <-ctx.Done():
			return d.stopped(ctx)
		case err := <-served:
			return d.listenerFailed(err)
		case <-sigs.usr1:
			d.reopenLogs()
		case <-sigs.hup:
			d.reloadOnce(ctx, sigs, reqs, reload)
		case <-reqs.pending:
			d.reloadOnce(ctx, sigs, reqs, reload)
		}
	}
}

// stopped logs why the loop ended: a signal (watchStop) or the end of
// serve's context.
func (d *daemon) stopped(ctx context.Context) error {
	var sig stopSignal
	if errors.As(context.Cause(ctx), &sig) {
		d.log.Info("signal: draining", "signal", sig.sig.String(), "drain_timeout", d.cfg.DrainTimeout)
		return nil
	}
	d.log.Info("context ended: draining", "cause", context.Cause(ctx))
	return nil
}

func (d *daemon) listenerFailed(err error) error {
	d.log.Error("listener failed: shutting down", "err", err)
	return err
}

// reloadOnce runs one reload for everything asking for one now: a SIGHUP
// waiting and every request of reqs get this reload.
func (d *daemon) reloadOnce(ctx context.Context, sigs *serveSignals, reqs *reloadRequests, reload func(context.Context) error) {
	select {
	case <-sigs.hup:
	default:
	}
	waiting := reqs.take()
	err := reload(ctx)
	for _, w := range waiting {
		w <- err
	}
}
