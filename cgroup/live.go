package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Live is what a group uses right now, read while it runs (the status
// page's live figures), not the accounting at its end (Usage).
type Live struct {
	// MemoryCurrent is memory.current in bytes; nil when the memory
	// controller is not enabled for the group (nothing measured, not 0).
	MemoryCurrent *uint64
	// CPUUsageUsec is cpu.stat usage_usec so far (always present).
	CPUUsageUsec uint64
}

// ReadLive reads a running group's memory.current and cpu.stat by path.
// A group already removed gives an error wrapping os.ErrNotExist. Cell
// names are never reused, but a group of a route with groups: reused
// serves its requests one after another: a reading by the path of an
// ended request may be of the request after it (the status page's live
// figures for a moment; the accounting is never read by path).
func ReadLive(dir string) (Live, error) {
	var l Live
	b, err := readFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return l, fmt.Errorf("read cpu.stat in %s: %w", dir, err)
	}
	m, err := parseFlatKeyed(b)
	if err != nil {
		return l, fmt.Errorf("read cpu.stat in %s: %w", dir, err)
	}
	l.CPUUsageUsec = m["usage_usec"]
	b, err = readFile(filepath.Join(dir, "memory.current"))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return l, nil
	case err != nil:
		return l, fmt.Errorf("read memory.current in %s: %w", dir, err)
	}
	v, err := parseSingle(b)
	if err != nil {
		return l, fmt.Errorf("read memory.current in %s: %w", dir, err)
	}
	l.MemoryCurrent = &v
	return l, nil
}
