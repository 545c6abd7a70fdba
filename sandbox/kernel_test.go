package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
	"golang.org/x/sys/unix"
)

// These tests run real cells on whatever cgroup2 hierarchy the host has, with
// every controller allowed to be missing (the development machines' cgroup2
// has none): spawn into the cell, cgroup.kill, populated, cpu.stat. Limits
// are tested in package integration, in the microVM. They need root and skip
// without it.

// skipOrFail skips, or fails when CELLGATE_REQUIRE_KERNEL_TESTS=1 asks for
// the kernel tests to run.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CELLGATE_REQUIRE_KERNEL_TESTS") == "1" {
		t.Fatalf("CELLGATE_REQUIRE_KERNEL_TESTS=1 but "+format, args...)
	}
	t.Skipf(format, args...)
}

// cgroup2Mount returns the cgroup2 mount point, or "".
func cgroup2Mount(t testing.TB) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4]
			}
		}
	}
	return ""
}

// newKernelRunner returns a Runner over a real cgroup pool in a private base
// under the cgroup2 mount, giving each cell its own uid from uids, and the
// base's path; everything is removed at the end of the test. opts set
// more of the Runner's Config.
func newKernelRunner(t testing.TB, uids UIDRange, opts ...func(*Config)) (*Runner, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "real cells need root (euid %d)", os.Geteuid())
	}
	mnt := cgroup2Mount(t)
	if mnt == "" {
		skipOrFail(t, "no cgroup2 mount")
	}
	base := filepath.Join(mnt, fmt.Sprintf("cellgate-sandbox-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	tree, err := cgroup.Open(context.Background(), cgroup.Options{Mount: mnt, Base: base, Unenforced: []string{"memory", "cpu", "pids"}})
	if err != nil {
		skipOrFail(t, "cannot open a private cgroup base %s: %v", base, err)
	}
	pool := cgroup.NewPool(tree, cgroup.PoolOptions{})
	prof, err := cgroup.NewProfile("", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Cells: PoolCells{Pool: pool}, Profile: prof, UIDs: uids, Timeout: time.Minute}
	for _, o := range opts {
		o(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		if err := pool.Close(); err != nil {
			t.Errorf("close pool: %v", err)
		}
		if err := tree.Close(); err != nil {
			t.Errorf("close tree: %v", err)
		}
		if _, err := os.Stat(base); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("base %s left behind (stat: %v)", base, err)
		}
	})
	return r, base
}

func TestKernelPerCellCredentials(t *testing.T) {
	uids := UIDRange{First: 1_500_000_000, Count: 8}
	r, _ := newKernelRunner(t, uids)
	var out bytes.Buffer
	res, err := r.Run(context.Background(), Spec{
		Path: "/bin/sh", Args: []string{"sh", "-c", "id -u; id -g; id -G; grep NoNewPrivs /proc/self/status"},
		Env: []string{"PATH=/usr/bin:/bin"}, Stdout: &out, Stderr: &out,
	})
	if err != nil || res.Cause != CauseOK {
		t.Fatalf("Run: %v, cause %s, output %q", err, res.Cause, out.String())
	}
	got := lines(out.String())
	want := []string{strconv.Itoa(int(res.UID)), strconv.Itoa(DefaultGID), strconv.Itoa(DefaultGID), "NoNewPrivs:\t1"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("worker reported %q, want %q (its own uid, the shared gid, no supplementary groups)", got, want)
	}
	if res.UID < uids.First || res.UID >= uids.First+uids.Count {
		t.Errorf("Result.UID %d outside %s", res.UID, uids)
	}
	if len(res.Unenforced) == 0 && len(res.Usage.Missing) > 0 {
		t.Errorf("accounting files missing (%q) but no controller reported unenforced", res.Usage.Missing)
	}
	if r.UIDsInFlight() != 0 {
		t.Errorf("%d uids still handed out after Run returned", r.UIDsInFlight())
	}
}

// TestKernelNoUID holds the only uid of the range with a running cell: the
// next Run fails at once with ErrNoUID, and the uid comes back once the
// first cell is empty.
func TestKernelNoUID(t *testing.T) {
	r, _ := newKernelRunner(t, UIDRange{First: 1_500_000_100, Count: 1})
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inR.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	done := make(chan error, 1)
	go func() {
		_, err := r.Run(context.Background(), Spec{Path: "/bin/sh", Args: []string{"sh", "-c", "echo up; read x"}, Stdin: inR, Stdout: outW})
		outW.Close()
		done <- err
	}()
	if _, err := bufio.NewReader(outR).ReadString('\n'); err != nil {
		t.Fatalf("first cell did not start: %v", err)
	}
	if _, err := r.Run(context.Background(), Spec{Path: "/bin/true"}); !errors.Is(err, ErrNoUID) {
		t.Errorf("second Run while the only uid is in use: %v, want ErrNoUID", err)
	}
	inW.Close()
	if err := <-done; err != nil {
		t.Fatalf("first Run: %v", err)
	}
	if res, err := r.Run(context.Background(), Spec{Path: "/bin/true"}); err != nil || res.Cause != CauseOK {
		t.Errorf("Run after the first cell ended: %v, cause %s", err, res.Cause)
	}
}

