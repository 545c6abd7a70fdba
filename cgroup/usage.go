package cgroup

import (
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// Usage is what one cell consumed, read from the kernel at the end of the
// cell. Fields the kernel does not provide (a controller not enabled, a file
// absent on an older kernel) are zero; Missing names those files ("pids.peak")
// or keys ("memory.events:oom_group_kill").
type Usage struct {
	CPUUsageUsec  uint64 `json:"cpu_usage_usec"`
	CPUUserUsec   uint64 `json:"cpu_user_usec"`
	CPUSystemUsec uint64 `json:"cpu_system_usec"`
	NrThrottled   uint64 `json:"nr_throttled"`
	ThrottledUsec uint64 `json:"throttled_usec"`

	MemoryPeak   uint64 `json:"memory_peak_bytes"` // memory.peak (5.19)
	MemoryMax    uint64 `json:"memory_events_max"` // memory.events "max": times usage hit memory.max
	OOM          uint64 `json:"memory_events_oom"`
	OOMKill      uint64 `json:"oom_kill"`
	OOMGroupKill uint64 `json:"oom_group_kill"`

	PidsPeak uint64 `json:"pids_peak"`       // pids.peak (6.1)
	PidsMax  uint64 `json:"pids_events_max"` // pids.events "max": forks refused by pids.max

	IOReadBytes  uint64 `json:"io_read_bytes"`
	IOWriteBytes uint64 `json:"io_write_bytes"`

	// Missing lists the accounting files that could not be read (absent on
	// this kernel or controller not enabled), so a zero is never mistaken
	// for a measurement.
	Missing []string `json:"missing,omitempty"`
}

// OOMKilled reports whether the kernel OOM-killed anything in the cell.
// memory.events oom_kill counts a group-killed victim twice (once as the
// victim, once in the group-kill pass), so it is a flag, not a count.
func (u Usage) OOMKilled() bool { return u.OOMKill > 0 || u.OOMGroupKill > 0 }

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
