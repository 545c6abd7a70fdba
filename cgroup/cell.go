package cgroup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Cell is one request's cgroup: a leaf under <base>/cells/<tenant>/, with
// its profile's limits written, used for one worker and then removed. Its
// directory fd stays open for the cell's life so the worker can be started
// inside it with SysProcAttr{UseCgroupFD: true, CgroupFD: c.FD()} and every
// control file is reached with openat, never by path.
//
// A cell made by NewCell also holds its cgroup.events, cgroup.kill and
// accounting files open from creation (off the hot path, in the Pool's
// refiller) to Remove, so the end of a request is one pread per file:
// no openat, no close, no EOF read. Files the Tree learned at start-up to
// be absent are not opened and go straight to Usage.Missing. That is up
// to cellFDs fds per cell, idle or in use (see PoolOptions.MaxIdle).
//
// A Cell is used by one goroutine at a time; Remove (or Pool.Release) must
// be called exactly once.
type Cell struct {
	name       string
	tenant     string
	path       string
	fd         int
	key        ProfileKey
	unenforced []string
	ops        dirOps

	// held is set when the files below were opened at creation; when it
	// is not (the start-up sweep, the probe), each access opens the file
	// by name through fd.
	held   bool
	events int        // cgroup.events
	kill   int        // cgroup.kill, -1 when absent (kernel < 5.14)
	acct   [nAcct]int // acctFiles, -1 when absent
	// current is memory.current, opened at the cell's first readying for
	// another request (checkCharged) and held from then on; -1 before.
	current int

	// A cell handed back with Pool.Recycle serves further requests of
	// its profile. base is what its counters held when it was readied for
	// the current request, subtracted by Usage; uses counts the requests
	// before the current one; peakRW says memory.peak is held open for
	// writing, so that the reset (6.12) makes its peak the request's own.
	// recycle marks a cell queued by Recycle rather than Release.
	base    Usage
	uses    int
	peakRW  bool
	recycle bool
	charged uint64 // the most it may hold charged to be handed on (plan.charged)
	// ended is the reading UsageEnded took of the emptied cell, which
	// the readying takes as the next base; nil once taken, or when the
	// last reading was not of an emptied cell.
	ended *Usage
	// killed is set once cgroup.kill was written (Kill): Linux (6.1.172
	// and 6.18 among the kernels the kill count went to) SIGKILLs at birth every
	// process then cloned into the group with CLONE_INTO_CGROUP:
	// cgroup_css_set_fork takes the kill count of the parent's group,
	// and cgroup_post_fork compares it with the group's own. A killed
	// cell is never readied for another request (ready, errKilled).
	killed atomic.Bool

	mu      sync.Mutex
	removed bool
}

// cellFDs is the most fds a cell holds: its directory, cgroup.events,
// cgroup.kill, the accounting files and, once recycled, memory.current.
const cellFDs = 4 + nAcct

// Name is the cell's directory name (unique for the Tree's life and
// across restarts).
func (c *Cell) Name() string { return c.name }

// Tenant is the tenant group the cell lives in.
func (c *Cell) Tenant() string { return c.tenant }

// Path is the cell's directory on cgroupfs, for logs and errors.
func (c *Cell) Path() string { return c.path }

// FD is the cell's open directory fd, for SysProcAttr.CgroupFD with
// UseCgroupFD (clone3 CLONE_INTO_CGROUP). It is close-on-exec, and valid
// until Remove or Release.
func (c *Cell) FD() int { return c.fd }

// Profile is the key of the profile the cell was made for.
func (c *Cell) Profile() ProfileKey { return c.key }

// Unenforced lists the controllers whose limits were not written for this
// cell because the operator allowed running without them; empty in normal
// operation.
func (c *Cell) Unenforced() []string { return slices.Clone(c.unenforced) }

// Kill writes cgroup.kill (5.14): every process in the cell gets SIGKILL at
// once, forks racing with the kill included. It does not wait; see
// WaitEmpty.
func (c *Cell) Kill() error {
	var err error
	switch {
	case !c.held:
		err = writeAt(c.fd, "cgroup.kill", "1")
	case c.kill < 0:
		err = unix.ENOENT
	default:
		err = writeFD(c.kill, "1")
	}
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("write cgroup.kill=1 in %s: %w (needs Linux 5.14): %w", c.path, ErrUnsupported, err)
		}
		return fmt.Errorf("write cgroup.kill=1 in %s: %w", c.path, err)
	}
	c.killed.Store(true)
	return nil
}

