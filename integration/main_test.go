package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// cellHelperEnv selects a worker role when the test binary is started as a
// cell's worker (see runCellHelper). Package sandbox gives workers exactly
// the environment of their Spec, so the role travels there.
const cellHelperEnv = "CELLGATE_CELL_HELPER"

// TestMain runs the worker roles, and otherwise the tests followed by the
// leak checks: every fd, goroutine, child process and cgroup base the tests
// made must be gone when they end.
func TestMain(m *testing.M) {
	if role, ok := os.LookupEnv(cellHelperEnv); ok {
		os.Exit(runCellHelper(role, os.Args[1:]))
	}
	fdsBefore := openFDs()
	goroutinesBefore := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 {
		if err := checkLeaks(fdsBefore, goroutinesBefore); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: leak check after the tests: %v\n", err)
			code = 1
		}
	}
	removeWorkerCopy()
	os.Exit(code)
}

// checkLeaks compares the process with how it was before the tests. The
// runtime and the pools' background removers finish their work
// asynchronously, so it looks again for a while before it calls a leak.
func checkLeaks(fdsBefore map[int]string, goroutinesBefore int) error {
	var err error
	for try := 0; try < 100; try++ {
		if err = leaks(fdsBefore, goroutinesBefore); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

func leaks(fdsBefore map[int]string, goroutinesBefore int) error {
	var problems []string
	for fd, target := range openFDs() {
		// The runtime's netpoller (epoll and its wake-up eventfd) is
		// created on first use and lives as long as the process.
		if target == "anon_inode:[eventpoll]" || target == "anon_inode:[eventfd]" {
			continue
		}
		if _, ok := fdsBefore[fd]; !ok {
			problems = append(problems, fmt.Sprintf("fd %d -> %s", fd, target))
		}
	}
	if n := runtime.NumGoroutine(); n > goroutinesBefore {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		problems = append(problems, fmt.Sprintf("%d goroutines, %d before the tests:\n%s", n, goroutinesBefore, buf))
	}
	if kids := children(); len(kids) > 0 {
		problems = append(problems, "child processes left (running or unreaped): "+strings.Join(kids, ", "))
	}
	basesMu.Lock()
	for _, b := range bases {
		if _, err := os.Stat(b); err == nil {
			problems = append(problems, "cgroup base left: "+b)
		}
	}
	basesMu.Unlock()
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

// bases are the cgroup bases the tests opened; none may remain.
var (
	basesMu sync.Mutex
	bases   []string
)

func trackBase(dir string) {
	basesMu.Lock()
	bases = append(bases, dir)
	basesMu.Unlock()
}

// openFDs lists this process's fds and what they point to.
func openFDs() map[int]string {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	out := map[int]string{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the directory listing's own fd, closed by now
		}
		out[fd] = target
	}
	return out
}

// children lists processes whose parent is this process, zombies included.
func children() []string {
	self := os.Getpid()
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		// ") S ppid ..."
		f := strings.Fields(s[i+1:])
		if len(f) >= 2 && f[1] == strconv.Itoa(self) {
			out = append(out, fmt.Sprintf("%d %s (state %s)", pid, s[strings.IndexByte(s, '(')+1:i], f[0]))
		}
	}
	return out
}

// workerCopy is the test binary copied where any uid can execute it: go test
// builds it in a directory only root may enter, and cells run as their own
// uids.
var (
	workerOnce sync.Once
	workerPath string
	workerErr  error
	workerDir  string
)

func workerBinary(t testing.TB) string {
	t.Helper()
	workerOnce.Do(func() {
		workerDir, workerErr = os.MkdirTemp("", "cellgate-worker-")
		if workerErr != nil {
			return
		}
		if workerErr = os.Chmod(workerDir, 0o755); workerErr != nil {
			return
		}
		workerPath = filepath.Join(workerDir, "worker")
		workerErr = copyFile(os.Args[0], workerPath, 0o755)
	})
	if workerErr != nil {
		t.Fatalf("copy the test binary for workers: %v", workerErr)
	}
	return workerPath
}

func removeWorkerCopy() {
	if workerDir != "" {
		os.RemoveAll(workerDir)
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// runCellHelper is a worker's body; its exit status is the worker's.
func runCellHelper(role string, args []string) int {
	arg := func(i int) string {
		if i < len(args) {
			return args[i]
		}
		return ""
	}
	switch role {
	case "probe": // a CGI program reporting what its cell can see and reach
		return runProbe()
	case "gocgi": // net/http/cgi serving args (BenchmarkCGIServers)
		return runGoCGI(args)
	case "touch": // touch arg(0) MiB, one byte a page, then exit 0
		mib, _ := strconv.Atoi(arg(0))
		b := make([]byte, mib<<20)
		for i := 0; i < len(b); i += os.Getpagesize() {
			b[i] = 1
		}
		runtime.KeepAlive(b)
		return 0
	case "wait": // say "ready <pid>", then live until stdin closes
		fmt.Printf("ready %d\n", os.Getpid())
		io.Copy(io.Discard, os.Stdin)
		return 0
	case "spin": // burn CPU for arg(0) of wall time
		d, _ := time.ParseDuration(arg(0))
		end := time.Now().Add(d)
		x := 0
		for time.Now().Before(end) {
			for i := 0; i < 1000; i++ {
				x += i
			}
		}
		runtime.KeepAlive(x)
		return 0
	case roleInit: // mount a /proc of this PID namespace, then be args as its pid 1
		return runAsInit(args)
	case roleLoris: // the slowloris attacker of BenchmarkGateSlowloris
		return runLoris(args)
	case roleSlowReader: // the slow-reader attacker of BenchmarkGateSlowReaders
		return runSlowReader(args)
	case "forkbomb": // start sleepers until the kernel refuses, then fail
		n := 0
		for {
			p, err := os.StartProcess("/bin/sleep", []string{"sleep", "1000"}, &os.ProcAttr{})
			if err != nil {
				fmt.Printf("started %d, then: %v\n", n, err)
				return 3
			}
			p.Release()
			n++
		}
	case "pid1": // print /proc/1/cmdline, quoted
		b, err := os.ReadFile("/proc/1/cmdline")
		if err != nil {
			fmt.Printf("read /proc/1/cmdline: %v\n", err)
			return 3
		}
		fmt.Printf("%q\n", b)
		return 0
	case "netns": // print the network namespace and whether loopback works
		ns, err := os.Readlink("/proc/self/ns/net")
		if err != nil {
			fmt.Printf("readlink /proc/self/ns/net: %v\n", err)
			return 3
		}
		lo := "up"
		if ln, err := net.Listen("tcp", "127.0.0.1:0"); err != nil {
			lo = err.Error()
		} else {
			ln.Close()
		}
		fmt.Printf("%s %s\n", ns, lo)
		return 0
	case "orphan": // leave `sleep arg(0)` behind in a session of its own, say "left"
		p, err := os.StartProcess("/bin/sleep", []string{"sleep", arg(0)}, &os.ProcAttr{Sys: &syscall.SysProcAttr{Setsid: true}})
		if err != nil {
			fmt.Printf("start sleep: %v\n", err)
			return 3
		}
		p.Release()
		fmt.Println("left")
		return 0
	case "killall": // kill(-1, SIGKILL): everything this uid may signal
		err := unix.Kill(-1, unix.SIGKILL)
		fmt.Printf("kill -1: %v\n", err)
		return 0
	case "snoop": // try to reach the processes whose pids are args
		failures := 0
		for _, a := range args {
			pid, _ := strconv.Atoi(a)
			if _, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err == nil {
				fmt.Printf("read /proc/%d/environ: allowed\n", pid)
				failures++
			}
			if err := unix.PtraceAttach(pid); err == nil {
				fmt.Printf("ptrace attach %d: allowed\n", pid)
				unix.PtraceDetach(pid)
				failures++
			}
			if err := unix.Kill(pid, unix.SIGKILL); err == nil {
				fmt.Printf("kill %d: allowed\n", pid)
				failures++
			}
		}
		return failures
	case "cgroupfs": // try to write to cgroupfs: its own cell and the mount
		failures := 0
		b, _ := os.ReadFile("/proc/self/cgroup")
		own := strings.TrimSpace(strings.TrimPrefix(string(b), "0::"))
		mnt := arg(0)
		for _, f := range []struct{ file, value string }{
			{filepath.Join(mnt, own, "memory.max"), "max"},
			{filepath.Join(mnt, own, "pids.max"), "max"},
			{filepath.Join(mnt, own, "cgroup.kill"), "1"},
			{filepath.Join(mnt, own, "..", "cgroup.procs"), strconv.Itoa(os.Getpid())},
			{filepath.Join(mnt, "cgroup.procs"), strconv.Itoa(os.Getpid())},
		} {
			if err := os.WriteFile(f.file, []byte(f.value), 0); err == nil {
				fmt.Printf("write %s=%s: allowed\n", f.file, f.value)
				failures++
			}
		}
		if err := os.Mkdir(filepath.Join(mnt, own, "..", "escape"), 0o755); err == nil {
			fmt.Println("mkdir beside its own cell: allowed")
			failures++
		}
		return failures
	}
	fmt.Fprintf(os.Stderr, "unknown %s=%q\n", cellHelperEnv, role)
	return 100
}
