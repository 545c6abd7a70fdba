package cgroup

import (
	"bytes"
	"fmt"
	"strconv"
)

// parseFlatKeyed parses "key value" lines (cpu.stat, memory.events,
// pids.events, cgroup.events, memory.stat) into a map. Malformed lines are
// an error: a value that cannot be parsed is never read as zero.
func parseFlatKeyed(b []byte) (map[string]uint64, error) {
	m := make(map[string]uint64, 8)
	for line := range bytes.Lines(b) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		k, v, ok := bytes.Cut(line, []byte{' '})
		if !ok {
			return nil, fmt.Errorf("parse line %q: want \"key value\"", line)
		}
		n, err := parseValue(bytes.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("parse line %q: %w", line, err)
		}
		m[string(k)] = n
	}
	return m, nil
}

// parseValue parses a decimal, with "max" as the largest value.
func parseValue(v []byte) (uint64, error) {
	if string(v) == "max" {
		return ^uint64(0), nil
	}
	// Decimal digits by hand: strconv would take a string, a copy per
	// value, and a cell's accounting has some twenty of them.
	if len(v) == 0 || len(v) > 20 {
		return 0, fmt.Errorf("parse %q: not a decimal count", v)
	}
	var n uint64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("parse %q: not a decimal count", v)
		}
		d := uint64(c - '0')
		if n > (^uint64(0)-d)/10 {
			return 0, fmt.Errorf("parse %q: over 64 bits", v)
		}
		n = n*10 + d
	}
	return n, nil
}

// parseSingle parses a one-value file (memory.peak, pids.peak,
// memory.current).
func parseSingle(b []byte) (uint64, error) {
	v := bytes.TrimSpace(b)
	n, err := parseValue(v)
	if err != nil {
		return 0, fmt.Errorf("parse %q: %w", v, err)
	}
	return n, nil
}

// ioTotals sums rbytes and wbytes over the devices of an io.stat:
// "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0" per line.
func ioTotals(b []byte) (rbytes, wbytes uint64, err error) {
	for line := range bytes.Lines(b) {
		fields := bytes.Fields(line)
		if len(fields) == 0 {
			continue
		}
		for _, f := range fields[1:] {
			k, v, ok := bytes.Cut(f, []byte{'='})
			if !ok {
				return 0, 0, fmt.Errorf("parse io.stat line %q: field %q is not key=value", bytes.TrimSpace(line), f)
			}
			var dst *uint64
			switch string(k) {
			case "rbytes":
				dst = &rbytes
			case "wbytes":
				dst = &wbytes
			default:
				continue
			}
			n, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("parse io.stat line %q: %w", bytes.TrimSpace(line), err)
			}
			*dst += n
		}
	}
	return rbytes, wbytes, nil
}

// populated reads the "populated" key of a cgroup.events content.
func populated(b []byte) (bool, error) {
	m, err := parseFlatKeyed(b)
	if err != nil {
		return false, err
	}
	v, ok := m["populated"]
	if !ok {
		return false, fmt.Errorf("no populated key in %q", b)
	}
	return v != 0, nil
}
