package cgroup

import (
	"bytes"
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
	// this kernel or controller not enabled), or whose figure is not the
	// request's own (a reused cell's peaks, Cell.Usage), so a zero is
	// never mistaken for a measurement.
	Missing []string `json:"missing,omitempty"`
}

// OOMKilled reports whether the kernel OOM-killed anything in the cell.
// memory.events oom_kill counts a group-killed victim twice (once as the
// victim, once in the group-kill pass), so it is a flag, not a count.
func (u Usage) OOMKilled() bool { return u.OOMKill > 0 || u.OOMGroupKill > 0 }

// acctFiles are the accounting files Usage reads, in the order their
// figures (and Missing entries) come.
var acctFiles = [...]string{"cpu.stat", "memory.peak", "memory.events", "pids.peak", "pids.events", "io.stat"}

const nAcct = len(acctFiles)

// counters are u's fields that only grow over a group's life (not the
// peaks), in one order for every Usage.
func (u *Usage) counters() [12]*uint64 {
	return [...]*uint64{&u.CPUUsageUsec, &u.CPUUserUsec, &u.CPUSystemUsec, &u.NrThrottled, &u.ThrottledUsec,
		&u.MemoryMax, &u.OOM, &u.OOMKill, &u.OOMGroupKill, &u.PidsMax, &u.IOReadBytes, &u.IOWriteBytes}
}

// The indexes in acctFiles of the peaks.
const (
	acctMemoryPeak = 1
	acctPidsPeak   = 3
)

// since is u less base, the figures read when a reused cell was readied
// for the current request: its counters are the request's own, and so is
// memory.peak if the kernel reset it then (peakReset); the other peaks
// (pids.peak, which no kernel resets) are every request's high water
// mark, so they are zero and listed in Missing, not mistaken for the
// request's.
func (u Usage) since(base Usage, peakReset bool) Usage {
	d := u
	b := base.counters()
	for i, v := range d.counters() {
		*v = max(*v, *b[i]) - *b[i] // never below the base: zero, not a wrapped-around figure
	}
	d.Missing = slices.Clone(u.Missing)
	drop := func(i int, dst *uint64) {
		*dst = 0
		if !slices.Contains(d.Missing, acctFiles[i]) {
			d.Missing = append(d.Missing, acctFiles[i])
		}
	}
	if !peakReset {
		drop(acctMemoryPeak, &d.MemoryPeak)
	}
	drop(acctPidsPeak, &d.PidsPeak)
	return d
}

// readUsage reads the accounting files through read, which returns a file's
// content by its index in acctFiles, or an error wrapping ENOENT when the
// file is absent (recorded in Missing, not an error).
// keyField is a key of a flat-keyed file and where its value goes.
type keyField struct {
	key string
	dst *uint64
}

func readUsage(path string, read func(i int, buf []byte) ([]byte, error)) (Usage, error) {
	var u Usage
	var errs []error
	var buf [1024]byte // every file but a large io.stat fits: one read each, nothing allocated
	bytesOf := func(i int) []byte {
		b, err := read(i, buf[:])
		if errors.Is(err, unix.ENOENT) {
			u.Missing = append(u.Missing, acctFiles[i])
			return nil
		}
		if err != nil {
			// Missing too: its figures were not measured, and a record
			// must not show them as zeros.
			u.Missing = append(u.Missing, acctFiles[i])
			errs = append(errs, fmt.Errorf("read %s in %s: %w", acctFiles[i], path, err))
			return nil
		}
		return b
	}
	// keyed reads a flat-keyed file's fields, given in the order of
	// their keys (the order Missing lists them in).
	keyed := func(i int, fields []keyField) {
		b := bytesOf(i)
		if b == nil {
			return
		}
		name := acctFiles[i]
		var found uint32
		for line := range bytes.Lines(b) {
			line = bytes.TrimSpace(line)
			if len(line) == 0 {
				continue
			}
			k, v, ok := bytes.Cut(line, []byte{' '})
			if !ok {
				u.Missing = append(u.Missing, name)
				errs = append(errs, fmt.Errorf("read %s in %s: parse line %q: want \"key value\"", name, path, line))
				return
			}
			n, err := parseValue(bytes.TrimSpace(v))
			if err != nil {
				u.Missing = append(u.Missing, name)
				errs = append(errs, fmt.Errorf("read %s in %s: parse line %q: %w", name, path, line, err))
				return
			}
			for j, f := range fields {
				if string(k) == f.key {
					*f.dst, found = n, found|1<<j
				}
			}
		}
		for j, f := range fields {
			if found&(1<<j) == 0 {
				u.Missing = append(u.Missing, name+":"+f.key)
			}
		}
	}
	single := func(i int, dst *uint64) {
		b := bytesOf(i)
		if b == nil {
			return
		}
		v, err := parseSingle(b)
		if err != nil {
			u.Missing = append(u.Missing, acctFiles[i])
			errs = append(errs, fmt.Errorf("read %s in %s: %w", acctFiles[i], path, err))
			return
		}
		*dst = v
	}

	keyed(0, []keyField{
		{"nr_throttled", &u.NrThrottled}, {"system_usec", &u.CPUSystemUsec}, {"throttled_usec", &u.ThrottledUsec},
		{"usage_usec", &u.CPUUsageUsec}, {"user_usec", &u.CPUUserUsec},
	})
	single(1, &u.MemoryPeak)
	keyed(2, []keyField{
		{"max", &u.MemoryMax}, {"oom", &u.OOM}, {"oom_group_kill", &u.OOMGroupKill}, {"oom_kill", &u.OOMKill},
	})
	single(3, &u.PidsPeak)
	keyed(4, []keyField{{"max", &u.PidsMax}})
	if b := bytesOf(5); b != nil {
		r, w, err := ioTotals(b)
		if err != nil {
			u.Missing = append(u.Missing, acctFiles[5])
			errs = append(errs, fmt.Errorf("read io.stat in %s: %w", path, err))
		}
		u.IOReadBytes, u.IOWriteBytes = r, w
	}
	return u, errors.Join(errs...)
}
