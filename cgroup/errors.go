package cgroup

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinels for what callers branch on. Errors returned by this package wrap
// one of these (or a unix.Errno) so errors.Is works; messages carry the
// operation, the path or value and, where there is one, the remedy.
var (
	// ErrControllerMissing: a controller the limits need is not available
	// or not enabled in the delegated subtree. The concrete error is a
	// *ControllerMissingError naming the controller.
	ErrControllerMissing = errors.New("cgroup controller missing")
	// ErrNotDelegated: cellgate cannot own the subtree (the group is shared
	// with other processes, cgroupfs is read-only, writes are refused).
	ErrNotDelegated = errors.New("cgroup subtree not delegated to cellgate")
	// ErrUnsupported: the kernel lacks a feature cellgate needs
	// (cgroup.kill, 5.14).
	ErrUnsupported = errors.New("cgroup feature not supported by this kernel")
	// ErrInvalidName: a tenant or cell name fails the validator.
	ErrInvalidName = errors.New("invalid cgroup name")
	// ErrInvalidLimit: a limit the kernel would reject or cgroup v2 cannot
	// express. The concrete error is a *LimitError.
	ErrInvalidLimit = errors.New("invalid limit")
	// ErrTooManyCells: the kernel refused a new group (EAGAIN from
	// cgroup.max.descendants or cgroup.max.depth, ENOSPC). The errno is
	// wrapped too.
	ErrTooManyCells = errors.New("cannot create more cgroups")
	// ErrBusy: a group could not be removed because it still has processes
	// or children.
	ErrBusy = errors.New("cgroup busy")
	// ErrBaseInUse: another live process owns the base group (holds its
	// lock). The concrete error is a *BaseInUseError naming its pid.
	ErrBaseInUse = errors.New("cgroup base in use")
	// ErrNotRestored: a change of budgets (Tree.SetBudgets) failed and
	// undoing it failed too: a file keeps the value the change wrote, or
	// a group it created stays. The error names the file and the value.
	ErrNotRestored = errors.New("budget change not undone")
	// ErrClosed: the Tree or Pool was closed.
	ErrClosed = errors.New("cgroup tree closed")
)

// remedy is appended to errors an operator must fix outside cellgate.
const remedy = "give cellgate a delegated cgroup of its own: under systemd set Delegate=yes " +
	"and DelegateSubgroup=supervisor on the unit; in a container use a private cgroup namespace " +
	"with a writable cgroupfs; or name a private base directory; run cellgate doctor for details"

// ControllerMissingError says which controller is missing where, and what
// needed it.
type ControllerMissingError struct {
	Controller string // "memory", "cpu", "pids", "io", ...
	// Others are more controllers missing at the same place, so that one
	// attempt names them all.
	Others []string
	Path   string // the group whose cgroup.controllers lacks it
	Need   string // what needed it, e.g. the file "memory.max"
}

func (e *ControllerMissingError) Error() string {
	need := ""
	if e.Need != "" {
		need = " (needed for " + e.Need + ")"
	}
	all := append([]string{e.Controller}, e.Others...)
	what := fmt.Sprintf("controller %q is", e.Controller)
	if len(all) > 1 {
		what = fmt.Sprintf("controllers %s are", strings.Join(all, ", "))
	}
	list := strings.Join(all, ",")
	return fmt.Sprintf("%s not available in %s%s: enable them for cellgate's subtree "+
		"(systemd: Delegate=yes or Delegate=%s), or start cellgate with --unenforced %s; run cellgate doctor",
		what, e.Path, need, strings.ReplaceAll(list, ",", " "), list)
}

// Is makes errors.Is(err, ErrControllerMissing) true.
func (e *ControllerMissingError) Is(target error) bool { return target == ErrControllerMissing }

// LimitError names a limit field and the value that cannot be applied.
type LimitError struct {
	Field  string // the OCI field, e.g. "memory.swap" or "unified[memory.high]"
	Value  string
	Reason string
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("invalid limit %s=%s: %s", e.Field, e.Value, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidLimit) true.
func (e *LimitError) Is(target error) bool { return target == ErrInvalidLimit }
