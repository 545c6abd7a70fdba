package sandbox

import (
	"context"
	"errors"
	"io"
	"time"
)

// runOnceMore is run, and run once more when the first attempt failed
// with an error wrapping neverRan (a sentinel saying that nothing of the
// request ran: errNeverRan, errInitGone), its stream copiers all ended
// (not errCopiersLeft), and again allows; retrying is told of the first
// attempt's error before the second (runFork, runWarm).
func (r *Runner) runOnceMore(ctx context.Context, spec Spec, neverRan error, retrying func(err error)) (Result, error) {
	t0 := time.Now()
	res, err := r.run(ctx, spec)
	if !mayRunAgain(err, neverRan) || !r.again(ctx, &spec, t0) {
		return res, err
	}
	retrying(err)
	return r.run(ctx, spec)
}

// mayRunAgain reports whether an attempt that failed with err may be run
// again: nothing of it ran (err wraps neverRan) and its stream copiers
// all ended (err does not wrap errCopiersLeft).
func mayRunAgain(err, neverRan error) bool {
	return errors.Is(err, neverRan) && !errors.Is(err, errCopiersLeft)
}

// again readies spec for a second attempt of a request that nothing ran
// of, its first having started at t0 (runFork, runWarm): the second gets
// what is left of the deadline (spec.Timeout, or the Runner's) and the
// request's stdin rewound. false: not again, because ctx has ended,
// nothing is left of the deadline, or the stdin cannot be rewound
// (cellgate spools a body before the worker starts: none, memory, or a
// file, which can).
func (r *Runner) again(ctx context.Context, spec *Spec, t0 time.Time) bool {
	if ctx.Err() != nil {
		return false
	}
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = r.timeout
	}
	left := timeout - time.Since(t0)
	if left <= 0 || !rewind(spec.Stdin) {
		return false
	}
	spec.Timeout = left
	return true
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
