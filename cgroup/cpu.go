package cgroup

import (
	"math"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const (
	defaultCPUPeriod = 100000  // µs, the kernel's default cfs period
	minCPUPeriod     = 1000    // µs, kernel bound for cpu.max period
	maxCPUPeriod     = 1000000 // µs
	minCPUQuota      = 1000    // µs, kernel bound for cpu.max quota
)

// cpuSettings converts LinuxCPU. Files: cpu.weight and cpu.max (4.15),
// cpu.max.burst (5.14), cpu.idle (5.15), cpuset.cpus/cpuset.mems (5.0, need
// the cpuset controller).
func cpuSettings(r *specs.LinuxResources) ([]Setting, error) {
	c := r.CPU
	if c == nil {
		return nil, nil
	}
	if c.RealtimeRuntime != nil || c.RealtimePeriod != nil {
		return nil, &LimitError{Field: "cpu.realtimeRuntime", Value: "set", Reason: "realtime bandwidth does not exist on cgroup v2"}
	}
	if c.Idle != nil && *c.Idle != 0 && *c.Idle != 1 {
		return nil, &LimitError{Field: "cpu.idle", Value: strconv.FormatInt(*c.Idle, 10), Reason: "must be 0 or 1"}
	}
	var out []Setting
	// The kernel refuses cpu.weight in an idle group: cpu.idle=0 goes
	// first (a group made idle before may be updated so), cpu.idle=1
	// last.
	if c.Idle != nil && *c.Idle == 0 {
		out = append(out, Setting{"cpu.idle", "0"})
	}
	if c.Shares != nil && *c.Shares != 0 {
		out = append(out, Setting{"cpu.weight", strconv.FormatUint(sharesToWeight(*c.Shares), 10)})
	}
	quota := int64(0) // 0: unset, as in runc
	if c.Quota != nil {
		quota = *c.Quota
	}
	period := uint64(0)
	if c.Period != nil {
		period = *c.Period
	}
	if quota != 0 || period != 0 {
		if period == 0 {
			period = defaultCPUPeriod
		}
		if period < minCPUPeriod || period > maxCPUPeriod {
			return nil, &LimitError{Field: "cpu.period", Value: strconv.FormatUint(period, 10), Reason: "must be 1000..1000000 µs"}
		}
		q := "max"
		switch {
		case quota == -1 || quota == 0:
		case quota < -1:
			return nil, &LimitError{Field: "cpu.quota", Value: strconv.FormatInt(quota, 10), Reason: "must be -1 (unlimited) or >= 1000 µs"}
		case quota < minCPUQuota:
			return nil, &LimitError{Field: "cpu.quota", Value: strconv.FormatInt(quota, 10), Reason: "the kernel's minimum quota is 1000 µs"}
		default:
			q = strconv.FormatInt(quota, 10)
		}
		out = append(out, Setting{"cpu.max", q + " " + strconv.FormatUint(period, 10)})
	}
	if c.Burst != nil {
		if quota > 0 && *c.Burst > uint64(quota) {
			return nil, &LimitError{Field: "cpu.burst", Value: strconv.FormatUint(*c.Burst, 10), Reason: "must not exceed cpu.quota " + strconv.FormatInt(quota, 10)}
		}
		out = append(out, Setting{"cpu.max.burst", strconv.FormatUint(*c.Burst, 10)})
	}
	if c.Idle != nil && *c.Idle == 1 {
		out = append(out, Setting{"cpu.idle", "1"})
	}
	if c.Cpus != "" {
		out = append(out, Setting{"cpuset.cpus", c.Cpus})
	}
	if c.Mems != "" {
		out = append(out, Setting{"cpuset.mems", c.Mems})
	}
	return out, nil
}

// sharesToWeight maps cgroup v1 cpu.shares (2..262144, default 1024) to v2
// cpu.weight (1..10000, default 100) with runc's quadratic fit in log
// space, which keeps the minimum, the default and the maximum.
func sharesToWeight(shares uint64) uint64 {
	if shares <= 2 {
		return 1
	}
	if shares >= 262144 {
		return 10000
	}
	l := math.Log2(float64(shares))
	exponent := (l*l+125*l)/612.0 - 7.0/34.0
	return uint64(math.Ceil(math.Pow(10, exponent)))
}
