package policy

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Floors and fixed values for limits. The kernel accepts smaller values
// for some of them, but nothing useful runs below these.
const (
	// MinMemory is the smallest per-request memory limit and tenant or
	// global memory budget: 1 MiB. memory.max accepts any value (rounded
	// down to a page), but below about 1 MiB no program survives exec and
	// every request would end in an OOM kill.
	MinMemory = 1 << 20
	// CPUPeriod is the cpu.max period every CPU cap is expressed in, in
	// microseconds (the kernel default, 100 ms).
	CPUPeriod = 100000
	// MinMilliCPU is the smallest CPU cap: 10m, a quota of 1000 µs per
	// CPUPeriod, the smallest quota cpu.max accepts.
	MinMilliCPU = 10
	// MaxMilliCPU is the largest CPU cap, 100000 CPUs, far above any
	// machine; it keeps the quota arithmetic from overflowing.
	MaxMilliCPU = 100000 * 1000
	// MinPids is the smallest pids limit: the worker itself. (pids.max 0 is
	// valid for the kernel but no worker could start.)
	MinPids = 1
	// MinTenantPids is the smallest pids budget of a tenant: its group
	// holds each cell whole, and a confined cell is its init and the
	// program (a fork route's preloader and the clone serving a request
	// alike), so a budget of 1 would refuse every request.
	MinTenantPids = 2
	// MaxPids is the largest pids limit: pids.max refuses more than the
	// kernel's PID_MAX_LIMIT, 4*1024*1024 on 64-bit (EINVAL,
	// kernel/cgroup/pids.c pids_max_write).
	MaxPids = 4 * 1024 * 1024
	// InitPids is what a confined cell's init may add to its cell's pids:
	// cellgate-init (C) is one process, but the Go init that runs when it
	// is not installed (cellgate itself) has the runtime's own threads,
	// which count against pids.max. A route's pids limit is the program's;
	// serve writes the pids.max of a confined cgi route's cell as that
	// plus InitPids, so a route's pids is at most MaxPids - InitPids.
	InitPids = 8
	// MaxSize is the largest size of any key (memory, swap, max_body,
	// preload_memory, tmpfs_size, budgets): 1 PiB, more than any machine
	// Linux runs on has (x86-64 addresses 64 TiB of memory with four-level
	// page tables, 4 PiB with five), and 2^13 times below 2^63, so that
	// sums of sizes cannot overflow: memory + swap (Limits.Resources), a
	// preloader beside a request (preloadBudgets), a reservation beside a
	// budget's (Admission.fits), and up to 8192 reservations of 1 PiB in
	// flight at once in a tenant without a budget.
	MaxSize = 1 << 50
	// MinCPUWeight and MaxCPUWeight bound cpu.weight, as the kernel does.
	MinCPUWeight = 1
	MaxCPUWeight = 10000
)

// DefaultLimits are the built-in per-request limits: what a route gets for
// each key that neither it nor the file's defaults section sets. MaxBody
// has none: the proxy's own maximum (--max-body) applies.
func DefaultLimits() Limits {
	return Limits{
		Memory:   64 << 20,
		Swap:     0,
		MilliCPU: 1000,
		Pids:     64,
		Timeout:  30 * time.Second,
	}
}

// Resources returns l in the OCI runtime-spec vocabulary:
// Memory.Limit = Memory and Memory.Swap = Memory + Swap (the spec's Swap is
// memory plus swap, so the cgroup v2 writer sets memory.swap.max to
// Swap - Limit); CPU.Quota/Period = MilliCPU over CPUPeriod; Pids.Limit =
// Pids. A zero Memory, MilliCPU or Pids leaves that controller nil (not
// controlled). The result is a fresh value the caller may modify.
func (l Limits) Resources() *specs.LinuxResources {
	res := &specs.LinuxResources{}
	if l.Memory > 0 {
		limit, swap := l.Memory, l.Memory+l.Swap // each at most MaxSize: no overflow
		res.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &swap}
	}
	res.CPU = cpuResources(l.MilliCPU)
	if l.Pids > 0 {
		pids := l.Pids
		res.Pids = &specs.LinuxPids{Limit: &pids}
	}
	return res
}

