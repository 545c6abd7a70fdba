package sandbox

import "github.com/cellgate/cellgate/cgroup"

// classify decides why a cell ended, from facts only: how the main process
// ended, whether cellgate killed the cell (killedBy: CauseDeadline,
// CauseKilled, or "" when it did not) and the kernel's counters. It never
// guesses an OOM kill from SIGKILL: only memory.events says the kernel
// OOM-killed something.
//
// Precedence: a zero exit status is a success whatever else happened (a
// daemon killed after the worker answered is cleanup, not failure); then the
// kernel's OOM kill, at the cell's own limit or an ancestor's (the root cause even when a deadline fired while the cell
// was dying); then cellgate's own kill (deadline before cancellation, as the
// first to fire is recorded); then a fork refused by pids.max, when the
// worker failed; then a signal, then a non-zero status.
func classify(st exitStatus, killedBy Cause, u cgroup.Usage) Cause {
	switch {
	case st.signal == 0 && st.code == 0:
		return CauseOK
	case u.OOMKilled() && u.OOM == 0:
		// The limit that was hit is an ancestor's: the oom event is
		// counted where the limit is, the oom_kill where the victim is.
		return CauseOOMBudget
	case u.OOMKilled():
		return CauseOOM
	case killedBy != "":
		return killedBy
	case u.PidsMax > 0:
		return CausePids
	case st.signal != 0:
		return CauseSignal
	default:
		return CauseExit
	}
}
