package cgroup

import specs "github.com/opencontainers/runtime-spec/specs-go"

// pidsSettings converts LinuxPids to pids.max (4.5). A limit of 0 is a
// limit (runtime-spec v1.3.0): the cell cannot start a process at all.
func pidsSettings(r *specs.LinuxResources) ([]Setting, error) {
	if r.Pids == nil || r.Pids.Limit == nil {
		return nil, nil
	}
	v, err := maxOr("pids.limit", *r.Pids.Limit)
	if err != nil {
		return nil, err
	}
	return []Setting{{"pids.max", v}}, nil
}