// TestKernelDaemonDies: a worker that leaves a daemon behind (a background
// child in a session of its own, reparented when the worker exits) and
// exits: the daemon is gone when Run returns, and the stdout pipe it held
// does not keep Run waiting.
func TestKernelDaemonDies(t *testing.T) {
	r, _ := newKernelRunner(t, DefaultUIDRange)
	var out bytes.Buffer
	res, err := r.Run(context.Background(), Spec{
		Path: "/bin/sh", Args: []string{"sh", "-c", "setsid sleep 1000 & echo $!"},
		Env: []string{"PATH=/usr/bin:/bin"}, Stdout: &out,
	})
	if err != nil || res.Cause != CauseOK {
		t.Fatalf("Run: %v, cause %s", err, res.Cause)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("worker printed %q, want the daemon's pid", out.String())
	}
	if alive(pid) {
		t.Errorf("daemon pid %d still alive after Run returned", pid)
	}
}

// TestKernelDeadlineKillsTree: the deadline kills the worker and all its
// descendants.
func TestKernelDeadlineKillsTree(t *testing.T) {
	r, _ := newKernelRunner(t, DefaultUIDRange)
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	var res Result
	done := make(chan error, 1)
	go func() {
		var err error
		res, err = r.Run(context.Background(), Spec{
			Path: "/bin/sh", Args: []string{"sh", "-c", "sleep 1000 & echo $!; (sleep 1000 & echo $!; wait) & wait"},
			Env: []string{"PATH=/usr/bin:/bin"}, Stdout: outW, Timeout: 500 * time.Millisecond,
		})
		outW.Close()
		done <- err
	}()
	sc := bufio.NewScanner(outR)
	var pids []int
	for sc.Scan() {
		pid, err := strconv.Atoi(sc.Text())
		if err != nil {
			t.Fatalf("worker printed %q", sc.Text())
		}
		pids = append(pids, pid)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if res.Cause != CauseDeadline {
		t.Errorf("cause %s, want deadline", res.Cause)
	}
	if len(pids) != 2 {
		t.Fatalf("got pids %v, want two sleepers", pids)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("descendant %d alive after the deadline", pid)
		}
	}
}

// alive reports whether pid is a process that is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// A warm confined cell whose init died while it waited in the pool (here
// killed; an OOM kill of its tenant is the same) never ran the request
// that takes it: the request runs on another cell, once, with its body.
// The init dies before the request (the take finds it gone) or in the
// hand-off, before the exec frame is sent (from Spec.Started, which
// precedes it). The cells' init is the Go init of this test binary
// (TestMain), with a plan of nothing.
func TestKernelWarmCellInitDied(t *testing.T) {
	for _, tc := range []struct {
		name      string
		inHandOff bool
	}{
		{"killed while idle", false},
		{"killed in the hand-off", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, plan, pid := newWarmKernelRunner(t)
			kill := func() {
				unix.Kill(pid, unix.SIGKILL)
				// Until all its threads are gone (a leader is a zombie
				// before), without reaping it: that is the Runner's.
				var info unix.Siginfo
				if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
					t.Errorf("wait for the killed init %d: %v", pid, err)
				}
			}
			if !tc.inHandOff {
				kill()
			}
			var out bytes.Buffer
			starts := 0
			res, err := r.Run(context.Background(), Spec{
				Path: "/bin/cat", Confine: plan, Stdin: strings.NewReader("abcde"), Stdout: &out, Stderr: os.Stderr,
				Started: func(string, uint64) {
					if starts++; starts == 1 && tc.inHandOff {
						kill()
					}
				},
			})
			if err != nil || res.Cause != CauseOK || out.String() != "abcde" {
				t.Fatalf("Run: %v, cause %s, output %q; want the request served with its body", err, res.Cause, out.String())
			}
			// Killed while idle, the cell is passed over at the take
			// (no hit: the request sets its own cell up); in the
			// hand-off, the request started on it, then once more.
			wantStarts, wantHits := 1, uint64(0)
			if tc.inHandOff {
				wantStarts, wantHits = 2, 1
			}
			if hits, _ := r.WarmStats(); starts != wantStarts || hits < wantHits || hits > wantHits+1 {
				t.Errorf("%d starts and %d warm hits, want %d and %d (or one more on a cell set up meanwhile)", starts, hits, wantStarts, wantHits)
			}
			for r.TeardownsPending() > 0 {
				time.Sleep(time.Millisecond)
			}
			if alive(pid) || zombieOf(pid) {
				t.Errorf("the dead init %d was not reaped", pid)
			}
		})
	}
}

