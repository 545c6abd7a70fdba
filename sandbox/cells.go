package sandbox

import (
	"context"
	"log/slog"
	"time"

	"github.com/cellgate/cellgate/cgroup"
)

// Cells is where a Runner takes its cells from. In the daemon it is the
// cgroup package's pool (see PoolCells); unit tests use a fake that needs no
// cgroupfs.
type Cells interface {
	// Get returns a fresh, empty cell of the profile (under its tenant's
	// group, with its limits written), or an error when none can be had
	// before ctx ends.
	Get(ctx context.Context, prof *cgroup.Profile) (Cell, error)
	// Release hands a used cell back for removal. The Runner calls it once
	// per cell, after the cell is empty (or after it gave up waiting).
	Release(Cell)
}

// Recycler is a Cells that can take a used, empty cell back for a later
// request of its profile rather than remove it (cgroup.Pool.Recycle,
// which hands on only cells of a Reused profile).
type Recycler interface {
	Recycle(Cell)
}

// Cell is one short-lived cgroup, used for one run (or, handed back with
// Recycler.Recycle, for one run at a time).
type Cell interface {
	// FD is an open directory fd of the cell's cgroup, for
	// SysProcAttr.CgroupFD. A negative FD means the cell has no cgroup (a
	// test fake): the worker is then spawned without CLONE_INTO_CGROUP.
	FD() int
	// Path is the cell's cgroup directory, for messages and logs.
	Path() string
	// Kill kills every process in the cell at once (cgroup.kill).
	Kill() error
	// Populated reports whether any process is still in the cell
	// (cgroup.events populated).
	Populated() (bool, error)
	// WaitEmpty returns once the cell has no process left.
	WaitEmpty(ctx context.Context) error
	// Usage reads what the cell consumed; call it once the cell is empty.
	Usage() (cgroup.Usage, error)
	// CPUBefore is the CPU (cpu.stat usage_usec) the cell's earlier
	// requests used, which Usage leaves out: 0 but for a reused group.
	CPUBefore() uint64
	// Unenforced lists the controllers whose limits this cell does not
	// enforce (the operator's --unenforced, or a host without them).
	Unenforced() []string
}

// PoolCells is the production cell source: cells from the daemon's
// cgroup.Pool, handed back to it for removal in the background.
type PoolCells struct{ Pool *cgroup.Pool }

// Get takes a ready cell of prof from the pool.
func (p PoolCells) Get(ctx context.Context, prof *cgroup.Profile) (Cell, error) {
	c, err := p.Pool.Get(ctx, prof)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Release hands the cell back to the pool, which kills what is left,
// waits for it to empty and removes it.
func (p PoolCells) Release(c Cell) { p.Pool.Release(c.(*cgroup.Cell)) }

// Recycle hands the cell back to the pool to be readied for a later
// request of its profile (cgroup.Pool.Recycle).
func (p PoolCells) Recycle(c Cell) { p.Pool.Recycle(c.(*cgroup.Cell)) }

var _ Cell = (*cgroup.Cell)(nil)

// TreeCells creates each cell when asked and removes it on Release, with
// no pool and no background work: for one-shot users (cellgate run, the
// doctor's probe). RemoveTimeout bounds a removal (0 = 5s).
type TreeCells struct {
	Tree          *cgroup.Tree
	RemoveTimeout time.Duration
	// Logger receives removal failures (nil = discard).
	Logger *slog.Logger
}

// Get creates a cell of prof now.
func (t TreeCells) Get(ctx context.Context, prof *cgroup.Profile) (Cell, error) {
	c, err := t.Tree.NewCell(prof)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Release removes the cell before returning.
func (t TreeCells) Release(c Cell) {
	d := t.RemoveTimeout
	if d <= 0 {
		d = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := c.(*cgroup.Cell).Remove(ctx); err != nil && t.Logger != nil {
		t.Logger.Error("remove cell", "cell", c.Path(), "err", err)
	}
}
