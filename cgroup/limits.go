package cgroup

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Setting is one cgroupfs control-file write: File (e.g. "memory.max")
// relative to the group's directory, Value written as is.
type Setting struct {
	File  string
	Value string
}

// Controller is the controller that owns the file: the part before the
// first "." ("memory" for memory.max); "cgroup" for core files, which need
// no controller.
func (s Setting) Controller() string {
	c, _, _ := strings.Cut(s.File, ".")
	return c
}

func (s Setting) String() string { return s.File + "=" + s.Value }

// Convert turns OCI runtime-spec LinuxResources into cgroup v2 control-file
// writes, in the order they must be written. It is pure; nil gives no
// writes. Where containerd's ToResources is wrong (containerd/cgroups
// v3.1.3, cgroup2/utils.go ToResources) this follows the spec and runc:
//
//   - memory limit -1 is "max"; swap is memory+swap (v1 semantics), so
//     memory.swap.max = swap - limit, and swap -1 is "max";
//   - a quota without a period uses the kernel's default period 100000;
//   - burst is written to cpu.max.burst (after cpu.max: the kernel checks
//     burst against the quota);
//   - pids limit 0 is a limit of 0 (spec v1.3.0);
//   - shares become cpu.weight with runc's quadratic fit;
//   - Unified entries are written verbatim, after everything else, and
//     replace a converted write of the same file.
//
// Fields cgroup v2 cannot express (kernel memory, swappiness,
// disableOOMKiller, realtime, devices, network, rdma, leaf weights), and
// values the kernel would reject, are a *LimitError naming the field and
// value, never silently dropped.
func Convert(r *specs.LinuxResources) ([]Setting, error) {
	if r == nil {
		return nil, nil
	}
	var out []Setting
	if len(r.Devices) > 0 {
		return nil, &LimitError{Field: "devices", Value: fmt.Sprintf("%d rules", len(r.Devices)), Reason: "device rules need an eBPF program on cgroup v2; not supported by cellgate"}
	}
	if r.Network != nil {
		return nil, &LimitError{Field: "network", Value: "set", Reason: "cgroup v2 has no net_cls/net_prio"}
	}
	if len(r.Rdma) > 0 {
		return nil, &LimitError{Field: "rdma", Value: "set", Reason: "not supported by cellgate"}
	}
	for _, conv := range []func(*specs.LinuxResources) ([]Setting, error){memorySettings, cpuSettings, pidsSettings, ioSettings, hugetlbSettings} {
		s, err := conv(r)
		if err != nil {
			return nil, err
		}
		out = append(out, s...)
	}
	return applyUnified(out, r.Unified)
}

// CellSettings is Convert plus what every request cell gets:
// memory.oom.group=1 (an OOM kill takes the whole cell, never half of it),
// and, when a memory limit is set without swap, memory.swap.max=0 (a
// request's memory limit includes swap). A Unified memory.oom.group other
// than "1" is refused.
func CellSettings(r *specs.LinuxResources) ([]Setting, error) {
	s, err := Convert(r)
	if err != nil {
		return nil, err
	}
	if v, ok := lookup(s, "memory.oom.group"); ok && strings.TrimSpace(v) != "1" {
		return nil, &LimitError{Field: "unified[memory.oom.group]", Value: v, Reason: "request cells always use memory.oom.group=1"}
	}
	if r != nil && r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit >= 0 {
		if _, ok := lookup(s, "memory.swap.max"); !ok {
			s = insertAfter(s, "memory.max", Setting{"memory.swap.max", "0"})
		}
	}
	if _, ok := lookup(s, "memory.oom.group"); !ok {
		s = insertAfter(s, "memory.swap.max", Setting{"memory.oom.group", "1"})
	}
	return s, nil
}

// TenantSettings is Convert for a tenant group: its budget, nothing added.
func TenantSettings(r *specs.LinuxResources) ([]Setting, error) { return Convert(r) }

func lookup(s []Setting, file string) (string, bool) {
	for _, x := range s {
		if x.File == file {
			return x.Value, true
		}
	}
	return "", false
}

// insertAfter puts x after the last write of file, or after the last
// memory write, or first; memory files stay together and before cpu.
func insertAfter(s []Setting, file string, x Setting) []Setting {
	at := -1
	for i, y := range s {
		if y.File == file || (y.Controller() == "memory" && at < i) {
			at = i
		}
	}
	return slices.Insert(s, at+1, x)
}

// unifiedCoreFiles are the core ("cgroup.") files a Unified entry may
// write; the others (procs, threads, kill, subtree_control, type, freeze)
// belong to cellgate.
var unifiedCoreFiles = []string{"cgroup.max.descendants", "cgroup.max.depth"}

func applyUnified(s []Setting, u map[string]string) ([]Setting, error) {
	keys := make([]string, 0, len(u))
	for k := range u {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		field := "unified[" + k + "]"
		ctrl, rest, ok := strings.Cut(k, ".")
		if !ok || ctrl == "" || rest == "" || strings.ContainsAny(k, "/\x00") || strings.HasPrefix(k, ".") {
			return nil, &LimitError{Field: field, Value: u[k], Reason: "not a cgroup v2 control file name (want controller.file)"}
		}
		if ctrl == "cgroup" && !slices.Contains(unifiedCoreFiles, k) {
			return nil, &LimitError{Field: field, Value: u[k], Reason: fmt.Sprintf("core file is managed by cellgate (allowed: %s)", strings.Join(unifiedCoreFiles, ", "))}
		}
		s = slices.DeleteFunc(s, func(x Setting) bool { return x.File == k })
		s = append(s, Setting{k, u[k]})
	}
	return s, nil
}

// maxOr renders -1 as "max" and other non-negative values as decimals;
// anything below -1 is an error naming field.
func maxOr(field string, v int64) (string, error) {
	switch {
	case v == -1:
		return "max", nil
	case v < -1:
		return "", &LimitError{Field: field, Value: strconv.FormatInt(v, 10), Reason: "must be -1 (unlimited) or >= 0"}
	}
	return strconv.FormatInt(v, 10), nil
}
