package sandbox

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
	"golang.org/x/sys/unix"
)

// The test binary doubles as the worker: with SANDBOX_HELPER set in its
// environment, TestMain runs the named helper instead of the tests.
const helperEnv = "SANDBOX_HELPER"

// leakedPath is a file TestMain opens without O_CLOEXEC before any Runner
// exists, as if the daemon had inherited it from its parent.
var leakedPath string

func TestMain(m *testing.M) {
	if h, ok := os.LookupEnv(helperEnv); ok {
		os.Exit(runHelper(h))
	}
	if os.Args[0] == confine.InitArg0 { // a confined cell's init (Config.Launcher)
		os.Exit(confine.InitMain(os.Args[1:]))
	}
	f, err := os.CreateTemp("", "sandbox-leak-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	leakedPath = f.Name()
	f.Close()
	fd, err := unix.Open(leakedPath, unix.O_RDONLY, 0) // no O_CLOEXEC on purpose
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	unix.Close(fd)
	os.Remove(leakedPath)
	os.Exit(code)
}

// runHelper is the worker side.
func runHelper(name string) int {
	verb, arg, _ := strings.Cut(name, ":")
	switch verb {
	case "exit":
		var code int
		fmt.Sscan(arg, &code)
		return code
	case "env": // argv, then the environment, one per line
		for _, a := range os.Args[1:] {
			fmt.Printf("arg=%q\n", a)
		}
		for _, e := range os.Environ() {
			fmt.Printf("env=%q\n", e)
		}
		wd, _ := os.Getwd()
		fmt.Printf("wd=%q\n", wd)
		return 0
	case "fds": // every open fd and what it is
		for fd := 0; fd < 1024; fd++ {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
				continue
			}
			target, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
			fmt.Printf("%d %s\n", fd, target)
		}
		return 0
	case "status": // selected lines of /proc/self/status
		b, _ := os.ReadFile("/proc/self/status")
		for _, line := range strings.Split(string(b), "\n") {
			k, _, _ := strings.Cut(line, ":")
			switch k {
			case "NoNewPrivs", "Uid", "Gid", "Groups":
				fmt.Println(line)
			}
		}
		fmt.Printf("Pgrp:\t%d\n", unix.Getpgrp())
		return 0
	case "signal":
		var sig int
		fmt.Sscan(arg, &sig)
		syscall.Kill(os.Getpid(), syscall.Signal(sig))
		time.Sleep(time.Minute)
		return 99
	case "sleep":
		time.Sleep(time.Hour)
		return 99
	case "cat":
		io.Copy(os.Stdout, os.Stdin)
		fmt.Fprintln(os.Stderr, "cat done")
		return 0
	case "ready": // say so, then wait for stdin to close
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
	return 100
}

// helperSpec returns a Spec that runs the named helper.
func helperSpec(t testing.TB, name string, args ...string) Spec {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Spec{Path: exe, Args: append([]string{exe}, args...), Env: []string{helperEnv + "=" + name}}
}

// fakeCells hands out cells without a cgroup: the worker is spawned as a
// plain child, which is enough for everything but the kernel's accounting.
type fakeCells struct {
	getErr error
	usage  cgroup.Usage
	// leftover: each cell holds a process (Populated) until it is
	// killed; with stuck, killing it does not empty it either, and
	// WaitEmpty waits for its context.
	leftover, stuck bool
	// onKill, when set, runs in each Kill.
	onKill func()

	mu             sync.Mutex
	gets, releases int
	inUse          map[*fakeCell]bool
}

type fakeCell struct {
	c         *fakeCells
	killed    int
	populated bool // guarded by c.mu
}

func (f *fakeCells) Get(ctx context.Context, prof *cgroup.Profile) (Cell, error) {
	if prof == nil {
		return nil, fmt.Errorf("nil profile")
	}
	if f.getErr != nil {
		return nil, f.getErr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets++
	c := &fakeCell{c: f, populated: f.leftover}
	if f.inUse == nil {
		f.inUse = map[*fakeCell]bool{}
	}
	f.inUse[c] = true
	return c, nil
}

func (f *fakeCells) Release(c Cell) {
	fc := c.(*fakeCell)
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.inUse[fc] {
		panic("release of a cell not in use")
	}
	delete(f.inUse, fc)
	f.releases++
}

func (c *fakeCell) FD() int                      { return -1 }
func (c *fakeCell) Path() string                 { return "/fake" }
func (c *fakeCell) Usage() (cgroup.Usage, error) { return c.c.usage, nil }
func (c *fakeCell) CPUBefore() uint64            { return 0 }
func (c *fakeCell) Unenforced() []string         { return []string{"memory", "cpu", "pids"} }

func (c *fakeCell) Kill() error {
	if c.c.onKill != nil {
		c.c.onKill()
	}
	c.c.mu.Lock()
	defer c.c.mu.Unlock()
	c.killed++
	c.populated = c.populated && c.c.stuck
	return nil
}

func (c *fakeCell) Populated() (bool, error) {
	c.c.mu.Lock()
	defer c.c.mu.Unlock()
	return c.populated, nil
}

func (c *fakeCell) WaitEmpty(ctx context.Context) error {
	if p, _ := c.Populated(); !p {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

// newTestRunner returns a Runner over fake cells that runs workers as the
// test's own user.
func newTestRunner(t testing.TB, cells Cells) *Runner {
	t.Helper()
	prof, err := cgroup.NewProfile("", nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Cells: cells, Profile: prof, AsSelf: true, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// lines splits output into lines.
func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// recyclingCells is fakeCells that also takes cells back for reuse
// (Recycler), counting each.
type recyclingCells struct {
	*fakeCells
	recycled int
}

func (f *recyclingCells) Recycle(c Cell) {
	f.fakeCells.Release(c)
	f.mu.Lock()
	f.recycled++
	f.mu.Unlock()
}
