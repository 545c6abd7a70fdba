package main

import (
	"fmt"
	"strings"
	"testing"
)

func TestControllerFix(t *testing.T) {
	hybrid := v1Controllers([]byte("#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\nmemory\t4\t45\t1\npids\t0\t9\t1\nio\t0\t9\t1\nnet_cls\t0\t1\t1\n"))
	if !hybrid["memory"] || !hybrid["cpu"] || hybrid["pids"] || hybrid["io"] {
		t.Fatalf("v1Controllers = %v", hybrid)
	}
	tests := []struct {
		name, c   string
		available []string
		v1        map[string]bool
		want      []string
		not       []string
	}{
		{"bound to v1", "memory", nil, hybrid, []string{"hybrid cgroup layout", "systemd.unified_cgroup_hierarchy=1", "microVM", "--unenforced memory"}, []string{"echo +"}},
		{"not delegated", "pids", []string{"cpu"}, hybrid, []string{"not delegated to /cg", "Delegate=yes"}, []string{"echo +", "hybrid"}},
		{"available, not enabled", "pids", []string{"pids"}, hybrid, []string{"echo +pids > /cg/cgroup.subtree_control"}, []string{"hybrid"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := controllerFix(tt.c, "/cg", tt.available, tt.v1)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("fix %q lacks %q", got, w)
				}
			}
			for _, w := range tt.not {
				if strings.Contains(got, w) {
					t.Errorf("fix %q has %q", got, w)
				}
			}
		})
	}
}

// TestDoctorBaseOutsideMount: a --cgroup-base outside the cgroup2 mount,
// which serve (cgroup.Open) refuses, is a FAIL naming the mount; before,
// doctor said "ok base" for any existing directory.
func TestDoctorBaseOutsideMount(t *testing.T) {
	var r report
	dir := t.TempDir()
	checkOwnGroup(doctorConfig{Shared: Shared{CgroupBase: dir}}, "/sys/fs/cgroup", &r)
	if !r.failed() || !strings.Contains(fmt.Sprint(r.findings), "is not under the cgroup2 mount /sys/fs/cgroup") {
		t.Errorf("findings %+v, want a FAIL naming the mount", r.findings)
	}
	r = report{}
	checkOwnGroup(doctorConfig{Shared: Shared{CgroupBase: "cellgate"}}, "/sys/fs/cgroup", &r)
	if r.failed() {
		t.Errorf("a base relative to the mount: %+v", r.findings)
	}
}
