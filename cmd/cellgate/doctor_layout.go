package main

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// v1Controllers parses /proc/cgroups and returns the controllers bound to
// a cgroup v1 hierarchy (hierarchy id not 0). Those cannot be enabled in
// any cgroup2 group: a hybrid layout (v1 controllers mounted under
// /sys/fs/cgroup/<name>, an empty cgroup2 often at /sys/fs/cgroup/unified)
// keeps them from cellgate whatever is written to cgroup.subtree_control.
func v1Controllers(procCgroups []byte) map[string]bool {
	out := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(procCgroups))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if id, err := strconv.Atoi(f[1]); err == nil && id != 0 && f[3] == "1" {
			out[f[0]] = true
		}
	}
	return out
}

// controllerFix is doctor's remedy for a required controller c that is
// not enabled in parent's cgroup.subtree_control: available is parent's
// cgroup.controllers, v1 the controllers bound to v1 hierarchies. Only a
// controller the parent has can be enabled by hand.
func controllerFix(c, parent string, available []string, v1 map[string]bool) string {
	unenforced := fmt.Sprintf("or run without its limits on purpose with --unenforced %s", c)
	switch {
	case v1[c]:
		return fmt.Sprintf("this host has a hybrid cgroup layout: the %s controller is bound to a cgroup v1 hierarchy, "+
			"so no cgroup2 group can have it and nothing written to cgroup.subtree_control helps. "+
			"Boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2 only), or run cellgate in the microVM "+
			"(make run; the integration tests use it), %s", c, unenforced)
	case !slices.Contains(available, c):
		return fmt.Sprintf("%s is not delegated to %s (not in its cgroup.controllers): enable it in the parent groups "+
			"(systemd: Delegate=yes on cellgate's unit), %s", c, parent, unenforced)
	default:
		return fmt.Sprintf("enable it for cellgate's subtree (systemd: Delegate=yes; by hand: echo +%s > %s/cgroup.subtree_control), %s",
			c, parent, unenforced)
	}
}
