package main

// The doctor's checks inside a container, and serve --preflight, which
// runs the doctor's delegation checks before serving (the image's
// entrypoint uses it, so that a pod without a delegated cgroup fails at
// once with the fix instead of serving).

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cellgate/cellgate/sandbox"
	"golang.org/x/sys/unix"
)

// writableCgroupFix is how to give a container a private cgroup namespace
// with a writable cgroupfs, per runtime, and why not privileged.
const writableCgroupFix = "run the container with a private cgroup namespace and a writable cgroupfs: " +
	"docker run --cgroupns=private --security-opt writable-cgroups=true (Docker >= 28); " +
	"containerd >= 2.1: cgroup_writable = true in the runtime's options; " +
	"CRI-O: the pod annotation io.kubernetes.cri-o.cgroup2-mount-hierarchy-rw=\"true\" (allowed in its runtime class). " +
	"Not --privileged: it shares the host's cgroup namespace, and the cells would land among other containers' groups"

// namespacedRoot reports whether the process's group is the root of a
// cgroup namespace of its own (a container's): /proc/self/cgroup says "/"
// while the mount's root has cgroup.type, which only the host's real root
// group lacks.
func namespacedRoot(procCgroup []byte, mount string) bool {
	own := ""
	for _, line := range strings.Split(string(procCgroup), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			own = rest
		}
	}
	if own != "/" {
		return false
	}
	_, err := os.Stat(filepath.Join(mount, "cgroup.type"))
	return err == nil
}

// checkContainerCgroup checks what serve needs of a container's cgroup
// (the root of its namespace at mount): a writable cgroupfs and the
// controllers delegated to it. It cannot make a scratch tree beside the
// process without moving it; serve's own start-up probes the rest and
// refuses to start when it cannot make a cell.
func checkContainerCgroup(cfg doctorConfig, mount string, r *report) {
	var st unix.Statfs_t
	switch err := unix.Statfs(mount, &st); {
	case err != nil:
		r.fail("cgroupfs", "", "statfs %s: %v", mount, err)
	case st.Flags&unix.ST_RDONLY != 0:
		r.fail("cgroupfs", writableCgroupFix, "%s is mounted read-only in this container: cellgate cannot create a cell", mount)
	default:
		r.ok("cgroupfs", "%s is the root of this container's cgroup namespace, mounted writable", mount)
	}
	b, err := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	if err != nil {
		r.fail("controllers", "", "read %s: %v", filepath.Join(mount, "cgroup.controllers"), err)
		return
	}
	avail := strings.Fields(string(b))
	var missing []string
	for _, c := range []string{"memory", "cpu", "pids"} {
		switch {
		case slices.Contains(avail, c):
		case slices.Contains(cfg.Unenforced, c):
			r.warn("controller "+c, "have the runtime delegate it to the container, then drop it from --unenforced",
				"not available to this container's group: allowed by --unenforced, its limits are not enforced")
		default:
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		r.fail("controllers", "run on a cgroup v2 node whose runtime delegates memory, cpu and pids to containers (the default of containerd, CRI-O and Docker on cgroup v2)",
			"%s not in %s", strings.Join(missing, " "), filepath.Join(mount, "cgroup.controllers"))
		return
	}
	r.ok("controllers", "memory cpu pids available to this container's group (serve enables them for its cells)")
}

// preflight is serve --preflight: the doctor's checks of root, the kernel
// and the cgroup delegation (not its scratch cell, which would compete
// with serve's own start-up), printed to w. It returns exitDoctorFailed
// when serve would run without the delegation it needs.
func preflight(s Shared, w io.Writer) int {
	var r report
	cfg := doctorConfig{Shared: s}
	checkDelegation(cfg, &r)
	r.print(w)
	if r.failed() {
		fmt.Fprintln(w, "\ncellgate serve --preflight: the cgroup is not delegated to cellgate: fix the FAIL lines above.")
		return exitDoctorFailed
	}
	return exitOK
}

// checkIDsMapped fails when the per-cell uids or their gid are not mapped
// in the process's user namespace (a pod with hostUsers: false maps 65536
// ids): every cell would fail to start.
func checkIDsMapped(cfg doctorConfig, r *report) {
	rg := sandbox.UIDRange(cfg.UIDs)
	uidMap, err1 := os.ReadFile("/proc/self/uid_map")
	gidMap, err2 := os.ReadFile("/proc/self/gid_map")
	if err1 != nil || err2 != nil {
		r.warn("user namespace", "", "cannot read /proc/self/uid_map or gid_map: %v", errors.Join(err1, err2))
		return
	}
	const fix = "pick per-cell uids and a gid the user namespace maps (/proc/self/uid_map), such as CELLGATE_UID_RANGE=10000-19999 CELLGATE_GID=10000 in a pod with hostUsers: false"
	switch {
	case !idsMapped(uidMap, uint64(rg.First), uint64(rg.Count)):
		r.fail("user namespace", fix, "the per-cell uids %s are not all mapped in this user namespace (uid_map: %s)", rg, strings.Join(strings.Fields(string(uidMap)), " "))
	case !idsMapped(gidMap, uint64(cfg.GID), 1):
		r.fail("user namespace", fix, "the per-cell gid %d is not mapped in this user namespace (gid_map: %s)", cfg.GID, strings.Join(strings.Fields(string(gidMap)), " "))
	default:
		r.ok("user namespace", "the per-cell uids %s and gid %d are mapped", rg, cfg.GID)
	}
}

// idsMapped reports whether ids first..first+count-1 are all inside the
// ranges of a uid_map or gid_map ("inside outside count" per line; the
// kernel keeps the inside ranges disjoint).
func idsMapped(idMap []byte, first, count uint64) bool {
	var covered uint64
	for _, line := range strings.Split(string(idMap), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		in, err1 := strconv.ParseUint(f[0], 10, 32)
		n, err2 := strconv.ParseUint(f[2], 10, 33)
		if err1 != nil || err2 != nil {
			continue
		}
		lo, hi := max(in, first), min(in+n, first+count)
		if hi > lo {
			covered += hi - lo
		}
	}
	return covered == count
}
