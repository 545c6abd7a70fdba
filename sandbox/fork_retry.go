package sandbox

import "context"

// runFork is Run for a fork route. A request whose hand-off failed because
// its preloader died (or broke) after it cloned the request's child, and
// whose child was ended before it ran any of the request's code
// (errNeverRan, see forkDriver.start), is run once more, on a fresh cell,
// by the preloader's next instance: the supervisor restarts it, and the
// retry waits for it as any request does (WaitReady, and ctx). Only once,
// and only as again allows (a stdin that can be rewound, time left of the
// request's deadline).
func (r *Runner) runFork(ctx context.Context, spec Spec) (Result, error) {
	return r.runOnceMore(ctx, spec, errNeverRan, func(err error) {
		spec.Preloader.retries.Add(1)
		r.log.Warn("fork request caught in the hand-off to a preloader that died: retried on a fresh cell", "route", spec.Preloader.cfg.Route, "err", err)
	})
}
