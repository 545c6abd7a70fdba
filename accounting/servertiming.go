package accounting

import (
	"strconv"
	"time"
)

// ServerTiming returns the value of a Server-Timing response header
// (https://www.w3.org/TR/server-timing/) for r, for example
//
//	cell;dur=12.3, cpu;dur=4.1, wait;dur=0.2, mem;desc="33554432"
//
// cell is the cell's wall time, cpu its CPU time (user and system), wait the
// admission wait, all in milliseconds with microsecond precision; mem is the
// cell's memory peak in bytes. Without a cell only wait is given; mem is left
// out when the kernel did not report a peak. A fork route's request also
// gets spawn, its hand-off to the preloader (before the cell's wall time
// starts), and clone, the preloader's own part of that.
//
// The header tells a client how much CPU and memory its request cost, which
// is why proxy adds it only for routes that ask for it.
func ServerTiming(r Record) string {
	b := make([]byte, 0, 96)
	if r.Cell {
		b = appendDur(b, "cell", usec(r.Wall))
		b = append(b, ", "...)
		b = appendDur(b, "cpu", clampInt64(r.Usage.CPUUsageUsec))
		b = append(b, ", "...)
	}
	b = appendDur(b, "wait", usec(r.QueueWait))
	if r.Cell && r.Spawn > 0 {
		b = append(b, ", "...)
		b = appendDur(b, "spawn", usec(r.Spawn))
		b = append(b, ", "...)
		b = appendDur(b, "clone", usec(r.Clone))
	}
	if r.Cell && r.Usage.MemoryPeak > 0 {
		b = append(b, `, mem;desc="`...)
		b = strconv.AppendUint(b, r.Usage.MemoryPeak, 10)
		b = append(b, '"')
	}
	return string(b)
}

// appendDur appends the metric name;dur=<ms>, with us microseconds written
// as milliseconds: whole, or with up to three decimals and no trailing zero.
func appendDur(b []byte, name string, us int64) []byte {
	b = append(b, name...)
	b = append(b, ";dur="...)
	ms := us / int64(time.Millisecond/time.Microsecond)
	frac := us % int64(time.Millisecond/time.Microsecond)
	b = strconv.AppendInt(b, ms, 10)
	if frac == 0 {
		return b
	}
	digits := [3]byte{byte('0' + frac/100), byte('0' + frac/10%10), byte('0' + frac%10)}
	n := len(digits)
	for digits[n-1] == '0' {
		n--
	}
	b = append(b, '.')
	return append(b, digits[:n]...)
}

// clampInt64 converts a kernel counter to int64, saturating.
func clampInt64(v uint64) int64 {
	if v > uint64(1<<63-1) {
		return 1<<63 - 1
	}
	return int64(v)
}