// newWarmKernelRunner is a Runner keeping one warm confined cell (the
// test binary its init, an empty plan), its plan, and the pid of the
// cell's init once it is ready.
func newWarmKernelRunner(t *testing.T) (*Runner, *confine.Prepared, int) {
	t.Helper()
	launcher, err := confine.OpenLauncher("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { launcher.Close() })
	r, _ := newKernelRunner(t, DefaultUIDRange, func(c *Config) { c.Launcher, c.WarmCells = launcher, 1 })
	plan, err := confine.Prepare(&confine.Plan{})
	if err != nil {
		t.Fatal(err)
	}
	r.Warm(nil, plan)
	return r, plan, warmInit(t, r)
}

// A warm cell's init that dies once it has taken the exec frame may have
// started the program (here it has): the request is not run again.
func TestKernelWarmCellInitDiedAfterHandOff(t *testing.T) {
	r, plan, pid := newWarmKernelRunner(t)
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	go func() {
		// Once the program runs, its init dies.
		if _, err := bufio.NewReader(outR).ReadString('\n'); err == nil {
			unix.Kill(pid, unix.SIGKILL)
		}
	}()
	starts := 0
	res, err := r.Run(context.Background(), Spec{
		Path: "/bin/sh", Args: []string{"sh", "-c", "echo ran; exec sleep 60"}, Env: []string{"PATH=/usr/bin:/bin"},
		Confine: plan, Stdout: outW, Timeout: 30 * time.Second, Started: func(string, uint64) { starts++ },
	})
	outW.Close()
	if starts != 1 || res.Cause == CauseOK {
		t.Errorf("Run: %v, cause %s, %d starts; want one start, not served", err, res.Cause, starts)
	}
}

// warmInit waits for r's one warm cell and returns its init's pid.
func warmInit(t testing.TB, r *Runner) int {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		r.warm.mu.Lock()
		for _, s := range r.warm.sets {
			if len(s.ready) > 0 {
				pid := s.ready[0].proc.Pid
				r.warm.mu.Unlock()
				return pid
			}
		}
		r.warm.mu.Unlock()
	}
	t.Fatal("no warm cell ready within 30s")
	return 0
}

// zombieOf reports whether pid is a zombie child of this process.
func zombieOf(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !alive(pid) && statPPid(b) == os.Getpid()
}

// TestKernelUnwarm: Unwarm ends a route's warm cells at once (serve calls
// it for the routes of a replaced policy once it has drained): before,
// they stayed until warmIdle passed without a request, and a removed
// tenant's group, which holds them, stayed as long.
func TestKernelUnwarm(t *testing.T) {
	r, plan, pid := newWarmKernelRunner(t)
	r.Unwarm(nil, plan)
	// Well within warmIdle and the view's age (either would end it too):
	// the refill ends the cell as soon as it wakes.
	within := min(warmIdle, viewMaxAge) / 2
	for deadline := time.Now().Add(within); alive(pid) && !zombieOf(pid); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the warm cell's init %d still runs %s after Unwarm", pid, within)
		}
	}
	if n := r.WarmReady(); n != 0 {
		t.Errorf("%d warm cells ready after Unwarm, want 0", n)
	}
	// A later request of the route sets a cell up again.
	res, err := r.Run(context.Background(), Spec{Path: "/bin/true", Args: []string{"true"}, Confine: plan, Timeout: 30 * time.Second})
	if err != nil || res.Cause != CauseOK {
		t.Errorf("a request after Unwarm: %v, cause %s", err, res.Cause)
	}
}

// TestKernelSpawnerDiesHavingCloned: when the init spawner dies with a
// request after it cloned a process into the request's cell, that
// process is ended and the daemon starts the cell's init itself, in the
// same cell. The cell was ended with cgroup.kill, and a group killed so
// kills what is cloned into it next: the init died at its start and the
// request failed, the recovery never working where it was needed.
func TestKernelSpawnerDiesHavingCloned(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		skipOrFail(t, "no C compiler for the fake spawner: %v", err)
	}
	dir := t.TempDir()
	init, spawner := filepath.Join(dir, "cellgate-init"), filepath.Join(dir, "spawner")
	for _, build := range [][]string{
		{"-O2", "-static", "-w", "-o", init, "../cmd/cellgate-init/cellgate-init.c"},
		{"-O2", "-w", "-DINIT=\"" + init + "\"", "-DSPAWN_CGROUP=" + strconv.Itoa(confine.SpawnCgroup), "-o", spawner, "testdata/deadspawner.c"},
	} {
		if out, err := exec.Command(cc, build...).CombinedOutput(); err != nil {
			t.Fatalf("cc %q: %v\n%s", build, err, out)
		}
	}
	launcher, err := confine.OpenLauncher(spawner)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { launcher.Close() })
	r, _ := newKernelRunner(t, DefaultUIDRange, func(c *Config) { c.Launcher, c.InitSpawner = launcher, true })
	plan, err := confine.Prepare(&confine.Plan{Namespaces: confine.NSPID})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Run(context.Background(), Spec{Path: "/bin/true", Args: []string{"true"}, Confine: plan, Timeout: 30 * time.Second})
	if err != nil || res.Cause != CauseOK {
		t.Errorf("the request the spawner died with: %v, cause %s; want it run by an init the daemon started", err, res.Cause)
	}
}
