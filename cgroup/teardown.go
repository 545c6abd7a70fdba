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
// run: cells, tenants, probe), deepest first, and returns how many it
// removed. A cells/ that is gone already has nothing left to remove.
func (t *Tree) sweep(ctx context.Context) (int, error) {
	ents, err := os.ReadDir(t.cells)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", t.cells, err)
	}
	n := 0
	var errs []error
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		m, err := t.removeSubtree(ctx, filepath.Join(t.cells, e.Name()))
		n += m
		if err != nil {
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// removeSubtree removes the descendants of the group at dir deepest
// first, then dir; each group still populated is killed (cgroup.kill) and
// waited for before its rmdir. It returns how many groups it removed. A
// group gone meanwhile (removed by another: a preloader instance's end)
// is done with, whenever it went.
func (t *Tree) removeSubtree(ctx context.Context, dir string) (int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, fmt.Errorf("read %s: %w", dir, err)
	}
	n := 0
	for _, e := range ents {
		if e.IsDir() {
			m, err := t.removeSubtree(ctx, filepath.Join(dir, e.Name()))
			n += m
			if err != nil {
				return n, err
			}
		}
	}
	fd, err := openDir(dir)
	if errors.Is(err, unix.ENOENT) {
		return n, nil // gone since it was listed
	}
	if err != nil {
		return n, err
	}
	defer unix.Close(fd)
	if err := removeGroup(ctx, t.ops, &Cell{path: dir, fd: fd}); err != nil {
		return n, err
	}
	return n + 1, nil
}

// Close kills and removes everything cellgate created under cells/ (cells
// still handed out included), cells/ itself, and a private base that Open
// created. The supervisor group stays: the daemon is still in it, and
// moving it back would mean disabling the base's controllers for a process
// that is about to exit; the service manager (or the container's cgroup
// namespace) removes the group after the process is gone, and the next
// Open reuses it. Close the Pool first.
func (t *Tree) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.tenants = map[string]*Tenant{}
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), t.sweepTime)
	defer cancel()
	var errs []error
	if _, err := t.sweep(ctx); err != nil {
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
