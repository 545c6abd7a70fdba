package sandbox

import "errors"

// Errors callers branch on (errors.Is). Each is wrapped with the operation and
// the value or path that failed.
var (
	// ErrSpec: the Spec is unusable (no program, a malformed environment
	// entry). Nothing was started.
	ErrSpec = errors.New("invalid spec")
	// ErrNoCell: the cell source could not give a cell (pool exhausted,
	// cgroupfs error, context ended while waiting). Nothing was started.
	ErrNoCell = errors.New("no cell available")
	// ErrNoUID: every uid of the configured range belongs to a cell still in
	// flight. Nothing was started; retry later or widen the range.
	ErrNoUID = errors.New("no free uid in range")
	// ErrSpawn: the worker could not be started (exec failed, clone3 refused
	// the cgroup). The wrapped error is an *os.PathError naming the program;
	// errors.Is(err, fs.ErrNotExist) and fs.ErrPermission tell the common
	// cases apart.
	ErrSpawn = errors.New("cannot start worker")
	// ErrStreams: the worker ran, but copying its stdin, stdout or stderr
	// failed or did not finish within the grace period after the cell
	// emptied. The Result returned alongside is complete.
	ErrStreams = errors.New("worker streams")
	// ErrCellNotEmpty: the cell still had processes after cgroup.kill and
	// the wait for it to empty gave up (processes stuck in the kernel). The
	// Result is complete; the cell's uid is kept out of circulation.
	ErrCellNotEmpty = errors.New("cell did not empty after kill")
	// ErrNoPreloader: a fork route's preloader is not ready (being
	// restarted, or stopped) and did not become ready within its wait, or
	// failed on its socket mid-request before the request's child could
	// run: the spawn never reached it, or the child was ended still with
	// the preloader's credentials. Nothing of the request ran; it may be
	// sent again.
	ErrNoPreloader = errors.New("no preloader ready")
	// ErrPreloaderLost: a fork route's preloader died (or broke, or did not
	// answer in time) after it read the request's spawn, and the child it
	// may have cloned could not be shown never to have run, or it answered
	// the spawn against the protocol: the request may have run, in part or
	// whole. Its cell was killed and the preloader replaced; the request
	// is not sent again, and must not be answered as one never processed.
	ErrPreloaderLost = errors.New("preloader lost after it took the request, which may have run")
	// ErrRequestTooLarge: a fork route's request does not fit in one
	// spawn message to its preloader (its meta-variables: the query, the
	// headers). Nothing was started; the preloader carries on.
	ErrRequestTooLarge = errors.New("request too large for the preloader's socket")
)
