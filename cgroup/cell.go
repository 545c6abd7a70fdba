package cgroup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Cell is one request's cgroup: a leaf under <base>/cells/<tenant>/, with
// its profile's limits written, used for one worker and then removed. Its
// directory fd stays open for the cell's life so the worker can be started
// inside it with SysProcAttr{UseCgroupFD: true, CgroupFD: c.FD()} and every
// control file is reached with openat, never by path.
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

	mu      sync.Mutex
	removed bool
}

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
	if err := writeAt(c.fd, "cgroup.kill", "1"); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("write cgroup.kill=1 in %s: %w (needs Linux 5.14): %w", c.path, ErrUnsupported, err)
		}
		return fmt.Errorf("write cgroup.kill=1 in %s: %w", c.path, err)
	}
	return nil
}

// Populated reads cgroup.events once: whether any process is still in the
// cell.
func (c *Cell) Populated() (bool, error) {
	b, err := readAt(c.fd, "cgroup.events")
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
// notifies at most every 10 ms (cgroup-facts §5.6), so reading with a short
// backoff sees the change sooner than a notification would, without a
// thread blocked in poll per cell.
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
func (c *Cell) Usage() (Usage, error) { return readUsage(c.fd, c.path) }

// Remove kills what is left in the cell, waits for it to empty (bounded by
// ctx), removes the directory and closes the fd. Removing twice is a no-op.
// On error the cell is left for the next start-up sweep, but its fd is
// closed.
func (c *Cell) Remove(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return nil
	}
	c.removed = true
	defer unix.Close(c.fd)
	return removeGroup(ctx, c.ops, c.fd, c.path)
}

// removeGroup empties and removes the leaf group at path (dirfd fd).
func removeGroup(ctx context.Context, ops dirOps, fd int, path string) error {
	b, err := readAt(fd, "cgroup.events")
	if errors.Is(err, unix.ENOENT) {
		return nil // the group is gone already (Tree.Close swept it)
	}
	if err != nil {
		return fmt.Errorf("remove %s: read cgroup.events: %w", path, err)
	}
	p, err := populated(b)
	if err != nil {
		return fmt.Errorf("remove %s: read cgroup.events: %w", path, err)
	}
	if p {
		c := &Cell{path: path, fd: fd}
		if err := c.Kill(); err != nil {
			return fmt.Errorf("remove %s: %w", path, err)
		}
		if err := c.WaitEmpty(ctx); err != nil {
			return fmt.Errorf("remove %s: %w", path, err)
		}
	}
	return rmdirRetry(ctx, ops, path)
}

// rmdirRetry removes a group, retrying EBUSY (a group that just emptied can
// briefly still be busy on older kernels) with a short backoff bounded by
// ctx. A group that is already gone is not an error.
func rmdirRetry(ctx context.Context, ops dirOps, path string) error {
	delay := 100 * time.Microsecond
	for {
		err := ops.rmdir(path)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
			return nil
		case !errors.Is(err, unix.EBUSY):
			return fmt.Errorf("rmdir %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("rmdir %s: %w: %w (%w)", path, ErrBusy, err, context.Cause(ctx))
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Millisecond)
	}
}

// readUsage reads the accounting files of the group dirfd fd.
func readUsage(fd int, path string) (Usage, error) {
	var u Usage
	var errs []error
	// read returns the file's content, or nil after recording it as
	// missing (ENOENT) or failed.
	read := func(name string) []byte {
		b, err := readAt(fd, name)
		if errors.Is(err, unix.ENOENT) {
			u.Missing = append(u.Missing, name)
			return nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s in %s: %w", name, path, err))
			return nil
		}
		return b
	}
	keyed := func(name string, fields map[string]*uint64) {
		b := read(name)
		if b == nil {
			return
		}
		m, err := parseFlatKeyed(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s in %s: %w", name, path, err))
			return
		}
		keys := make([]string, 0, len(fields))
		for k := range fields {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			v, ok := m[k]
			if !ok {
				u.Missing = append(u.Missing, name+":"+k)
				continue
			}
			*fields[k] = v
		}
	}
	single := func(name string, dst *uint64) {
		b := read(name)
		if b == nil {
			return
		}
		v, err := parseSingle(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s in %s: %w", name, path, err))
			return
		}
		*dst = v
	}

	keyed("cpu.stat", map[string]*uint64{
		"usage_usec": &u.CPUUsageUsec, "user_usec": &u.CPUUserUsec, "system_usec": &u.CPUSystemUsec,
		"nr_throttled": &u.NrThrottled, "throttled_usec": &u.ThrottledUsec,
	})
	single("memory.peak", &u.MemoryPeak)
	keyed("memory.events", map[string]*uint64{
		"max": &u.MemoryMax, "oom": &u.OOM, "oom_kill": &u.OOMKill, "oom_group_kill": &u.OOMGroupKill,
	})
	single("pids.peak", &u.PidsPeak)
	keyed("pids.events", map[string]*uint64{"max": &u.PidsMax})
	if b := read("io.stat"); b != nil {
		r, w, err := ioTotals(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("read io.stat in %s: %w", path, err))
		}
		u.IOReadBytes, u.IOWriteBytes = r, w
	}
	return u, errors.Join(errs...)
}