// Validate checks l against the floors (MinMemory, MinMilliCPU, MinPids)
// and ceilings (MaxSize, MaxMilliCPU, MaxPids less InitPids) and that the
// timeout and body limit are positive; for limits given on a command line.
// It returns every problem, joined.
func (l Limits) Validate() error {
	var errs []error
	if l.Memory < MinMemory {
		errs = append(errs, fmt.Errorf("memory %s is below the floor %s: raise it", FormatBytes(l.Memory), FormatBytes(MinMemory)))
	}
	if l.Memory > MaxSize {
		errs = append(errs, fmt.Errorf("memory %s is above the largest size %s: lower it", FormatBytes(l.Memory), FormatBytes(MaxSize)))
	}
	if l.Swap < 0 {
		errs = append(errs, fmt.Errorf("swap %d is negative: use 0 for no swap", l.Swap))
	}
	if l.Swap > MaxSize {
		errs = append(errs, fmt.Errorf("swap %s is above the largest size %s: lower it", FormatBytes(l.Swap), FormatBytes(MaxSize)))
	}
	if l.MilliCPU != 0 && (l.MilliCPU < MinMilliCPU || l.MilliCPU > MaxMilliCPU) {
		errs = append(errs, fmt.Errorf("cpu %s is outside %s..%s: use a value in range, or max for no cap", FormatCPU(l.MilliCPU), FormatCPU(MinMilliCPU), FormatCPU(MaxMilliCPU)))
	}
	if l.Pids < MinPids {
		errs = append(errs, fmt.Errorf("pids %d is below %d: the worker itself is a process", l.Pids, MinPids))
	}
	if l.Pids > MaxPids-InitPids {
		errs = append(errs, fmt.Errorf("pids %d is above %d: %s", l.Pids, MaxPids-InitPids, pidsCeiling))
	}
	if l.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout %s is not positive: use a duration such as 30s", l.Timeout))
	}
	if l.MaxBody != nil && *l.MaxBody < 0 {
		errs = append(errs, fmt.Errorf("max_body %d is negative: use 0 to refuse bodies", *l.MaxBody))
	}
	if l.MaxBody != nil && *l.MaxBody > MaxSize {
		errs = append(errs, fmt.Errorf("max_body %s is above the largest size %s: lower it", FormatBytes(*l.MaxBody), FormatBytes(MaxSize)))
	}
	return errors.Join(errs...)
}

// pidsCeiling says why a request's pids is at most MaxPids - InitPids.
var pidsCeiling = fmt.Sprintf("pids.max takes at most %d (the kernel's PID_MAX_LIMIT), and %d of a confined cell's are its init's", MaxPids, InitPids)

// Resources returns the limits of the tenant's group in the OCI
// runtime-spec vocabulary: Memory.Limit = Memory, CPU.Quota/Period =
// MilliCPU, Pids.Limit = Pids, and the weight as Unified["cpu.weight"].
// The weight goes through Unified, written verbatim, rather than
// CPU.Shares: Shares is the cgroup v1 scale (2..262144) that a v2 writer
// must convert with a lossy formula, while cellgate only runs on cgroup v2
// and operators read cpu.weight in the kernel's own terms. Unset fields
// stay nil (not controlled). The result is a fresh value.
func (t *Tenant) Resources() *specs.LinuxResources {
	res := &specs.LinuxResources{CPU: cpuResources(t.MilliCPU)}
	if t.Memory > 0 {
		limit := t.Memory
		res.Memory = &specs.LinuxMemory{Limit: &limit}
	}
	if t.Pids > 0 {
		pids := t.Pids
		res.Pids = &specs.LinuxPids{Limit: &pids}
	}
	if t.CPUWeight > 0 {
		res.Unified = map[string]string{"cpu.weight": strconv.FormatUint(t.CPUWeight, 10)}
	}
	return res
}

func cpuResources(milli int64) *specs.LinuxCPU {
	if milli <= 0 {
		return nil
	}
	quota, period := milli*(CPUPeriod/1000), uint64(CPUPeriod)
	return &specs.LinuxCPU{Quota: &quota, Period: &period}
}

// byteUnits are the suffixes ParseBytes accepts, Kubernetes style: k, M,
// G, T are powers of 1000; Ki, Mi, Gi, Ti powers of 1024. K is accepted
// as k.
var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"k", 1e3}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
}

// Why ParseBytes refuses a size, for the decoder to say so.
var (
	errNotSize       = errors.New("want a number with an optional unit (512k, 64Mi, 1G)")
	errNotWholeBytes = errors.New("not a whole number of bytes")
	errSizeTooLarge  = errors.New("too large")
	errCPUTooLarge   = errors.New("too large")
	errCPUTooFine    = errors.New("finer than a thousandth of a CPU")
)