// Procs lists the processes in the cell (cgroup.procs).
func (c *Cell) Procs() ([]int, error) {
	b, err := readAt(c.fd, "cgroup.procs")
	if err != nil {
		return nil, fmt.Errorf("read cgroup.procs in %s: %w", c.path, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("read cgroup.procs in %s: %q is no pid", c.path, f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// Populated reads cgroup.events once: whether any process is still in the
// cell.
func (c *Cell) Populated() (bool, error) {
	var b []byte
	var err error
	if c.held {
		b, err = preadWhole(c.events)
	} else {
		b, err = readAt(c.fd, "cgroup.events")
	}
	if err != nil {
		return false, fmt.Errorf("read cgroup.events in %s: %w", c.path, err)
	}
	p, err := populated(b)
	if err != nil {
		return false, fmt.Errorf("read cgroup.events in %s: %w", c.path, err)
	}
	return p, nil
}

// Wait backoff for WaitEmpty: the kernel updates "populated" at once but
// notifies at most every 10 ms (kernel/cgroup/cgroup.c cgroup_file_notify,
// CGROUP_FILE_NOTIFY_MIN_INTV), so reading with a short backoff sees the
// change sooner than a notification would, without a thread blocked in poll
// per cell.
const (
	waitFirst = 50 * time.Microsecond
	waitMax   = 5 * time.Millisecond
)

// WaitEmpty returns when cgroup.events says populated 0, or with ctx's
// error (wrapped) when ctx ends first. Call it after Kill, or after the
// worker's pidfd reported exit (grandchildren may still be alive).
func (c *Cell) WaitEmpty(ctx context.Context) error {
	delay := waitFirst
	var timer *time.Timer
	for {
		p, err := c.Populated()
		if err != nil || !p {
			return err
		}
		if timer == nil {
			timer = time.NewTimer(delay)
			defer timer.Stop()
		} else {
			timer.Reset(delay)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to empty: %w", c.path, context.Cause(ctx))
		case <-timer.C:
		}
		delay = min(2*delay, waitMax)
	}
}

// Usage reads the cell's accounting into one Usage. Files that are absent
// (controller not enabled, older kernel) are listed in Usage.Missing; a
// file that cannot be read or parsed is an error, returned with whatever
// was read.
//
// For a cell that served requests before (Pool.Recycle), the counters are
// the current request's alone (what they gained since the cell was
// readied for it), and so is memory.peak where the kernel resets it
// (Features.MemoryPeakReset); pids.peak, and memory.peak on an older
// kernel, hold every request's and are left out, listed in Missing.
func (c *Cell) Usage() (Usage, error) { return c.reading(false) }

// UsageEnded is Usage of a cell whose processes have all ended (its
// caller waited for it to empty): its counters then stay where they are,
// so the reading is also where a recycled cell's next request starts
// from, and readying the cell for it (Pool.Recycle) takes it as its base
// instead of reading every file again.
func (c *Cell) UsageEnded() (Usage, error) { return c.reading(true) }

// reading is Usage, kept as the next base (c.ended) when ended.
func (c *Cell) reading(ended bool) (Usage, error) {
	raw, err := c.usage()
	c.ended = nil
	if ended && err == nil {
		c.ended = &raw
	}
	if c.uses > 0 {
		return raw.since(c.base, c.peakRW), err
	}
	return raw, err
}

// CPUBefore is the CPU (cpu.stat usage_usec) the cell's earlier requests
// used, which its Usage subtracts: 0 for a cell on its first request.
func (c *Cell) CPUBefore() uint64 { return c.base.CPUUsageUsec }

// usage reads the cell's accounting files as the kernel has them.
func (c *Cell) usage() (Usage, error) {
	return readUsage(c.path, func(i int, buf []byte) ([]byte, error) {
		if !c.held {
			return readAt(c.fd, acctFiles[i])
		}
		if c.acct[i] < 0 {
			return nil, unix.ENOENT
		}
		return preadInto(c.acct[i], buf)
	})
}

// Remove kills what is left in the cell, waits for it to empty (bounded by
// ctx), removes the directory and closes its fds. Removing twice is a
// no-op. On error the cell is left for the next start-up sweep, but its
// fds are closed.
func (c *Cell) Remove(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return nil
	}
	c.removed = true
	defer c.closeFDs()
	return removeGroup(ctx, c.ops, c)
}

// ReuseCharged bounds what a used cell may still have charged to it
// (memory.current, once empty: file pages its programs read, which the
// kernel reclaims under pressure) to be readied for another request: an
// eighth of its memory.max, and this much where it has none. A cell
// holding more is removed, so that what one request left never takes
// much of the next one's limit.
const ReuseCharged = 8 << 20

// errCharged: a used cell held more than a reuse allows (ReuseCharged).
var errCharged = errors.New("holds more memory charged than a reuse allows")

// errKilled: a used cell was killed (Cell.killed): what is cloned into it
// would be killed at birth.
var errKilled = errors.New("was killed (cgroup.kill): a process cloned into it would be killed at its start")

// ready readies a used cell for another request of its profile: it
// refuses one that was killed (errKilled; what is left is killed first,
// bounded by ctx, so that it can be removed), checks what is still
// charged to it (ReuseCharged), takes the figures its Usage will
// subtract (UsageEnded's reading), and resets memory.peak where it is
// held for writing.
// On error the cell is not to be reused: the caller removes it.
func (c *Cell) ready(ctx context.Context) error {
	ended := c.ended
	c.ended = nil
	p, err := c.Populated()
	if err != nil {
		return err
	}
	if p {
		if err := c.killWait(ctx); err != nil {
			return err
		}
	}
	if c.killed.Load() {
		return errKilled
	}
	if err := c.checkCharged(); err != nil {
		return err
	}
	var base Usage
	if ended != nil {
		base = *ended
	} else if base, err = c.usage(); err != nil {
		return err
	}
	if c.peakRW {
		if _, err := unix.Pwrite(c.acct[acctMemoryPeak], []byte("reset\n"), 0); err != nil {
			return fmt.Errorf("reset memory.peak in %s: %w", c.path, err)
		}
	}
	c.base, c.recycle = base, false
	c.uses++
	return nil
}

// checkCharged checks memory.current against the cell's bound (a cell
// without the memory controller passes).
func (c *Cell) checkCharged() error {
	b, err := c.readCurrent()
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read memory.current in %s: %w", c.path, err)
	}
	cur, err := parseSingle(b)
	if err != nil {
		return fmt.Errorf("read memory.current in %s: %w", c.path, err)
	}
	if cur > c.charged {
		return fmt.Errorf("cell %s: %w (memory.current %d, at most %d)", c.path, errCharged, cur, c.charged)
	}
	return nil
}

// readCurrent reads memory.current: through the fd held since the
// cell's first readying (a reused cell is readied after each request),
// or by name when the cell holds no files.
func (c *Cell) readCurrent() ([]byte, error) {
	if !c.held {
		return readAt(c.fd, "memory.current")
	}
	if c.current < 0 {
		fd, err := openat(c.fd, "memory.current", unix.O_RDONLY|unix.O_CLOEXEC)
		if err != nil {
			return nil, err
		}
		c.current = fd
	}
	return preadWhole(c.current)
}

// killWait kills what is in the cell and waits for it to empty (bounded
// by ctx).
func (c *Cell) killWait(ctx context.Context) error {
	if err := c.Kill(); err != nil {
		return err
	}
	return c.WaitEmpty(ctx)
}

// closeFDs closes the held files and the directory fd.
func (c *Cell) closeFDs() {
	if c.held {
		for _, fd := range append([]int{c.events, c.kill, c.current}, c.acct[:]...) {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}
	unix.Close(c.fd)
}

// openFiles opens the cell's cgroup.events, cgroup.kill and the accounting
// files the Tree did not find absent at start-up. A file absent now is
// recorded as such (-1); any other failure is an error, with what was
// opened left for closeFDs.
func (c *Cell) openFiles(absent *[nAcct]bool, peakReset bool) error {
	c.held = true
	c.events, c.kill, c.current = -1, -1, -1
	for i := range c.acct {
		c.acct[i] = -1
	}
	fd, err := openat(c.fd, "cgroup.events", unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open cgroup.events in %s: %w", c.path, err)
	}
	c.events = fd
	switch fd, err := openat(c.fd, "cgroup.kill", unix.O_WRONLY|unix.O_CLOEXEC); {
	case err == nil:
		c.kill = fd
	case !errors.Is(err, unix.ENOENT):
		return fmt.Errorf("open cgroup.kill in %s: %w", c.path, err)
	}
	for i, name := range acctFiles {
		if absent[i] {
			continue
		}
		mode := unix.O_RDONLY
		if i == acctMemoryPeak && peakReset {
			mode = unix.O_RDWR
		}
		switch fd, err := openat(c.fd, name, mode|unix.O_CLOEXEC); {
		case err == nil:
			c.acct[i] = fd
			c.peakRW = c.peakRW || mode == unix.O_RDWR
		case !errors.Is(err, unix.ENOENT):
			return fmt.Errorf("open %s in %s: %w", name, c.path, err)
		}
	}
	return nil
}

// NewCell creates a cell for prof now: mkdir, open its directory fd, write
// the profile's limits through the fd, open the files read or written at
// the end of the request. Each step is undone when a later
// one fails. Creation refused by the kernel's caps (EAGAIN, ENOSPC) wraps
// ErrTooManyCells. The caller removes the cell (Cell.Remove) when done;
// the Pool does all this off the hot path.
func (t *Tree) NewCell(prof *Profile) (*Cell, error) {
	c, err := t.newCell(prof)
	if err != nil {
		t.createErr.Store(&err)
		return nil, err
	}
	if t.createErr.Load() != nil {
		t.createErr.Store(nil)
	}
	return c, nil
}

func (t *Tree) newCell(prof *Profile) (*Cell, error) {
	p, err := t.profilePlan(prof)
	if err != nil {
		return nil, err
	}
	g, _, err := t.openTenant(prof.tenant)
	if err != nil {
		return nil, err
	}
	name := "c" + t.nonce + "-" + strconv.FormatUint(t.seq.Add(1), 36)
	dir := g.path + "/" + name
	if prof.group != "" {
		dir = g.path + "/" + prof.group + "/" + name
	}
	if err := t.ops.mkdir(dir); err != nil {
		return nil, mkdirError(dir, err)
	}
	fd, err := openDir(dir)
	if err != nil {
		t.ops.rmdir(dir)
		return nil, err
	}
	c := &Cell{name: name, tenant: prof.tenant, path: dir, fd: fd, key: prof.key, unenforced: p.unenforced, ops: t.ops, charged: p.charged}
	for _, x := range p.settings {
		if err := writeAt(fd, x.File, x.Value); err != nil {
			unix.Close(fd)
			t.ops.rmdir(dir)
			return nil, fmt.Errorf("write %s=%q in %s: %w", x.File, x.Value, dir, err)
		}
	}
	if prof.group != "" {
		// The route's preloader starts the cell's process (clone3
		// CLONE_INTO_CGROUP as its own uid): see RouteGroup.
		if err := chownProcs(dir, prof.owner); err != nil {
			unix.Close(fd)
			t.ops.rmdir(dir)
			return nil, err
		}
	}
	if err := c.openFiles(&t.acctAbsent, t.feat.MemoryPeakReset); err != nil {
		c.closeFDs()
		t.ops.rmdir(dir)
		return nil, err
	}
	return c, nil
}

// mkdirError wraps a failed group mkdir; the kernel's caps become
// ErrTooManyCells.
func mkdirError(dir string, err error) error {
	switch {
	case errors.Is(err, unix.EAGAIN):
		return fmt.Errorf("mkdir %s: %w: %w (cgroup.max.descendants or cgroup.max.depth reached)", dir, ErrTooManyCells, err)
	case errors.Is(err, unix.ENOSPC):
		return fmt.Errorf("mkdir %s: %w: %w", dir, ErrTooManyCells, err)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM), errors.Is(err, unix.EROFS):
		return fmt.Errorf("mkdir %s: %w: %w (%s)", dir, ErrNotDelegated, err, remedy)
	}
	return fmt.Errorf("mkdir %s: %w", dir, err)
}
