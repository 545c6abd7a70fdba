package cgroup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Features is what Open found on this kernel and in the delegated subtree,
// probed once at start-up. It is a value; log it with slog ("features",
// f): it implements slog.LogValuer.
type Features struct {
	Kernel     string   // uname release
	Mount      string   // the cgroup2 mount point
	Base       string   // cellgate's base group
	Supervisor string   // the group the daemon moved itself to; "" if it did not move
	Available  []string // controllers in <base>/cgroup.controllers
	Enabled    []string // controllers enabled for tenants and cells (<base>/cells/cgroup.subtree_control)
	Unenforced []string // required controllers missing but allowed by the operator: their limits are not written

	Kill            bool   // cgroup.kill (5.14)
	CloneIntoCgroup bool   // a spawn with clone3 CLONE_INTO_CGROUP into a scratch group worked (5.7)
	CloneError      string // why that spawn failed, when it did
	MemoryPeak      bool   // memory.peak in a cell (5.19, needs memory)
	MemoryPeakReset bool   // memory.peak writable: a reset for the reads through one fd (6.12), which a reused cell needs for a peak per request
	PidsPeak        bool   // pids.peak in a cell (6.1, needs pids)
	MemoryOOMGroup  bool   // memory.oom.group in a cell (4.19, needs memory)
	// HugeTLBClosed: the hugetlb controller reaches the base, and every
	// hugetlb limit of <base>/cells is 0, so that no cell can take a page
	// of the host's huge page pool (closeHugeTLB).
	HugeTLBClosed bool
}

// LogValue renders the features as a slog group.
func (f Features) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("kernel", f.Kernel),
		slog.String("mount", f.Mount),
		slog.String("base", f.Base),
		slog.String("supervisor", f.Supervisor),
		slog.String("available", strings.Join(f.Available, " ")),
		slog.String("enabled", strings.Join(f.Enabled, " ")),
		slog.String("unenforced", strings.Join(f.Unenforced, " ")),
		slog.Bool("cgroup_kill", f.Kill),
		slog.Bool("clone_into_cgroup", f.CloneIntoCgroup),
		slog.String("clone_error", f.CloneError),
		slog.Bool("memory_peak", f.MemoryPeak),
		slog.Bool("memory_peak_reset", f.MemoryPeakReset),
		slog.Bool("pids_peak", f.PidsPeak),
		slog.Bool("memory_oom_group", f.MemoryOOMGroup),
		slog.Bool("hugetlb_closed", f.HugeTLBClosed),
	)
}

// SpawnTrue is the default spawn probe: it runs /bin/true inside the group
// whose directory fd is cgroupFD with clone3 CLONE_INTO_CGROUP (Go's
// SysProcAttr.UseCgroupFD, which has no fallback: without clone3 or
// CLONE_INTO_CGROUP the spawn fails) and waits for it.
func SpawnTrue(cgroupFD int) error {
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgroupFD}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("spawn /bin/true into a cgroup (clone3 CLONE_INTO_CGROUP, Linux 5.7): %w", err)
	}
	return nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// hasFile reports whether the control file name exists in the group dirfd.
func hasFile(dirfd int, name string) (bool, error) {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	return err == nil, err
}

// writable reports whether the control file name in the group dirfd may
// be written: cgroupfs gives a file without a write handler no write
// bit, whoever asks (memory.peak is 0444 before 6.12, 0644 from it).
func writable(dirfd int, name string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return false, err
	}
	return st.Mode&0o200 != 0, nil
}

// probe checks cgroup.kill, memory.peak, pids.peak, which accounting
// files cells have, and a spawn into a scratch group under cells/.
func (t *Tree) probe(ctx context.Context, spawn func(int) error) error {
	dir := filepath.Join(t.cells, probeDir)
	if err := t.ops.mkdir(dir); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("probe: mkdir %s: %w", dir, err)
	}
	fd, err := openDir(dir)
	if err != nil {
		rmdirRetry(ctx, t.ops, dir)
		return fmt.Errorf("probe: %w", err)
	}
	for _, f := range []struct {
		name string
		dst  *bool
		ctrl string
	}{
		{"cgroup.kill", &t.feat.Kill, ""},
		{"memory.peak", &t.feat.MemoryPeak, "memory"},
		{"pids.peak", &t.feat.PidsPeak, "pids"},
		{"memory.oom.group", &t.feat.MemoryOOMGroup, "memory"},
	} {
		if f.ctrl != "" && !slices.Contains(t.enabled, f.ctrl) {
			continue
		}
		if *f.dst, err = hasFile(fd, f.name); err != nil {
			break
		}
	}
	if err == nil && t.feat.MemoryPeak {
		t.feat.MemoryPeakReset, err = writable(fd, "memory.peak")
	}
	if err == nil {
		var absent []string
		for i, name := range acctFiles {
			var ok bool
			if ok, err = hasFile(fd, name); err != nil {
				break
			}
			if t.acctAbsent[i] = !ok; !ok {
				absent = append(absent, name)
			}
		}
		if err == nil && len(absent) > 0 {
			t.log.Info("accounting files absent in cells: not read, reported in Usage.Missing", "files", strings.Join(absent, " "))
		}
	}
	var serr error
	if err == nil {
		if serr = spawn(fd); serr != nil {
			t.feat.CloneError = serr.Error()
		} else {
			t.feat.CloneIntoCgroup = true
		}
	}
	rctx, cancel := context.WithTimeout(ctx, t.sweepTime)
	rerr := removeGroup(rctx, t.ops, &Cell{path: dir, fd: fd})
	cancel()
	unix.Close(fd)
	switch {
	case err != nil:
		return fmt.Errorf("probe %s: %w", dir, err)
	case rerr != nil:
		return fmt.Errorf("probe: %w", rerr)
	case !t.feat.Kill:
		return fmt.Errorf("probe %s: no cgroup.kill on kernel %s: %w (cellgate needs Linux 5.14; run cellgate doctor)", dir, t.feat.Kernel, ErrUnsupported)
	case !t.feat.CloneIntoCgroup:
		return fmt.Errorf("probe %s: %w: %w (cellgate needs Linux 5.7 with clone3 allowed by seccomp; run cellgate doctor)", dir, ErrUnsupported, serr)
	}
	// Degraded on purpose: the cells work, the accounting lacks a figure.
	if slices.Contains(t.enabled, "memory") && !t.feat.MemoryPeak {
		t.log.Warn("no memory.peak on this kernel (needs 5.19): per-request peak memory is not reported", "kernel", t.feat.Kernel)
	}
	if slices.Contains(t.enabled, "pids") && !t.feat.PidsPeak {
		t.log.Warn("no pids.peak on this kernel (needs 6.1): per-request peak process count is not reported", "kernel", t.feat.Kernel)
	}
	return nil
}
