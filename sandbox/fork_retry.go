package sandbox

import (
	"context"
	"errors"
	"io"
	"time"
)

// runFork is Run for a fork route. A request whose hand-off failed because
// its preloader died (or broke) after it cloned the request's child, and
// whose child was ended before it ran any of the request's code
// (errNeverRan, see forkDriver.start), is run once more, on a fresh cell,
// by the preloader's next instance: the supervisor restarts it, and the
// retry waits for it as any request does (WaitReady, and ctx). Only once,
// only when the request's stdin can be rewound (cellgate spools a body
// before the worker starts: none, memory, or a file) and while time is
// left of the request's deadline, which the retry gets as its own.
func (r *Runner) runFork(ctx context.Context, spec Spec) (Result, error) {
	t0 := time.Now()
	res, err := r.run(ctx, spec)
	if !errors.Is(err, errNeverRan) || ctx.Err() != nil {
		return res, err
	}
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = r.timeout
	}
	left := timeout - time.Since(t0)
	if left <= 0 || !rewind(spec.Stdin) {
		return res, err
	}
	spec.Preloader.retries.Add(1)
	r.log.Warn("fork request caught in the hand-off to a preloader that died: retried on a fresh cell", "route", spec.Preloader.cfg.Route, "err", err)
	spec.Timeout = left
	return r.run(ctx, spec)
}

// rewind puts a request's stdin back at its start; false when it cannot.
func rewind(in io.Reader) bool {
	if in == nil {
		return true
	}
	s, ok := in.(io.Seeker)
	if !ok {
		return false
	}
	_, err := s.Seek(0, io.SeekStart)
	return err == nil
}