// ParseBytes parses a byte size: a decimal number with an optional unit,
// k/K, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (powers of 1024), such as
// 512k, 64Mi, 1.5Gi or 1048576. The result must be a whole number of bytes
// and fit in an int64.
func ParseBytes(s string) (int64, error) {
	r, err := parseBytes(s)
	switch {
	case err != nil:
		return 0, err
	case r.Cmp(new(big.Rat).SetInt64(math.MaxInt64)) > 0:
		return 0, fmt.Errorf("parse size %q: %w", s, errSizeTooLarge)
	case !r.IsInt():
		return 0, fmt.Errorf("parse size %q: %w", s, errNotWholeBytes)
	}
	return r.Num().Int64(), nil
}

// parseBytes parses s as ParseBytes does, into a number of bytes that may
// be a fraction or too large.
func parseBytes(s string) (*big.Rat, error) {
	num, mult := s, int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	if _, _, ok := splitDecimal(num); !ok {
		return nil, fmt.Errorf("parse size %q: %w", s, errNotSize)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return nil, fmt.Errorf("parse size %q: %w", s, errNotSize)
	}
	return r.Mul(r, new(big.Rat).SetInt64(mult)), nil
}

// wholeBytes is s, which parses to a fraction of a byte (errNotWholeBytes),
// rounded down, for a fix.
func wholeBytes(s string) string {
	r, err := parseBytes(s)
	if err != nil {
		return ""
	}
	return new(big.Int).Quo(r.Num(), r.Denom()).String()
}

// splitDecimal splits "12.5" into "12" and "5"; digits only, at most 18
// fractional digits, no sign.
func splitDecimal(s string) (whole, frac string, ok bool) {
	whole, frac, dot := strings.Cut(s, ".")
	if whole == "" || !allDigits(whole) || dot && (frac == "" || !allDigits(frac) || len(frac) > 18) {
		return "", "", false
	}
	return whole, frac, true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// ParseCPU parses a CPU amount into thousandths of a CPU: a decimal number
// of CPUs ("0.5", "1", "1.5", at most three decimals) or millicpus ("250m"),
// or "max" for no cap (0). It does not apply the floor: see
// Limits.Validate and MinMilliCPU.
func ParseCPU(s string) (int64, error) {
	if s == "max" {
		return 0, nil
	}
	if m, ok := strings.CutSuffix(s, "m"); ok {
		if !allDigits(m) {
			return 0, fmt.Errorf("parse cpu %q: want millicpus such as 250m", s)
		}
		n, err := strconv.ParseInt(m, 10, 64)
		if err != nil || n > MaxMilliCPU {
			return 0, fmt.Errorf("parse cpu %q: %w (at most %s)", s, errCPUTooLarge, FormatCPU(MaxMilliCPU))
		}
		return n, nil
	}
	whole, frac, ok := splitDecimal(s)
	if !ok {
		return 0, fmt.Errorf("parse cpu %q: want a number of CPUs (0.5, 2) or millicpus (250m), or max", s)
	}
	if len(frac) > 3 {
		return 0, fmt.Errorf("parse cpu %q: %w: round it", s, errCPUTooFine)
	}
	w, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || w > MaxMilliCPU/1000 {
		return 0, fmt.Errorf("parse cpu %q: %w (at most %s)", s, errCPUTooLarge, FormatCPU(MaxMilliCPU))
	}
	n := w * 1000
	if frac != "" {
		f, _ := strconv.ParseInt(frac+strings.Repeat("0", 3-len(frac)), 10, 64)
		n += f
	}
	if n > MaxMilliCPU {
		// The whole part at the bound and a fraction past it.
		return 0, fmt.Errorf("parse cpu %q: %w (at most %s)", s, errCPUTooLarge, FormatCPU(MaxMilliCPU))
	}
	return n, nil
}

// FormatBytes formats n with the largest binary unit that divides it
// (64Mi, 1536Ki), or in plain bytes.
func FormatBytes(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// FormatCPU formats thousandths of a CPU as a number of CPUs ("0.5",
// "1.25"), or "max" for 0.
func FormatCPU(milli int64) string {
	if milli == 0 {
		return "max"
	}
	s := strconv.FormatInt(milli/1000, 10)
	if f := milli % 1000; f != 0 {
		s += strings.TrimRight(fmt.Sprintf(".%03d", f), "0")
	}
	return s
}
