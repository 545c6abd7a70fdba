package cgroup

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// unlimited is what each control file Convert can write holds when nothing
// limits it, for resetting a limit dropped from a tenant's budget. Files
// with one entry per device (io.max, io.weight) are reset per entry by
// resetSetting.
var unlimited = map[string]string{
	"memory.max": "max", "memory.high": "max", "memory.low": "0", "memory.min": "0",
	"memory.swap.max": "max", "memory.oom.group": "0",
	"cpu.weight": "100", "cpu.max": "max", "cpu.max.burst": "0", "cpu.idle": "0",
	"pids.max":               "max",
	"cgroup.max.descendants": "max", "cgroup.max.depth": "max",
}

// updateWrites returns the writes that take a group from the budget old
// to next: every write of next, preceded by resets of what old wrote and
// next does not. Files it cannot reset are returned in unknown.
func updateWrites(old, next []Setting) (writes []Setting, unknown []string) {
	for _, o := range old {
		if slices.ContainsFunc(next, func(n Setting) bool { return sameTarget(o, n) }) {
			continue
		}
		r, ok := resetSetting(o)
		if !ok {
			unknown = append(unknown, o.File)
			continue
		}
		if !slices.Contains(writes, r) {
			writes = append(writes, r)
		}
	}
	return append(writes, next...), unknown
}

// sameTarget reports whether two writes set the same thing: the same file,
// and for per-device files the same device and key.
func sameTarget(a, b Setting) bool {
	if a.File != b.File {
		return false
	}
	switch a.File {
	case "io.max":
		ad, ak := ioMaxTarget(a.Value)
		bd, bk := ioMaxTarget(b.Value)
		return ad == bd && ak == bk
	case "io.weight":
		ad, _, _ := strings.Cut(a.Value, " ")
		bd, _, _ := strings.Cut(b.Value, " ")
		return ad == bd
	}
	return true
}

// ioMaxTarget splits "8:0 rbps=1000" into "8:0" and "rbps".
func ioMaxTarget(v string) (dev, key string) {
	dev, rest, _ := strings.Cut(v, " ")
	key, _, _ = strings.Cut(rest, "=")
	return dev, key
}

// resetSetting is the write that undoes s.
func resetSetting(s Setting) (Setting, bool) {
	switch {
	case s.File == "io.max":
		dev, key := ioMaxTarget(s.Value)
		return Setting{s.File, dev + " " + key + "=max"}, true
	case s.File == "io.weight":
		dev, _, _ := strings.Cut(s.Value, " ")
		if dev == "default" {
			return Setting{s.File, "default 100"}, true
		}
		return Setting{s.File, dev + " default"}, true
	case strings.HasPrefix(s.File, "hugetlb.") && strings.HasSuffix(s.File, ".max"):
		return Setting{s.File, "max"}, true
	}
	v, ok := unlimited[s.File]
	return Setting{s.File, v}, ok
}

// Stats reads the tenant group's totals (cpu.stat, memory.events,
// memory.current). It reads by path: it is for metrics, off the hot path.
// A raw reader rather than containerd/cgroups' Stat: that one reads ~40
// files we do not need and reports absent files as zeros.
func (g *Tenant) Stats() (TenantStats, error) {
	var s TenantStats
	var errs []error
	read := func(name string) []byte {
		b, err := readFile(filepath.Join(g.path, name))
		if errors.Is(err, unix.ENOENT) {
			s.Missing = append(s.Missing, name)
			return nil
		}
		if err != nil {
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
	return s, errors.Join(errs...)
}

// TreeStats is <base>/cells/cgroup.stat (4.14): how many groups live under
// cells/, and how many removed ones the kernel still holds. Dying groups
// pile up when cells leave page cache behind (a shared writable tmpfs),
// still holding memory (cgroup-facts §5.5); watch NrDyingDescendants.
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
