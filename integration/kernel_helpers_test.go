package integration

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cellgate/cellgate/integration/vm"
)

// required reports whether make test asked for the kernel tests to run:
// then a missing kernel feature fails the test instead of skipping it.
func required() bool { return os.Getenv("CELLGATE_REQUIRE_KERNEL_TESTS") == "1" }

// skipOrFail skips the test with the reason, or fails it when the kernel
// tests are required.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if required() {
		t.Fatalf("CELLGATE_REQUIRE_KERNEL_TESTS=1 but %s", msg)
	}
	t.Skip(msg)
}

// cgroup2Mount returns the mount point of the cgroup2 hierarchy.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts ... - fstype source superopts
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("no cgroup2 mount in /proc/self/mountinfo")
}

// requireKernel returns a fresh cgroup v2 directory for the test, with the
// memory, cpu and pids controllers enabled for its children, removed at the
// end of the test. It skips (or fails, under make test) when the process is
// not root or the kernel has no delegatable cgroup v2 with those controllers.
func requireKernel(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "kernel tests need root (euid %d)", os.Geteuid())
	}
	mnt, err := cgroup2Mount()
	if err != nil {
		skipOrFail(t, "no cgroup v2: %v", err)
	}
	self, err := ownGroup()
	if err != nil {
		skipOrFail(t, "own cgroup: %v", err)
	}
	parent := filepath.Join(mnt, self)
	ctrl, err := os.ReadFile(filepath.Join(parent, "cgroup.subtree_control"))
	if err != nil {
		skipOrFail(t, "read %s: %v", filepath.Join(parent, "cgroup.subtree_control"), err)
	}
	have := strings.Fields(string(ctrl))
	for _, c := range []string{"memory", "cpu", "pids"} {
		if !contains(have, c) {
			skipOrFail(t, "controller %q not enabled in %s/cgroup.subtree_control (have %q): run the integration tests with make test", c, parent, have)
		}
	}
	dir := filepath.Join(parent, fmt.Sprintf("cgtest-%d-%d", os.Getpid(), testSeq.Add(1)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("mkdir %s: %v", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+memory +cpu +pids"), 0); err != nil {
		os.Remove(dir)
		t.Fatalf("enable controllers in %s: %v", dir, err)
	}
	t.Cleanup(func() { removeTree(t, dir) })
	return dir
}

var testSeq atomic.Int64

func ownGroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest, nil
		}
	}
	return "", fmt.Errorf("no 0:: line in /proc/self/cgroup")
}

// removeTree kills everything under dir and removes its groups, deepest first.
func removeTree(t testing.TB, dir string) {
	t.Helper()
	var dirs []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	for i := len(dirs) - 1; i >= 0; i-- {
		for try := 0; ; try++ {
			err := os.Remove(dirs[i])
			if err == nil || os.IsNotExist(err) {
				break
			}
			if try == 200 {
				t.Errorf("remove %s: %v", dirs[i], err)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// cellgateBin returns the path of the built cellgate binary (make test
// builds it and sets CELLGATE_BIN).
func cellgateBin(t testing.TB) string {
	t.Helper()
	p := os.Getenv("CELLGATE_BIN")
	if p == "" {
		skipOrFail(t, "CELLGATE_BIN is not set (make test builds bin/cellgate and sets it)")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("CELLGATE_BIN=%s: %v", p, err)
	}
	return p
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// requireMicroVM skips a test that changes the kernel's machine-wide
// settings (its core_pattern, its modprobe helper) unless it runs in the
// microVM that make test boots (bin/vmrun gives it vm.GuestTmp as
// TMPDIR): on a host they are its administrator's, even for a moment.
func requireMicroVM(t testing.TB) {
	t.Helper()
	if os.Getenv("TMPDIR") != vm.GuestTmp {
		t.Skip("changes the kernel's machine-wide helpers: runs only in the microVM that make test boots")
	}
}
