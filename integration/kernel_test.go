package integration

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// helperEnv selects what TestHelperProcess does when the test binary is
// re-executed as a child.
const helperEnv = "CELLGATE_TEST_HELPER"

// TestHelperProcess is not a test: it is the body of the children that
// other tests start by re-executing the test binary with helperEnv set.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "":
		return
	case "hog":
		// Touch 256 MiB, one byte a page, so that all of it is charged.
		b := make([]byte, 256<<20)
		for i := 0; i < len(b); i += os.Getpagesize() {
			b[i] = 1
		}
		os.Exit(0)
	case "calm":
		// Hold a little memory and stay alive until the parent closes
		// stdin, so that it runs while the hog is killed.
		b := make([]byte, 8<<20)
		for i := 0; i < len(b); i += os.Getpagesize() {
			b[i] = 1
		}
		io.Copy(io.Discard, os.Stdin)
		os.Exit(int(b[0]) - 1)
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(3)
	}
}

// TestOOMKillsOnlyTheCell starts a child that touches 256 MiB in a group
// limited to 32 MiB without swap, and a child in a sibling group at the same
// time: the kernel kills the first one only, and says so in memory.events.
func TestOOMKillsOnlyTheCell(t *testing.T) {
	base := requireKernel(t)
	hogDir := makeGroup(t, base, "hog", map[string]string{
		"memory.max":      strconv.Itoa(32 << 20),
		"memory.swap.max": "0",
	})
	calmDir := makeGroup(t, base, "calm", nil)

	calm, calmIn := startHelper(t, "calm", calmDir)
	hog, hogIn := startHelper(t, "hog", hogDir)
	hogIn.Close()

	hogErr := hog.Wait()
	var ee *exec.ExitError
	if !errors.As(hogErr, &ee) {
		t.Fatalf("hog in %s (memory.max 32 MiB) touching 256 MiB: want it killed, got %v", hogDir, hogErr)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("hog: want killed by SIGKILL (the OOM killer), got %v", ee)
	}
	if n := memoryEvent(t, hogDir, "oom_kill"); n < 1 {
		t.Errorf("%s/memory.events: oom_kill = %d, want >= 1", hogDir, n)
	}

	// calm exits 0 only after reading stdin to its end: it was alive
	// throughout the hog's run and death.
	calmIn.Close()
	if err := calm.Wait(); err != nil {
		t.Errorf("calm child in sibling group %s: want exit 0, got %v", calmDir, err)
	}
	if n := memoryEvent(t, calmDir, "oom_kill"); n != 0 {
		t.Errorf("%s/memory.events: oom_kill = %d, want 0", calmDir, n)
	}
}

// makeGroup creates the cgroup parent/name and writes the given interface
// files into it. requireKernel's cleanup removes it.
func makeGroup(t testing.TB, parent, name string, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("mkdir %s: %v", dir, err)
	}
	for f, v := range files {
		p := filepath.Join(dir, f)
		if err := os.WriteFile(p, []byte(v), 0); err != nil {
			t.Fatalf("write %s=%q: %v", p, v, err)
		}
	}
	return dir
}

// startHelper re-executes the test binary as TestHelperProcess in role,
// started directly inside the cgroup dir (clone3 CLONE_INTO_CGROUP). It
// returns the running command and the write end of its stdin.
func startHelper(t testing.TB, role, dir string) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open cgroup %s: %v", dir, err)
	}
	defer unix.Close(fd)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+role)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("stdin pipe for %s: %v", role, err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s in %s: %v", role, dir, err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, in
}

// memoryEvent returns one counter of dir/memory.events.
func memoryEvent(t testing.TB, dir, key string) int64 {
	t.Helper()
	p := filepath.Join(dir, "memory.events")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if ok && k == key {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("parse %s in %s: %v", line, p, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in %s: %q", key, p, b)
	return 0
}
