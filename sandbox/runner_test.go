package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
)

func TestRunArgvEnvDir(t *testing.T) {
	t.Setenv("SANDBOX_DAEMON_SECRET", "must-not-leak")
	cells := &fakeCells{}
	r := newTestRunner(t, cells)
	spec := helperSpec(t, "env", "two words", "", "-x=1")
	spec.Env = append(spec.Env, "A=1", "B=with spaces", "EMPTY=")
	dir := t.TempDir()
	spec.Dir = dir
	var out bytes.Buffer
	spec.Stdout = &out
	res, err := r.Run(context.Background(), spec)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.Cause != CauseOK || res.ExitCode != 0 {
		t.Fatalf("cause %s exit %d, want ok 0; output:\n%s", res.Cause, res.ExitCode, out.String())
	}
	want := []string{
		`arg="two words"`, `arg=""`, `arg="-x=1"`,
		`env="SANDBOX_HELPER=env"`, `env="A=1"`, `env="B=with spaces"`, `env="EMPTY="`,
		fmt.Sprintf("wd=%q", dir),
	}
	if got := lines(out.String()); !slices.Equal(got, want) {
		t.Errorf("worker saw\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if cells.gets != 1 || cells.releases != 1 {
		t.Errorf("cells: %d gets, %d releases; want 1 and 1", cells.gets, cells.releases)
	}
}

func TestRunDefaultsDirAndEmptyEnv(t *testing.T) {
	t.Setenv("SANDBOX_DAEMON_SECRET", "must-not-leak")
	r := newTestRunner(t, &fakeCells{})
	// The helper needs its selector in the environment, so check the
	// defaults with /bin/sh and an env of exactly one entry.
	sh := "/bin/sh"
	if _, err := os.Stat(sh); err != nil {
		t.Skipf("no %s: %v", sh, err)
	}
	var out bytes.Buffer
	res, err := r.Run(context.Background(), Spec{
		Path: sh, Args: []string{"sh", "-c", `pwd; echo "secret=${SANDBOX_DAEMON_SECRET-unset}"`},
		Stdout: &out,
	})
	if err != nil || res.Cause != CauseOK {
		t.Fatalf("Run: %v, cause %s", err, res.Cause)
	}
	if got, want := out.String(), "/\nsecret=unset\n"; got != want {
		t.Errorf("output %q, want %q (working directory / and nothing inherited)", got, want)
	}
}

func TestRunCauses(t *testing.T) {
	tests := []struct {
		name       string
		helper     string
		timeout    time.Duration
		cancel     bool
		wantCause  Cause
		wantCode   int
		wantSignal syscall.Signal
	}{
		{name: "exit 0", helper: "exit:0", wantCause: CauseOK},
		{name: "exit 3", helper: "exit:3", wantCause: CauseExit, wantCode: 3},
		{name: "own signal", helper: fmt.Sprintf("signal:%d", syscall.SIGTERM), wantCause: CauseSignal, wantCode: -1, wantSignal: syscall.SIGTERM},
		{name: "deadline", helper: "sleep", timeout: 100 * time.Millisecond, wantCause: CauseDeadline, wantCode: -1, wantSignal: syscall.SIGKILL},
		{name: "cancelled", helper: "sleep", cancel: true, wantCause: CauseKilled, wantCode: -1, wantSignal: syscall.SIGKILL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRunner(t, &fakeCells{})
			spec := helperSpec(t, tt.helper)
			spec.Timeout = tt.timeout
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				time.AfterFunc(100*time.Millisecond, cancel)
			}
			res, err := r.Run(ctx, spec)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.Cause != tt.wantCause || res.ExitCode != tt.wantCode || res.Signal != tt.wantSignal {
				t.Errorf("got cause %s code %d signal %v; want %s %d %v",
					res.Cause, res.ExitCode, res.Signal, tt.wantCause, tt.wantCode, tt.wantSignal)
			}
			if res.Started.IsZero() || res.Wall <= 0 {
				t.Errorf("Started %v Wall %v: want both set", res.Started, res.Wall)
			}
		})
	}
}

