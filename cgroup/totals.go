package cgroup

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// Stats reads the tenant group's totals (cpu.stat, memory.events,
// memory.current), relative to its directory opened once per call: it is
// for metrics, off the hot path. A raw reader rather than
// containerd/cgroups' Stat: that one reads ~40 files we do not need and
// reports absent files as zeros. A group removed before or while it is
// read (its tenant dropped by a reload) is an error wrapping unix.ENOENT
// (errors.Is fs.ErrNotExist), not totals of zeros.
func (g *Tenant) Stats() (TenantStats, error) {
	removed := fmt.Errorf("read the totals of tenant group %s: the group was removed: %w", g.path, unix.ENOENT)
	fd, err := openDir(g.path)
	if errors.Is(err, unix.ENOENT) {
		return TenantStats{}, removed
	}
	if err != nil {
		return TenantStats{}, fmt.Errorf("read the totals of tenant group %s: %w", g.path, err)
	}
	defer unix.Close(fd)
	var s TenantStats
	var errs []error
	gone := false // a file read as its group was removed (ENODEV)
	read := func(name string) []byte {
		b, err := readAt(fd, name)
		switch {
		case errors.Is(err, unix.ENOENT):
			s.Missing = append(s.Missing, name)
			return nil
		case errors.Is(err, unix.ENODEV):
			gone = true
			return nil
		case err != nil:
			errs = append(errs, fmt.Errorf("read %s in %s: %w", name, g.path, err))
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
			errs = append(errs, fmt.Errorf("read %s in %s: %w", name, g.path, err))
			return
		}
		var miss []string
		for k, dst := range fields {
			if v, ok := m[k]; ok {
				*dst = v
			} else {
				miss = append(miss, name+":"+k)
			}
		}
		slices.Sort(miss)
		s.Missing = append(s.Missing, miss...)
	}
	keyed("cpu.stat", map[string]*uint64{
		"usage_usec": &s.CPUUsageUsec, "user_usec": &s.CPUUserUsec, "system_usec": &s.CPUSystemUsec,
		"nr_throttled": &s.NrThrottled, "throttled_usec": &s.ThrottledUsec,
	})
	keyed("memory.events", map[string]*uint64{
		"max": &s.MemoryMax, "oom": &s.OOM, "oom_kill": &s.OOMKill, "oom_group_kill": &s.OOMGroupKill,
	})
	if b := read("memory.current"); b != nil {
		v, err := parseSingle(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("read memory.current in %s: %w", g.path, err))
		}
		s.MemoryCurrent = v
	}
	// A file missing is a controller not enabled, or the group removed
	// since it was opened: every group has cgroup.procs until then.
	if gone || len(s.Missing) > 0 {
		if err := unix.Faccessat(fd, "cgroup.procs", unix.F_OK, 0); errors.Is(err, unix.ENOENT) {
			return TenantStats{}, removed
		}
	}
	return s, errors.Join(errs...)
}

// TreeStats is <base>/cells/cgroup.stat (4.14): how many groups live under
// cells/, and how many removed ones the kernel still holds. Dying groups
// pile up when cells leave page cache behind (a shared writable tmpfs),
// still holding memory (Documentation/admin-guide/cgroup-v2.rst, "Core
// Interface Files", cgroup.stat, and "Memory Ownership"); watch
// NrDyingDescendants.
type TreeStats struct {
	NrDescendants      uint64
	NrDyingDescendants uint64
}

// Stats reads <base>/cells/cgroup.stat.
func (t *Tree) Stats() (TreeStats, error) {
	path := filepath.Join(t.cells, "cgroup.stat")
	b, err := readFile(path)
	if err != nil {
		return TreeStats{}, fmt.Errorf("read %s: %w", path, err)
	}
	m, err := parseFlatKeyed(b)
	if err != nil {
		return TreeStats{}, fmt.Errorf("read %s: %w", path, err)
	}
	s := TreeStats{NrDescendants: m["nr_descendants"], NrDyingDescendants: m["nr_dying_descendants"]}
	for _, k := range []string{"nr_descendants", "nr_dying_descendants"} {
		if _, ok := m[k]; !ok {
			return s, fmt.Errorf("read %s: no %s key", path, k)
		}
	}
	return s, nil
}

// TenantStats are a tenant group's totals: hierarchical, so they keep
// counting what removed cells used (Documentation/admin-guide/cgroup-v2.rst,
// "Memory Interface Files", memory.events: "all fields in this file are
// hierarchical"; kernel/cgroup/rstat.c css_rstat_exit, before 6.16
// cgroup_rstat_exit, flushes a freed group's cpu.stat into its parent).
// Missing names absent files or keys, as in Usage.
type TenantStats struct {
	CPUUsageUsec  uint64
	CPUUserUsec   uint64
	CPUSystemUsec uint64
	NrThrottled   uint64
	ThrottledUsec uint64

	MemoryCurrent uint64
	MemoryMax     uint64 // memory.events "max"
	OOM           uint64
	OOMKill       uint64
	OOMGroupKill  uint64

	Missing []string
}
