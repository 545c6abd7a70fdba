package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cellgate/cellgate/confine"
	"golang.org/x/sys/unix"
)

// TestCheckModuleAutoload: doctor warns, with the fix, where a cell can
// have the kernel start modprobe, and says so where it cannot.
func TestCheckModuleAutoload(t *testing.T) {
	for _, tc := range []struct {
		name     string
		modprobe string
		err      error
		want     string // the finding's level, and a substring of its detail or fix
		has      string
	}{
		{"the default", "/sbin/modprobe\n", nil, "warn", "kernel.modprobe=/sbin/modprobe: a cell that executes a file of a format the kernel does not know"},
		{"the fix", "/sbin/modprobe\n", nil, "warn", "sysctl -w kernel.modprobe="},
		{"emptied", "\n", nil, "ok", "kernel.modprobe is empty"},
		{"no modules", "", fs.ErrNotExist, "ok", "the kernel loads no modules"},
		{"unreadable", "", fs.ErrPermission, "warn", "kernel.modprobe unreadable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r report
			checkModuleAutoload(&r, tc.modprobe, tc.err)
			if len(r.findings) != 1 {
				t.Fatalf("findings %+v, want one", r.findings)
			}
			f := r.findings[0]
			if f.level != tc.want || !strings.Contains(f.detail+" fix: "+f.fix, tc.has) {
				t.Errorf("%+v, want %s holding %q", f, tc.want, tc.has)
			}
		})
	}
}

// TestCheckRootRoutes: doctor warns, with the fix, where serve would
// refuse a route run as the host's root for want of CAP_SETPCAP, or one
// run as root of a user namespace of its own for want of setns or user
// namespaces.
func TestCheckRootRoutes(t *testing.T) {
	var r report
	checkRootRoutes(&r, nil, confine.ErrNoSetpcap)
	checkRootRoutes(&r, nil, nil)
	checkRootRoutes(&r, confine.ErrNoUserNS, nil)
	checkRootRoutes(&r, confine.ErrNoUserNS, confine.ErrNoSetpcap)
	if len(r.findings) != 4 {
		t.Fatalf("findings %+v, want four", r.findings)
	}
	if f := r.findings[2]; f.level != "warn" || !strings.Contains(f.detail, "unless it is run as the host's root") || !strings.Contains(f.fix, "allow setns of a user namespace") {
		t.Errorf("without setns of a user namespace: %+v, want a warning with the fix", f)
	}
	if f := r.findings[3]; f.level != "warn" || !strings.Contains(f.detail, "serve refuses every route run as root") {
		t.Errorf("without either: %+v, want a warning that every root route is refused", f)
	}
	if f := r.findings[0]; f.level != "warn" || !strings.Contains(f.detail, "serve refuses a route run as the host's root") || !strings.Contains(f.fix, "add CAP_SETPCAP") {
		t.Errorf("without CAP_SETPCAP: %+v, want a warning that serve refuses root routes, with the fix", f)
	}
	if f := r.findings[1]; f.level != "ok" || !strings.Contains(f.detail, "cannot write /proc/sys") {
		t.Errorf("with CAP_SETPCAP: %+v, want ok", f)
	}
}

// TestCheckRecursiveBinds: doctor says binds are made without their
// trees where mount_setattr is refused (by the kernel or a filter), with
// the fix, and ok where the call is there; this machine's answer is one
// of those.
func TestCheckRecursiveBinds(t *testing.T) {
	var r report
	checkRecursiveBinds(&r, unix.EPERM)
	checkRecursiveBinds(&r, unix.ENOSYS)
	checkRecursiveBinds(&r, nil)
	if len(r.findings) != 3 {
		t.Fatalf("findings %+v, want three", r.findings)
	}
	for _, f := range r.findings[:2] {
		if f.level != "warn" || !strings.Contains(f.detail, "binds are made without the host's mounts below them") || !strings.Contains(f.fix, "allows mount_setattr") {
			t.Errorf("mount_setattr refused: %+v, want a warning with the fix", f)
		}
	}
	if f := r.findings[2]; f.level != "ok" {
		t.Errorf("mount_setattr there: %+v, want ok", f)
	}
	if err := mountSetattrErr(); err != nil && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
		t.Errorf("mount_setattr changing nothing: %v, want nil, ENOSYS or EPERM", err)
	}
}

// TestCheckHugePages: the huge page pool is reported closed where the
// hugetlb controller closes it, fine where the host reserves none, and a
// warning naming the routes that can map it where it reserves some.
func TestCheckHugePages(t *testing.T) {
	pools := t.TempDir()
	for size, nr := range map[string]string{"hugepages-2048kB": "4\n", "hugepages-1048576kB": "1\n"} {
		os.MkdirAll(filepath.Join(pools, size), 0o755)
		os.WriteFile(filepath.Join(pools, size, "nr_hugepages"), []byte(nr), 0o644)
		os.WriteFile(filepath.Join(pools, size, "nr_overcommit_hugepages"), []byte("0\n"), 0o644)
	}
	pages, err := hugePagePool(pools)
	if pages != 5 || err != nil {
		t.Fatalf("hugePagePool = %d, %v; want 5", pages, err)
	}
	if pages, err := hugePagePool(filepath.Join(pools, "none")); pages != 0 || err != nil {
		t.Errorf("hugePagePool of a kernel without huge pages = %d, %v; want 0", pages, err)
	}
	for _, tc := range []struct {
		name   string
		pages  int
		err    error
		closed bool
		want   string // the finding's level, and a substring of its detail or fix
		has    string
	}{
		{"closed by the controller", 5, nil, true, "ok", "closed to every cell by the hugetlb controller"},
		{"none reserved", 0, nil, false, "ok", "the host reserves none"},
		{"reserved", 5, nil, false, "warn", "5 huge pages, not charged to a cell's memory.max: closed to confined cells by the seccomp filter, but a cell of a route with seccomp: off"},
		{"the fix", 5, nil, false, "warn", "enable the hugetlb controller"},
		{"unreadable", 0, fs.ErrPermission, false, "warn", "unreadable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r report
			checkHugePages(&r, tc.pages, tc.err, tc.closed)
			if len(r.findings) != 1 {
				t.Fatalf("findings %+v, want one", r.findings)
			}
			f := r.findings[0]
			if f.level != tc.want || !strings.Contains(f.detail+" fix: "+f.fix, tc.has) {
				t.Errorf("%+v, want %s holding %q", f, tc.want, tc.has)
			}
		})
	}
}
