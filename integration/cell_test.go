package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/sandbox"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Package sandbox on a kernel with the memory, cpu and pids controllers:
// whole runs through Runner.Run, each in a cell of its own under its own
// uid, with the limits enforced by the kernel.

// cellEnv is a Runner over a real cgroup pool in a private base.
type cellEnv struct {
	runner *sandbox.Runner
	tree   *cgroup.Tree
	mount  string
	base   string
}

// newCellEnv opens a tree on a private base under requireKernel's group
// (limits enforced), a pool and a Runner with per-cell uids; all are closed
// at the end of the test, and the base must be gone.
func newCellEnv(t testing.TB) *cellEnv {
	t.Helper()
	dir := requireKernel(t)
	mnt, err := cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "base")
	trackBase(base)
	tree, err := cgroup.Open(context.Background(), cgroup.Options{Mount: mnt, Base: base})
	if err != nil {
		t.Fatalf("cgroup.Open %s: %v", base, err)
	}
	pool := cgroup.NewPool(tree, cgroup.PoolOptions{MaxIdle: 8})
	prof := profile(t, nil)
	r, err := sandbox.New(sandbox.Config{Cells: sandbox.PoolCells{Pool: pool}, Profile: prof, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if n := r.UIDsInFlight(); n != 0 {
			t.Errorf("%d per-cell uids still handed out at the end of the test", n)
		}
		r.Close()
		if err := pool.Close(); err != nil {
			t.Errorf("Pool.Close: %v", err)
		}
		if err := tree.Close(); err != nil {
			t.Errorf("Tree.Close: %v", err)
		}
		if _, err := os.Stat(base); err == nil {
			t.Errorf("base %s left behind", base)
		}
	})
	return &cellEnv{runner: r, tree: tree, mount: mnt, base: base}
}