func TestRunStreams(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	input := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB: more than a pipe holds
	t.Run("separate", func(t *testing.T) {
		spec := helperSpec(t, "cat")
		var out, errOut bytes.Buffer
		spec.Stdin, spec.Stdout, spec.Stderr = bytes.NewReader(input), &out, &errOut
		if _, err := r.Run(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), input) {
			t.Errorf("stdout: %d bytes, want the %d of stdin", out.Len(), len(input))
		}
		if errOut.String() != "cat done\n" {
			t.Errorf("stderr %q, want %q", errOut.String(), "cat done\n")
		}
	})
	t.Run("shared", func(t *testing.T) {
		spec := helperSpec(t, "cat")
		var both bytes.Buffer
		spec.Stdin, spec.Stdout, spec.Stderr = strings.NewReader("x\n"), &both, &both
		if _, err := r.Run(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		if both.String() != "x\ncat done\n" {
			t.Errorf("combined output %q", both.String())
		}
	})
	t.Run("files", func(t *testing.T) {
		spec := helperSpec(t, "cat")
		f, err := os.CreateTemp(t.TempDir(), "out")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		spec.Stdin, spec.Stdout = strings.NewReader("to a file"), f
		if _, err := r.Run(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(f.Name())
		if string(b) != "to a file" {
			t.Errorf("file got %q", b)
		}
	})
	t.Run("unread stdin is not an error", func(t *testing.T) {
		spec := helperSpec(t, "exit:0")
		spec.Stdin = bytes.NewReader(input)
		if _, err := r.Run(context.Background(), spec); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Run("failing writer", func(t *testing.T) {
		spec := helperSpec(t, "cat")
		spec.Stdin, spec.Stdout = strings.NewReader("x"), failingWriter{}
		res, err := r.Run(context.Background(), spec)
		if !errors.Is(err, ErrStreams) {
			t.Errorf("Run: %v, want ErrStreams", err)
		}
		if res.Started.IsZero() {
			t.Errorf("Result not filled in along with ErrStreams")
		}
	})
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestRunFDHygiene(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	spec := helperSpec(t, "fds")
	var out bytes.Buffer
	spec.Stdout = &out
	spec.Stdin = strings.NewReader("") // a pipe of the parent's exists during the run
	if _, err := r.Run(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, line := range lines(out.String()) {
		var fd int
		var target string
		fmt.Sscan(line, &fd, &target)
		seen++
		if fd <= 2 {
			continue
		}
		// The Go runtime of the helper itself keeps cgroup files open
		// (cpu.max, for GOMAXPROCS); everything else is a leak.
		if strings.HasPrefix(target, "/sys/fs/cgroup/") {
			continue
		}
		t.Errorf("worker has fd %d -> %s; only 0, 1 and 2 may reach it (the inherited %s included)", fd, target, leakedPath)
	}
	if seen < 3 {
		t.Errorf("helper listed %d fds, want at least 0, 1, 2:\n%s", seen, out.String())
	}
}

func TestRunNoNewPrivsAndSession(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	spec := helperSpec(t, "status")
	var out bytes.Buffer
	spec.Stdout = &out
	if _, err := r.Run(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	got := lines(out.String())
	if !slices.Contains(got, "NoNewPrivs:\t1") {
		t.Errorf("worker status %q: want NoNewPrivs 1", got)
	}
	if slices.Contains(got, fmt.Sprintf("Pgrp:\t%d", syscall.Getpgrp())) {
		t.Errorf("worker is in the test's process group %d; want a group of its own", syscall.Getpgrp())
	}
}

func TestRunSetupErrors(t *testing.T) {
	t.Run("no cell", func(t *testing.T) {
		cause := errors.New("pool closed")
		r := newTestRunner(t, &fakeCells{getErr: cause})
		_, err := r.Run(context.Background(), helperSpec(t, "exit:0"))
		if !errors.Is(err, ErrNoCell) || !errors.Is(err, cause) {
			t.Errorf("Run: %v, want ErrNoCell wrapping %v", err, cause)
		}
	})
	t.Run("spawn", func(t *testing.T) {
		cells := &fakeCells{}
		r := newTestRunner(t, cells)
		path := "/nonexistent/worker"
		_, err := r.Run(context.Background(), Spec{Path: path, Stdout: &bytes.Buffer{}})
		if !errors.Is(err, ErrSpawn) || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) {
			t.Errorf("Run: %v, want ErrSpawn and fs.ErrNotExist naming %s", err, path)
		}
		if cells.releases != cells.gets || cells.gets != 1 {
			t.Errorf("cells: %d gets, %d releases; the cell of a failed spawn must go back", cells.gets, cells.releases)
		}
	})
	for _, tt := range []struct {
		name string
		spec Spec
	}{
		{"empty path", Spec{}},
		{"env without =", Spec{Path: "/bin/true", Env: []string{"NOEQUALS"}}},
		{"env empty key", Spec{Path: "/bin/true", Env: []string{"=x"}}},
		{"env NUL", Spec{Path: "/bin/true", Env: []string{"A=x\x00y"}}},
		{"arg NUL", Spec{Path: "/bin/true", Args: []string{"true", "a\x00"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cells := &fakeCells{}
			r := newTestRunner(t, cells)
			if _, err := r.Run(context.Background(), tt.spec); !errors.Is(err, ErrSpec) {
				t.Errorf("Run: %v, want ErrSpec", err)
			}
			if cells.gets != 0 {
				t.Errorf("a cell was taken for an invalid spec")
			}
		})
	}
}

// TestRunStartFailureUIDAfterEmpty checks that when an unconfined
// worker's start fails, its per-cell uid goes back only once the cell is
// empty: a start can fail after the worker ran (cgiDriver.start kills and
// reaps it when its pidfd cannot be dup'ed), and what it left in the cell
// runs under that uid. The dup's failure cannot be injected here; a start
// that fails at the exec takes the same way back, with a cell that still
// reports a process.
func TestRunStartFailureUIDAfterEmpty(t *testing.T) {
	tests := []struct {
		name  string
		stuck bool // the cell does not empty when killed
		// uids is how many uids are still out after Run.
		uids int
	}{
		{name: "emptied", uids: 0},
		{name: "not emptied", stuck: true, uids: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cells := &fakeCells{leftover: true, stuck: tt.stuck}
			prof, err := cgroup.NewProfile("", nil)
			if err != nil {
				t.Fatal(err)
			}
			r, err := New(Config{Cells: cells, Profile: prof, UIDs: UIDRange{First: 1_500_000_200, Count: 1},
				Timeout: time.Minute, EmptyWait: 50 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close() })
			uidsAtKill := -1
			cells.onKill = func() { uidsAtKill = r.UIDsInFlight() }

			_, err = r.Run(context.Background(), Spec{Path: "/nonexistent/worker"})
			if !errors.Is(err, ErrSpawn) {
				t.Fatalf("Run: %v, want ErrSpawn", err)
			}
			if uidsAtKill != 1 {
				t.Errorf("uids out when the cell was killed: %d, want 1 (the cell killed before the uid returns; -1: never killed)", uidsAtKill)
			}
			if got := r.UIDsInFlight(); got != tt.uids {
				t.Errorf("uids out after Run: %d, want %d", got, tt.uids)
			}
			if tt.stuck && !errors.Is(err, ErrCellNotEmpty) {
				t.Errorf("Run: %v, want ErrCellNotEmpty too", err)
			}
			if cells.releases != 1 {
				t.Errorf("cells released: %d, want 1", cells.releases)
			}
		})
	}
}

// TestRunWaitsWithoutThreadPerWorker checks that workers in flight do not
// each hold an OS thread: a blocking wait per worker would add one thread
// per worker.
// Workers are started one after the other (each says it is ready before the
// next starts), because concurrent forks do need threads for a moment (each
// vfork blocks its thread until the child execs) and the runtime keeps them.
func TestRunWaitsWithoutThreadPerWorker(t *testing.T) {
	const n = 64
	r := newTestRunner(t, &fakeCells{})
	before := threads(t)
	var wg sync.WaitGroup
	stdins := make([]*os.File, n)
	for i := range n {
		inR, inW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		stdins[i] = inW
		defer outW.Close()
		spec := helperSpec(t, "ready")
		spec.Stdin, spec.Stdout = inR, outW
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer inR.Close()
			defer outR.Close()
			res, err := r.Run(context.Background(), spec)
			if err != nil || res.Cause != CauseOK {
				t.Errorf("Run: %v, cause %s", err, res.Cause)
			}
		}()
		b := make([]byte, 6)
		if _, err := io.ReadFull(outR, b); err != nil {
			t.Fatalf("worker %d not ready: %v", i, err)
		}
	}
	during := threads(t)
	for _, w := range stdins {
		w.Close()
	}
	wg.Wait()
	if during-before >= n/2 {
		t.Errorf("threads went from %d to %d with %d workers in flight: waits hold OS threads", before, during, n)
	}
	t.Logf("threads: %d before, %d with %d workers in flight", before, during, n)
}

func threads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			var n int
			fmt.Sscan(v, &n)
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

func TestClassify(t *testing.T) {
	exit := func(c int) exitStatus { return exitStatus{code: c} }
	sig := func(s syscall.Signal) exitStatus { return exitStatus{code: -1, signal: s} }
	oom := cgroup.Usage{OOM: 1, OOMKill: 2, OOMGroupKill: 1}
	pids := cgroup.Usage{PidsMax: 3}
	tests := []struct {
		name     string
		st       exitStatus
		killedBy Cause
		usage    cgroup.Usage
		want     Cause
	}{
		{"success", exit(0), "", cgroup.Usage{}, CauseOK},
		{"success despite a late deadline", exit(0), CauseDeadline, cgroup.Usage{}, CauseOK},
		{"success although a fork was refused", exit(0), "", pids, CauseOK},
		{"non-zero exit", exit(1), "", cgroup.Usage{}, CauseExit},
		{"crash", sig(syscall.SIGSEGV), "", cgroup.Usage{}, CauseSignal},
		{"SIGKILL alone is not an OOM kill", sig(syscall.SIGKILL), "", cgroup.Usage{}, CauseSignal},
		{"OOM group kill", sig(syscall.SIGKILL), "", oom, CauseOOM},
		{"OOM kill of a child, worker exits 1", exit(1), "", cgroup.Usage{OOM: 1, OOMKill: 1}, CauseOOM},
		{"OOM kill at the tenant's budget, the cell under its own limit", sig(syscall.SIGKILL), "", cgroup.Usage{OOMKill: 1, OOMGroupKill: 1}, CauseOOMBudget},
		{"budget OOM wins over a deadline that fired while dying", sig(syscall.SIGKILL), CauseDeadline, cgroup.Usage{OOMKill: 1}, CauseOOMBudget},
		{"OOM wins over a deadline that fired while dying", sig(syscall.SIGKILL), CauseDeadline, oom, CauseOOM},
		{"deadline", sig(syscall.SIGKILL), CauseDeadline, cgroup.Usage{}, CauseDeadline},
		{"deadline though the worker caught it late", exit(2), CauseDeadline, cgroup.Usage{}, CauseDeadline},
		{"cancelled", sig(syscall.SIGKILL), CauseKilled, cgroup.Usage{}, CauseKilled},
		{"deadline wins over a refused fork", sig(syscall.SIGKILL), CauseDeadline, pids, CauseDeadline},
		{"fork refused, worker failed", exit(1), "", pids, CausePids},
		{"fork refused, worker crashed", sig(syscall.SIGABRT), "", pids, CausePids},
		{"memory.max hit without OOM kill", exit(1), "", cgroup.Usage{MemoryMax: 5}, CauseExit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.st, tt.killedBy, tt.usage); got != tt.want {
				t.Errorf("classify(%v, %q, %+v) = %s, want %s", tt.st, tt.killedBy, tt.usage, got, tt.want)
			}
		})
	}
}

// TestRunnerCloseEndsReaper: Close ends the reaper's goroutine and closes
// its fds.
func TestRunnerCloseEndsReaper(t *testing.T) {
	prof, err := cgroup.NewProfile("", nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Cells: &fakeCells{}, Profile: prof, AsSelf: true})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := r.Run(context.Background(), helperSpec(t, "exit:0")); err != nil || res.Cause != CauseOK {
		t.Fatalf("Run: %v, cause %s", err, res.Cause)
	}
	rp := r.reaper
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rp.done:
	default:
		t.Fatal("reaper goroutine still running after Close")
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/self/fd/%d", rp.epfd)); err == nil {
		if target, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", rp.epfd)); target == "anon_inode:[eventpoll]" {
			t.Errorf("reaper's epoll fd %d still open after Close", rp.epfd)
		}
	}
}

