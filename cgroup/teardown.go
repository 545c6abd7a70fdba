package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// sweep kills and removes every group under cells/ (leftovers of a crashed
// run: cells, tenants, probe), deepest first. It returns how many it
// removed and, one error each, the groups it left: those still holding a
// process when ctx ended (one in uninterruptible sleep on a hung NFS or
// FUSE mount outlives any kill), with their ancestors, which cannot go
// before them. Their siblings are swept all the same: every leftover is
// killed first, so a group that never empties costs the sweep its time
// once, not each group after it. Any other failure ends the sweep with
// an error. A cells/ that is gone already has nothing left to remove.
func (t *Tree) sweep(ctx context.Context) (int, []error, error) {
	ents, err := os.ReadDir(t.cells)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("read %s: %w", t.cells, err)
	}
	for _, e := range ents {
		if e.IsDir() {
			killTree(filepath.Join(t.cells, e.Name()))
		}
	}
	n := 0
	var left, errs []error
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		m, l, err := t.sweepSubtree(ctx, filepath.Join(t.cells, e.Name()))
		n += m
		left = append(left, l...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return n, left, errors.Join(errs...)
}

// killTree writes cgroup.kill of the group at dir, which kills every
// process of its subtree; a failure is left to the removal that follows,
// which kills each group again and reports it.
func killTree(dir string) {
	fd, err := openDir(dir)
	if err != nil {
		return
	}
	_ = writeAt(fd, "cgroup.kill", "1")
	unix.Close(fd)
}

// sweepSubtree removes the groups of dir's subtree, deepest first, as
// removeSubtree says; a group that does not empty before ctx ends is left
// (returned in the list, with ctx's cause), and so is every group holding
// one, while the rest of the subtree is removed.
func (t *Tree) sweepSubtree(ctx context.Context, dir string) (int, []error, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("read %s: %w", dir, err)
	}
	n := 0
	var left []error
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		m, l, err := t.sweepSubtree(ctx, filepath.Join(dir, e.Name()))
		n += m
		left = append(left, l...)
		if err != nil {
			return n, left, err
		}
	}
	if len(left) > 0 {
		return n, left, nil // dir holds them
	}
	fd, err := openDir(dir)
	if errors.Is(err, unix.ENOENT) {
		return n, nil, nil // gone since it was listed
	}
	if err != nil {
		return n, nil, err
	}
	defer unix.Close(fd)
	err = removeGroup(ctx, t.ops, &Cell{path: dir, fd: fd})
	switch {
	case err == nil:
		return n + 1, nil, nil
	case errors.Is(err, context.Canceled):
		return n, nil, err // the caller gave up (serve stopping)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, ErrBusy):
		return n, []error{err}, nil
	}
	return n, nil, err
}

// removeSubtree removes the descendants of the group at dir deepest
// first, then dir; each group still populated is killed (cgroup.kill) and
// waited for before its rmdir. It returns how many groups it removed, and
// sweepSubtree's groups left as its error. A group gone meanwhile
// (removed by another: a preloader instance's end) is done with,
// whenever it went.
func (t *Tree) removeSubtree(ctx context.Context, dir string) (int, error) {
	n, left, err := t.sweepSubtree(ctx, dir)
	return n, errors.Join(append(left, err)...)
}

// Close kills and removes everything cellgate created under cells/ (cells
// still handed out included), cells/ itself, and a private base that Open
// created. The supervisor group stays: the daemon is still in it, and
// moving it back would mean disabling the base's controllers for a process
// that is about to exit; the service manager (or the container's cgroup
// namespace) removes the group after the process is gone, and the next
// Open reuses it. Close the Pool first.
func (t *Tree) Close() error {
	t.budgetMu.Lock() // a budget change ends first: none writes after
	t.mu.Lock()
	closed := t.closed
	t.closed = true
	t.tenants = map[string]*Tenant{}
	t.mu.Unlock()
	t.budgetMu.Unlock()
	if closed {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.sweepTime)
	defer cancel()
	_, errs, err := t.sweep(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	if err := rmdirRetry(ctx, t.ops, t.cells); err != nil {
		errs = append(errs, err)
	}
	if t.createdB {
		if err := rmdirRetry(ctx, t.ops, t.base); err != nil {
			errs = append(errs, err)
		}
	}
	// The lock goes last: until the tree is gone, a new daemon on this
	// base must not start sweeping it.
	if t.lockFD >= 0 {
		unix.Close(t.lockFD)
		t.lockFD = -1
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close cgroup tree %s: %w", t.base, err)
	}
	return nil
}

// removeGroup empties and removes the leaf group c (the cell's own fds
// stay open; the caller closes them). The rmdir comes first: the kernel
// refuses it (EBUSY) while the group holds a process, and a request's
// group is empty by its removal almost always (its request ended once
// it was), so that removing one costs no read of its cgroup.events
// (~0.2 ms of emulated CPU per request in the microVM).
func removeGroup(ctx context.Context, ops dirOps, c *Cell) error {
	switch err := ops.rmdir(c.path); {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case !errors.Is(err, unix.EBUSY):
		return fmt.Errorf("rmdir %s: %w", c.path, err)
	}
	p, err := c.Populated()
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) {
		// The group is gone already (Tree.Close swept it): ENOENT by
		// name, ENODEV through a held fd.
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", c.path, err)
	}
	if p {
		if err := c.killWait(ctx); err != nil {
			return fmt.Errorf("remove %s: %w", c.path, err)
		}
	}
	return rmdirRetry(ctx, ops, c.path)
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
