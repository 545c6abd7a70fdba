package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestNamespacedRoot: "/" in /proc/self/cgroup is a container's root
// only when the mount's root group is not the host's (it has cgroup.type).
func TestNamespacedRoot(t *testing.T) {
	hostRoot, nsRoot := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(nsRoot, "cgroup.type"), "domain\n")
	for _, c := range []struct {
		name   string
		cgroup string
		mount  string
		want   bool
	}{
		{"container root", "0::/\n", nsRoot, true},
		{"host root group", "0::/\n", hostRoot, false},
		{"a group below the root", "0::/system.slice/cellgate.service\n", nsRoot, false},
		{"hybrid host", "12:memory:/\n0::/\n", hostRoot, false},
	} {
		if got := namespacedRoot([]byte(c.cgroup), c.mount); got != c.want {
			t.Errorf("%s: namespacedRoot = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestCheckContainerCgroup: the container's group must offer memory, cpu
// and pids (or --unenforced them); the findings name the file and the fix.
func TestCheckContainerCgroup(t *testing.T) {
	for _, c := range []struct {
		name        string
		controllers string
		unenforced  []string
		fail        bool
		has         string
	}{
		{"all delegated", "cpuset cpu io memory pids\n", nil, false, "memory cpu pids available"},
		{"no memory", "cpu pids\n", nil, true, "memory not in"},
		{"no memory, unenforced", "cpu pids\n", []string{"memory"}, false, "not enforced"},
	} {
		t.Run(c.name, func(t *testing.T) {
			mount := t.TempDir()
			writeFile(t, filepath.Join(mount, "cgroup.controllers"), c.controllers)
			var r report
			checkContainerCgroup(doctorConfig{Shared: Shared{Unenforced: c.unenforced}}, mount, &r)
			var out strings.Builder
			r.print(&out)
			if r.failed() != c.fail || !strings.Contains(out.String(), c.has) {
				t.Errorf("failed=%v, want %v; report lacks %q?\n%s", r.failed(), c.fail, c.has, out.String())
			}
		})
	}
}

// TestIDsMapped: the per-cell ids must lie inside the user namespace's
// maps: the init namespace maps all, a pod with hostUsers: false 65536.
func TestIDsMapped(t *testing.T) {
	const (
		initNS = "         0          0 4294967295\n"
		pod    = "         0 1879048192      65536\n"
		split  = "0 100000 1000\n1000 5000 1\n1001 200000 64535\n"
	)
	for _, c := range []struct {
		name         string
		idMap        string
		first, count uint64
		want         bool
	}{
		{"init namespace, default range", initNS, 2_000_000_000, 65536, true},
		{"pod, default range", pod, 2_000_000_000, 65536, false},
		{"pod, range inside", pod, 10000, 10000, true},
		{"pod, range across its end", pod, 60000, 10000, false},
		{"pod, gid", pod, 10000, 1, true},
		{"split map, covered by three lines", split, 500, 2000, true},
		{"split map, past the end", split, 60000, 10000, false},
		{"empty map", "", 0, 1, false},
	} {
		if got := idsMapped([]byte(c.idMap), c.first, c.count); got != c.want {
			t.Errorf("%s: idsMapped(%d, %d) = %v, want %v", c.name, c.first, c.count, got, c.want)
		}
	}
}