// endedCell is a cell that keeps a reading of its emptied counters
// (cgroup.Cell's UsageEnded), counting each kind of read.
type endedCell struct {
	fakeCell
	usage, ended int
}

func (c *endedCell) Usage() (cgroup.Usage, error) { c.usage++; return cgroup.Usage{}, nil }
func (c *endedCell) UsageEnded() (cgroup.Usage, error) {
	c.ended++
	return cgroup.Usage{}, nil
}

// TestEndedUsage: the late accounting of a cell found empty is read as
// its ended reading where the cell keeps one (the base of a recycled
// group's next request), and as a plain reading where the wait for it to
// empty failed, or the cell keeps none.
func TestEndedUsage(t *testing.T) {
	c := &endedCell{}
	if _, err := endedUsage(c, true); err != nil || c.ended != 1 || c.usage != 0 {
		t.Errorf("emptied: %d ended and %d plain readings, %v; want 1 and 0", c.ended, c.usage, err)
	}
	if _, err := endedUsage(c, false); err != nil || c.ended != 1 || c.usage != 1 {
		t.Errorf("not emptied: %d ended and %d plain readings, %v; want 1 and 1", c.ended, c.usage, err)
	}
	f := &fakeCell{c: &fakeCells{usage: cgroup.Usage{CPUUsageUsec: 7}}}
	if u, err := endedUsage(f, true); err != nil || u.CPUUsageUsec != 7 {
		t.Errorf("a cell without an ended reading: %+v, %v; want its Usage", u, err)
	}
}

