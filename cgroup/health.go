package cgroup

import (
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Health says whether this tree can still run cells, for a readiness
// probe: its cells/ group must still exist under the base this Tree
// locked (looked up through the locked directory descriptor, so a base
// removed and made again by someone else counts as gone), and the last
// attempt to create a cell must not have failed. nil means ready.
func (t *Tree) Health() error {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if t.lockFD >= 0 {
		err := unix.Faccessat(t.lockFD, filepath.Join(cellsDir, "cgroup.events"), unix.F_OK, 0)
		if err != nil {
			return fmt.Errorf("cgroup tree %s is gone (%w): cells cannot be created; restart cellgate", t.cells, err)
		}
	}
	if p := t.createErr.Load(); p != nil {
		err := *p
		if errors.Is(err, ErrClosed) {
			return err
		}
		return fmt.Errorf("the last cell could not be created: %w", err)
	}
	return nil
}
