package cgroup

import (
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// memorySettings converts LinuxMemory. Files: memory.max, memory.low,
// memory.swap.max (all 4.5). memory.oom.group (4.19) is added by
// CellSettings.
func memorySettings(r *specs.LinuxResources) ([]Setting, error) {
	m := r.Memory
	if m == nil {
		return nil, nil
	}
	switch {
	case m.Kernel != nil:
		return nil, &LimitError{Field: "memory.kernel", Value: strconv.FormatInt(*m.Kernel, 10), Reason: "kernel memory limits do not exist on cgroup v2"}
	case m.KernelTCP != nil:
		return nil, &LimitError{Field: "memory.kernelTCP", Value: strconv.FormatInt(*m.KernelTCP, 10), Reason: "kernel TCP limits do not exist on cgroup v2"}
	case m.Swappiness != nil:
		return nil, &LimitError{Field: "memory.swappiness", Value: strconv.FormatUint(*m.Swappiness, 10), Reason: "per-group swappiness does not exist on cgroup v2"}
	case m.DisableOOMKiller != nil && *m.DisableOOMKiller:
		return nil, &LimitError{Field: "memory.disableOOMKiller", Value: "true", Reason: "cgroup v2 cannot disable the OOM killer"}
	}
	// UseHierarchy and CheckBeforeUpdate are v1 knobs: v2 is always
	// hierarchical, and cellgate never updates a request cell.
	var out []Setting
	if m.Limit != nil {
		v, err := maxOr("memory.limit", *m.Limit)
		if err != nil {
			return nil, err
		}
		out = append(out, Setting{"memory.max", v})
	}
	if m.Reservation != nil {
		v, err := maxOr("memory.reservation", *m.Reservation)
		if err != nil {
			return nil, err
		}
		out = append(out, Setting{"memory.low", v})
	}
	if m.Swap != nil {
		v, ok, err := swapMax(m.Limit, *m.Swap)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, Setting{"memory.swap.max", v})
		}
	}
	return out, nil
}

// swapMax converts the OCI memory+swap total into memory.swap.max, as runc
// does: -1 is "max"; 0 means unset; otherwise a memory limit must be set
// and no larger than the total, and swap.max is the difference.
func swapMax(limit *int64, swap int64) (string, bool, error) {
	sv := strconv.FormatInt(swap, 10)
	switch {
	case swap == -1:
		return "max", true, nil
	case swap == 0:
		return "", false, nil
	case swap < -1:
		return "", false, &LimitError{Field: "memory.swap", Value: sv, Reason: "must be -1 (unlimited) or >= 0"}
	case limit == nil:
		return "", false, &LimitError{Field: "memory.swap", Value: sv, Reason: "memory+swap needs memory.limit set"}
	case *limit == -1:
		return "", false, &LimitError{Field: "memory.swap", Value: sv, Reason: "memory.limit is unlimited (-1), so memory+swap must be -1 too"}
	case swap < *limit:
		return "", false, &LimitError{Field: "memory.swap", Value: sv, Reason: "memory+swap is smaller than memory.limit " + strconv.FormatInt(*limit, 10)}
	}
	return strconv.FormatInt(swap-*limit, 10), true, nil
}