// TestNoIDRefused: 4294967295 is (uid_t)-1 and (gid_t)-1, which setresuid
// and setresgid read as "leave it": a cell given it as its uid, gid or a
// supplementary group would keep the daemon's (root's). A Runner refuses
// it as its shared gid, and Run as a Spec's. Before, `cellgate run --user
// 4294967295` ran as the host's root with its capabilities.
func TestNoIDRefused(t *testing.T) {
	prof, err := cgroup.NewProfile("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Cells: &fakeCells{}, Profile: prof, GID: 4294967295}); err == nil || !strings.Contains(err.Error(), "no change") {
		t.Errorf("New with GID 4294967295: %v, want refused", err)
	}
	r := newTestRunner(t, &fakeCells{})
	for _, spec := range []Spec{
		{Path: "/bin/true", User: &Credential{UID: 4294967295, GID: 5000}},
		{Path: "/bin/true", User: &Credential{UID: 5000, GID: 4294967295}},
		{Path: "/bin/true", User: &Credential{UID: 5000, GID: 5000, Groups: []uint32{4294967295}}},
		{Path: "/bin/true", GID: 4294967295},
	} {
		if _, err := r.Run(context.Background(), spec); !errors.Is(err, ErrSpec) {
			t.Errorf("Run with user %+v gid %d: %v, want ErrSpec", spec.User, spec.GID, err)
		}
	}
}