// profile builds the default tenant's profile for res.
func profile(t testing.TB, res *specs.LinuxResources) *cgroup.Profile {
	t.Helper()
	p, err := cgroup.NewProfile("", res)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// limits returns resources with a memory limit (bytes, 0 = none), a CPU cap
// (thousandths, 0 = none) and a pids limit (0 = none).
func limits(memory int64, milliCPU int64, pids int64) *specs.LinuxResources {
	res := &specs.LinuxResources{}
	if memory > 0 {
		res.Memory = &specs.LinuxMemory{Limit: &memory}
	}
	if milliCPU > 0 {
		quota, period := milliCPU*100, uint64(100000)
		res.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if pids > 0 {
		res.Pids = &specs.LinuxPids{Limit: &pids}
	}
	return res
}

// worker returns a Spec running the test binary's worker role.
func worker(t testing.TB, role string, args ...string) sandbox.Spec {
	t.Helper()
	w := workerBinary(t)
	return sandbox.Spec{Path: w, Args: append([]string{w}, args...), Env: []string{cellHelperEnv + "=" + role}}
}

// shell returns a Spec running /bin/sh -c script.
func shell(script string) sandbox.Spec {
	return sandbox.Spec{Path: "/bin/sh", Args: []string{"sh", "-c", script}, Env: []string{"PATH=/usr/bin:/bin"}}
}

// waiting is a "wait" worker running in its own cell: it has said it is
// ready and lives until release is called.
type waiting struct {
	pid  int
	in   *os.File
	done chan struct{}
	res  sandbox.Result
	err  error
}

// startWaiting runs a "wait" worker in a cell of prof and returns once it is
// ready.
func startWaiting(t testing.TB, env *cellEnv, prof *cgroup.Profile) *waiting {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	w := &waiting{in: inW, done: make(chan struct{})}
	spec := worker(t, "wait")
	spec.Profile, spec.Stdin, spec.Stdout = prof, inR, outW
	go func() {
		defer close(w.done)
		w.res, w.err = env.runner.Run(context.Background(), spec)
		inR.Close()
		outW.Close()
	}()
	line, err := bufio.NewReader(outR).ReadString('\n')
	outR.Close()
	if _, serr := fmt.Sscanf(line, "ready %d", &w.pid); err != nil || serr != nil {
		inW.Close()
		<-w.done
		t.Fatalf("waiting worker did not start: %q, %v; Run: %v %+v", line, err, w.err, w.res)
	}
	t.Cleanup(func() { w.release() })
	return w
}

// release closes the worker's stdin and waits for its Run to return.
func (w *waiting) release() (sandbox.Result, error) {
	w.in.Close()
	<-w.done
	return w.res, w.err
}

// TestCellOOMKillsOnlyTheHog: a worker touching 256 MiB in a 32 MiB cell,
// and a neighbour cell running at the same time: only the hog dies, and the
// cause is read from memory.events.
func TestCellOOMKillsOnlyTheHog(t *testing.T) {
	env := newCellEnv(t)
	neighbour := startWaiting(t, env, profile(t, limits(64<<20, 0, 0)))

	spec := worker(t, "touch", "256")
	spec.Profile = profile(t, limits(32<<20, 0, 0))
	res, err := env.runner.Run(context.Background(), spec)
	if err != nil {
		t.Fatalf("hog: %v", err)
	}
	if res.Cause != sandbox.CauseOOM || !res.Usage.OOMKilled() {
		t.Errorf("hog: cause %s, usage %+v; want oom with oom_kill in memory.events", res.Cause, res.Usage)
	}

	nres, err := neighbour.release()
	if err != nil {
		t.Fatalf("neighbour: %v", err)
	}
	if nres.Cause != sandbox.CauseOK || nres.ExitCode != 0 || nres.Usage.OOMKilled() {
		t.Errorf("neighbour: cause %s exit %d usage %+v; want ok, 0, no OOM kill", nres.Cause, nres.ExitCode, nres.Usage)
	}
}

// TestCellCPUThrottled: a shell spinning at 0.2 CPU for 2 s of wall time
// (the deadline ends it) is throttled, as the kernel's own counters say
// (nr_throttled, throttled_usec). Its CPU against the wall time is logged,
// not asserted: a ratio of two timings on an emulated machine, whose ticks
// come late. The spinner is a shell loop, not
// a Go helper: under emulation a Go runtime spends a good part of a
// second of CPU starting up, which at 0.2 CPU is seconds of wall time.
func TestCellCPUThrottled(t *testing.T) {
	env := newCellEnv(t)
	spec := shell(`while :; do :; done`)
	spec.Profile = profile(t, limits(0, 200, 0))
	spec.Timeout = 2 * time.Second
	res, err := env.runner.Run(context.Background(), spec)
	if err != nil || res.Cause != sandbox.CauseDeadline {
		t.Fatalf("spinner: %v, cause %s; want the deadline to end it", err, res.Cause)
	}
	cpu := time.Duration(res.Usage.CPUUsageUsec) * time.Microsecond
	if res.Usage.NrThrottled == 0 || res.Usage.ThrottledUsec == 0 {
		t.Errorf("spinner: nr_throttled %d, throttled_usec %d; want both > 0", res.Usage.NrThrottled, res.Usage.ThrottledUsec)
	}
	t.Logf("cpu %s, throttled %d times for %s, wall %s", cpu, res.Usage.NrThrottled, time.Duration(res.Usage.ThrottledUsec)*time.Microsecond, res.Wall)
}

// TestCellForkBomb: forking stops at pids.max, the worker fails, the cause
// is pids, and the cell (with its 30-odd sleepers) still ends cleanly.
func TestCellForkBomb(t *testing.T) {
	env := newCellEnv(t)
	spec := worker(t, "forkbomb")
	spec.Profile = profile(t, limits(0, 0, 32))
	var out bytes.Buffer
	spec.Stdout = &out
	res, err := env.runner.Run(context.Background(), spec)
	if err != nil {
		t.Fatalf("fork bomb: %v", err)
	}
	if res.Cause != sandbox.CausePids || res.ExitCode != 3 {
		t.Errorf("fork bomb: cause %s exit %d (%q); want pids, 3", res.Cause, res.ExitCode, out.String())
	}
	if res.Usage.PidsMax == 0 {
		t.Errorf("pids.events max = 0; want the refused forks counted")
	}
	if res.Usage.PidsPeak > 32 {
		t.Errorf("pids.peak %d above pids.max 32", res.Usage.PidsPeak)
	}
	t.Logf("%s pids.peak %d, forks refused %d", strings.TrimSpace(out.String()), res.Usage.PidsPeak, res.Usage.PidsMax)
}

// TestCellDaemonDies: a worker that double-forks a sleeping daemon (in a
// session of its own) and exits: the daemon is gone when Run returns.
func TestCellDaemonDies(t *testing.T) {
	env := newCellEnv(t)
	// The outer shell waits (through the command substitution's pipe) until
	// the daemon has printed its pid and let go of the pipe.
	spec := shell(`pid=$( (setsid sh -c 'echo $$; exec sleep 1000 >/dev/null 2>&1' &) ); echo "$pid"`)
	var out bytes.Buffer
	spec.Stdout = &out
	res, err := env.runner.Run(context.Background(), spec)
	if err != nil || res.Cause != sandbox.CauseOK {
		t.Fatalf("Run: %v, cause %s", err, res.Cause)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("worker printed %q, want the daemon's pid", out.String())
	}
	if alive(pid) {
		t.Errorf("daemon %d still alive after Run returned", pid)
	}
}

// TestCellDeadlineKillsTree: the deadline kills the worker and every
// descendant.
func TestCellDeadlineKillsTree(t *testing.T) {
	env := newCellEnv(t)
	spec := shell(`sleep 1000 & echo $!; (sleep 1000 & echo $!; wait) & wait`)
	spec.Timeout = 2 * time.Second
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	spec.Stdout = outW
	var res sandbox.Result
	var runErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		res, runErr = env.runner.Run(context.Background(), spec)
		outW.Close()
	}()
	b, _ := io.ReadAll(outR)
	outR.Close()
	<-done
	if runErr != nil {
		t.Fatal(runErr)
	}
	if res.Cause != sandbox.CauseDeadline {
		t.Errorf("cause %s, want deadline", res.Cause)
	}
	pids := strings.Fields(string(b))
	if len(pids) != 2 {
		t.Fatalf("worker printed %q, want two pids", b)
	}
	for _, p := range pids {
		pid, _ := strconv.Atoi(p)
		if alive(pid) {
			t.Errorf("descendant %d alive after the deadline", pid)
		}
	}
}

// TestCellMemoryPeak: a worker touching 64 MiB reports memory.peak of at
// least that.
func TestCellMemoryPeak(t *testing.T) {
	env := newCellEnv(t)
	spec := worker(t, "touch", "64")
	spec.Profile = profile(t, limits(256<<20, 0, 0))
	res, err := env.runner.Run(context.Background(), spec)
	if err != nil || res.Cause != sandbox.CauseOK {
		t.Fatalf("Run: %v, cause %s", err, res.Cause)
	}
	if res.Usage.MemoryPeak < 64<<20 {
		t.Errorf("memory.peak %d, want >= 64 MiB (%d)", res.Usage.MemoryPeak, 64<<20)
	}
}

// TestCellsSequentialAndConcurrent runs 1000 cells one after the other and
// 200 at once; TestMain then checks that no fd, goroutine, child process or
// cgroup directory is left.
func TestCellsSequentialAndConcurrent(t *testing.T) {
	env := newCellEnv(t)
	noop := noopBinary(t)
	spec := sandbox.Spec{Path: noop}
	for i := range 1000 {
		res, err := env.runner.Run(context.Background(), spec)
		if err != nil || res.Cause != sandbox.CauseOK {
			t.Fatalf("sequential cell %d: %v, cause %s", i, err, res.Cause)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	ran := make(chan sandbox.Result, 200)
	for range 200 {
		wg.Go(func() {
			res, err := env.runner.Run(context.Background(), spec)
			if err == nil && res.Cause != sandbox.CauseOK {
				err = fmt.Errorf("cause %s exit %d", res.Cause, res.ExitCode)
			}
			if err != nil {
				errs <- err
				return
			}
			ran <- res
		})
	}
	wg.Wait()
	close(errs)
	close(ran)
	for err := range errs {
		t.Errorf("concurrent cell: %v", err)
	}
	// Each cell ran under a per-cell uid, and two cells that ran at the
	// same time under different ones: a uid is taken before Started and
	// returned after Started+Wall, so two such spans that overlap are
	// two uids out at once.
	var results []sandbox.Result
	for res := range ran {
		if res.UID == 0 || res.Started.IsZero() {
			t.Errorf("concurrent cell: uid %d, started %v; want a per-cell uid and a start", res.UID, res.Started)
		}
		results = append(results, res)
	}
	overlapping := 0
	for i, a := range results {
		for _, b := range results[i+1:] {
			if a.Started.Before(b.Started.Add(b.Wall)) && b.Started.Before(a.Started.Add(a.Wall)) {
				overlapping++
				if a.UID == b.UID {
					t.Errorf("two cells running at once under one uid %d (started %v for %s, %v for %s)", a.UID, a.Started, a.Wall, b.Started, b.Wall)
				}
			}
		}
	}
	t.Logf("%d pairs of cells ran at once", overlapping)
	if overlapping == 0 && len(results) > 1 {
		t.Error("no two of the 200 concurrent cells ran at once: the uid check above tested nothing")
	}
	if n := env.runner.UIDsInFlight(); n != 0 {
		t.Errorf("%d uids in flight after all runs returned", n)
	}
	cells, _ := filepath.Glob(filepath.Join(env.tree.CellsPath(), "*", "c*"))
	t.Logf("cell groups not yet removed by the pool's background removers: %d", len(cells))
}

// TestCellsCannotReachEachOther: a worker that runs kill(-1, SIGKILL), then
// tries to read the environment of, ptrace and kill a concurrent cell's
// worker and the daemon, leaves both unharmed; a worker cannot write to
// cgroupfs.
func TestCellsCannotReachEachOther(t *testing.T) {
	env := newCellEnv(t)
	victim := startWaiting(t, env, nil)

	var out bytes.Buffer
	spec := worker(t, "killall")
	spec.Stdout = &out
	res, err := env.runner.Run(context.Background(), spec)
	if err != nil || res.Cause != sandbox.CauseOK {
		t.Fatalf("kill -1 worker: %v, cause %s", err, res.Cause)
	}

	spec = worker(t, "snoop", strconv.Itoa(victim.pid), strconv.Itoa(os.Getpid()))
	spec.Stdout = &out
	res, err = env.runner.Run(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if res.Cause != sandbox.CauseOK {
		t.Errorf("snooping worker reached another cell or the daemon (exit %d):\n%s", res.ExitCode, out.String())
	}

	spec = worker(t, "cgroupfs", env.mount)
	spec.Stdout = &out
	res, err = env.runner.Run(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if res.Cause != sandbox.CauseOK {
		t.Errorf("worker wrote to cgroupfs (exit %d):\n%s", res.ExitCode, out.String())
	}

	vres, err := victim.release()
	if err != nil {
		t.Fatal(err)
	}
	if vres.Cause != sandbox.CauseOK || vres.ExitCode != 0 {
		t.Errorf("victim: cause %s exit %d signal %v; want ok (untouched)", vres.Cause, vres.ExitCode, vres.Signal)
	}
	if vres.UID == res.UID {
		t.Errorf("victim and attacker ran as the same uid %d", res.UID)
	}
}

// alive reports whether pid is a process that is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