// secondGetFails hands out one cell to requests (their context holds
// requestCtx) and refuses every other Get as a tree at --max-cells does;
// Gets of the warm refill, outside a request, are refused too.
type secondGetFails struct {
	fakeCells
	n atomic.Int32
}

type requestCtx struct{}

func (c *secondGetFails) Get(ctx context.Context, prof *cgroup.Profile) (Cell, error) {
	if ctx.Value(requestCtx{}) == nil || c.n.Add(1) > 1 {
		return nil, fmt.Errorf("mkdir c-2: %w", cgroup.ErrTooManyCells)
	}
	return c.fakeCells.Get(ctx, prof)
}

// TestRunResidentNoCellForInit: a resident request that gets its own cell
// but none for its init's (it needs two groups; at --max-cells) fails with
// ErrNoCell, a 503 with Retry-After, as one that gets no cell at all;
// before, the error was unmarked and answered 500, internal.
func TestRunResidentNoCellForInit(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a confined request's credentials need root")
	}
	launcher, err := confine.OpenLauncher("")
	if err != nil {
		t.Fatal(err)
	}
	defer launcher.Close()
	prof, err := cgroup.NewProfile("", nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Cells: &secondGetFails{}, Profile: prof, UIDs: UIDRange{First: 1_700_000_000, Count: 16}, Timeout: time.Minute, Launcher: launcher, ResidentCells: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	plan, err := confine.Prepare(&confine.Plan{Namespaces: confine.NSPID, Resident: true})
	if err != nil {
		t.Fatal(err)
	}
	if !r.residentFor(plan) {
		t.Fatal("the plan's cells are not resident: the case under test does not arise")
	}
	_, err = r.Run(context.WithValue(context.Background(), requestCtx{}, true), Spec{Path: "/bin/true", Args: []string{"true"}, Confine: plan})
	if !errors.Is(err, ErrNoCell) {
		t.Errorf("a resident request without a cell for its init: %v, want ErrNoCell", err)
	}
}
