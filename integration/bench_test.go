package integration

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
	"github.com/cellgate/cellgate/sandbox"
)

// BenchmarkCellLifecycle compares a whole cell (pool Get, spawn with
// CLONE_INTO_CGROUP under a per-cell uid and no_new_privs, pidfd wait,
// populated check, accounting read, Release) with a plain os/exec run of the
// same no-op static binary, interleaved in one run so both see the same
// machine. It reports the cell/plain ratio of the median and the 99th
// percentile latency at 1, 8 and 32 concurrent loops.
//
// In the microVM (make bench) the limits are enforced; on a host without
// controllers (the development machines) the cells run unenforced, which
// measures spawn, kill and accounting but no limit writes.
func BenchmarkCellLifecycle(b *testing.B) {
	env := newBenchEnv(b)
	noop := noopBinary(b)
	for _, par := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("concurrent=%d", par), func(b *testing.B) {
			benchPairs(b, env, sandbox.Spec{Path: noop}, par, nil)
		})
	}
}

// BenchmarkCellConfined prices the confinement: the same no-op binary in a
// cell with its init and no namespace, then each namespace alone, then all
// of them without and with the seccomp filter (the default), each against a
// plain exec in the same run (p50-ratio), with the cell's memory.peak; and
// the full confinement at 8 and 32 concurrent loops, also with network
// namespaces made ahead and with warm cells, and once with the init in Go.
// The cost of one namespace is its line's ratio minus the init-only
// line's.
func BenchmarkCellConfined(b *testing.B) {
	env := newBenchEnv(b)
	noop := noopBinary(b)
	cellgateBin(b) // the init is beside it
	spec := func(b *testing.B, o confine.Options) sandbox.Spec {
		o.Programs = filepath.Dir(noop)
		plan, err := confine.Build(o, confine.OSFS{})
		if err != nil {
			b.Fatal(err)
		}
		prep, err := confine.Prepare(plan)
		if err != nil {
			b.Fatal(err)
		}
		return sandbox.Spec{Path: noop, Confine: prep}
	}
	all := confine.AllNamespaces
	variants := []struct {
		name string
		opts confine.Options
		par  []int
	}{
		{"init-only", confine.Options{Share: all, NoSeccomp: true}, []int{1}},
		{"uts", confine.Options{Share: all &^ confine.NSUTS, NoSeccomp: true}, []int{1}},
		{"ipc", confine.Options{Share: all &^ confine.NSIPC, NoSeccomp: true}, []int{1}},
		{"pid", confine.Options{Share: all &^ confine.NSPID, NoSeccomp: true}, []int{1}},
		{"mount", confine.Options{Share: all &^ confine.NSMount, NoSeccomp: true}, []int{1}},
		{"net", confine.Options{Share: all &^ confine.NSNet, NoSeccomp: true}, []int{1}},
		{"all-no-seccomp", confine.Options{NoSeccomp: true}, []int{1}},
		{"all", confine.Options{}, []int{1, 8, 32}},
	}
	for _, v := range variants {
		for _, par := range v.par {
			b.Run(fmt.Sprintf("%s/concurrent=%d", v.name, par), func(b *testing.B) {
				benchPairs(b, env, spec(b, v.opts), par, nil)
			})
		}
	}
	// The same with the init in Go (confine.Init: cellgate itself, what
	// serve runs when cellgate-init is not installed), the C init's
	// baseline.
	b.Run("all-go-init/concurrent=1", func(b *testing.B) {
		l, err := confine.OpenLauncher(cellgateBin(b))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { l.Close() })
		r := newConfinedEnv(b, sandbox.Config{Launcher: l})
		benchPairs(b, r, spec(b, confine.Options{}), 1, nil)
	})
	// The same with network namespaces made ahead (serve's default,
	// --net-namespaces): the init's clone, made under the runtime's
	// ForkLock, then creates none; netns-hit-% is the share of cells that
	// found one. Then with mount templates (serve's default,
	// --mount-templates): each cell's init copies the route's view, made
	// once, instead of building it; alone, then with network namespaces
	// made ahead too. Then with the init spawner (serve's default,
	// --init-spawner): the init is cloned by a long-lived cellgate-init
	// instead of forked and executed by the daemon; with everything
	// made ahead, as serve runs cold cells, and with no namespace at all.
	for _, v := range []struct {
		name                      string
		opts                      confine.Options
		netns, templates, spawner bool
		par                       []int
	}{
		{"all-netns-ahead", confine.Options{}, true, false, false, []int{1, 8, 32}},
		{"all-templates", confine.Options{}, false, true, false, []int{1}},
		{"all-templates-netns-ahead", confine.Options{}, true, true, false, []int{1, 8, 32}},
		{"init-only-spawner", confine.Options{Share: all, NoSeccomp: true}, false, false, true, []int{1}},
		{"all-ahead-spawner", confine.Options{}, true, true, true, []int{1, 8, 32}},
	} {
		for _, par := range v.par {
			b.Run(fmt.Sprintf("%s/concurrent=%d", v.name, par), func(b *testing.B) {
				cfg := sandbox.Config{MountTemplates: v.templates, InitSpawner: v.spawner}
				if v.netns {
					cfg.NetNamespaces = par
				}
				r := newConfinedEnv(b, cfg)
				s := spec(b, v.opts)
				// As serve runs cold cells: accounting read after the answer.
				s.LateUsage = v.netns && v.templates && v.spawner
				r.Run(context.Background(), s) // starts the pool and the spawner, asks for the template
				time.Sleep(time.Second)
				benchPairs(b, r, s, par, nil)
				if hits, misses := r.NetnsStats(); !v.templates && hits+misses > 0 {
					b.ReportMetric(100*float64(hits)/float64(hits+misses), "netns-hit-%")
				}
			})
		}
	}
	// The price of a teardown on the request's path, in the same run:
	// every cell torn down before Run returns (Config.Teardowns < 0), cold
	// and pooled, against the teardown-bg lines (the default).
	for _, tc := range []struct {
		name      string
		teardowns int
	}{{"inline", -1}, {"bg", 0}} {
		b.Run("all-teardown-"+tc.name+"/concurrent=1", func(b *testing.B) {
			r := newConfinedEnv(b, sandbox.Config{Teardowns: tc.teardowns})
			benchPairs(b, r, spec(b, confine.Options{}), 1, nil)
		})
		b.Run("all-warm-teardown-"+tc.name+"/pause=ready/concurrent=1", func(b *testing.B) {
			r := newConfinedEnv(b, sandbox.Config{Teardowns: tc.teardowns, WarmCells: 1})
			s := spec(b, confine.Options{})
			r.Warm(s.Profile, s.Confine)
			benchPairs(b, r, s, 1, whenReady(r))
		})
	}
	// The same full confinement with cells set up ahead (sandbox's warm
	// cells, as serve runs them): a request that finds one pays a hand-off
	// and the program's fork and exec. Setting cells up still costs the
	// same CPU, so back to back (pause 0) the set runs dry as soon as
	// requests come faster than cells are set up; with a pause between
	// rounds (a server below saturation) every request finds one. The
	// share of requests that found one is reported (warm-hit-%). The
	// "ready" pause waits (untimed) until the round's cells are set up,
	// the last round's torn down and the machine idle: the price of a
	// pooled, pre-initialised cell itself, on an otherwise idle machine.
	// Back to back (pause 0), a request also meets the work the last one
	// left (its put back, its group's recycling, the kernel's deferred
	// frees), as a server's next request does.
	// all-warm-usage-first is the same pooled cell with its accounting
	// read before Run returns (as with Server-Timing), in the same run.
	type warmLine struct {
		name, pause string
		par         int
		late        bool
		opts        confine.Options
		reuse       bool // groups: reused
	}
	// all-resident is the same with resident cells (serve's default,
	// --resident-cells): an init and its namespaces serve request after
	// request, each program cloned into a group of its own; a request
	// that finds one ready pays neither the init's start nor its end.
	lines := []warmLine{{"all-warm-usage-first", "ready", 1, false, confine.Options{}, false}}
	for _, par := range []int{1, 8, 32} {
		for _, pause := range []string{"0s", "100ms", "ready"} {
			lines = append(lines, warmLine{"all-warm", pause, par, true, confine.Options{}, false})
		}
	}
	for _, par := range []int{1, 8, 32} {
		for _, pause := range []string{"0s", "100ms", "ready"} {
			lines = append(lines, warmLine{"all-resident", pause, par, true, confine.Options{}, false})
		}
	}
	// all-resident-reused is all-resident with groups: reused: each
	// request's group is one an earlier request used, emptied and handed
	// on, none made or removed per request.
	for _, par := range []int{1, 8, 32} {
		lines = append(lines, warmLine{"all-resident-reused", "ready", par, true, confine.Options{}, true})
	}
	lines = append(lines, warmLine{"all-resident-reused", "0s", 1, true, confine.Options{}, true})
	// What a resident cell does per request beyond a warm one's hand-off:
	// the emptying of its IPC namespace and the program's loading of the
	// filter.
	lines = append(lines,
		warmLine{"resident-host-ipc", "ready", 1, true, confine.Options{Share: confine.NSIPC}, false},
		warmLine{"resident-no-seccomp", "ready", 1, true, confine.Options{NoSeccomp: true}, false})
	for _, l := range lines {
		pause, par := l.pause, l.par
		b.Run(fmt.Sprintf("%s/pause=%s/concurrent=%d", l.name, pause, par), func(b *testing.B) {
			// As serve runs them: set up from the route's mount
			// template, in a network namespace made ahead, the init
			// cloned by the spawner, accounting read after the answer.
			cfg := sandbox.Config{WarmCells: par, MountTemplates: true, NetNamespaces: par, InitSpawner: true}
			if strings.Contains(l.name, "resident") {
				// serve's --resident-cells: a set grows as its
				// requests need.
				cfg.WarmCells, cfg.ResidentCells = 0, max(par, 16)
			}
			warm := newConfinedEnv(b, cfg)
			s := spec(b, l.opts)
			s.LateUsage = l.late
			if l.reuse {
				// The runner's profile (newConfinedEnv), as a route with
				// groups: reused has it.
				s.Profile = benchProfile(b).Reused()
			}
			warm.Warm(s.Profile, s.Confine)
			time.Sleep(time.Second) // let the first cells be set up
			// A set's target grows with the requests that found it
			// short: one untimed round of par requests grows it to par,
			// so that the timed rounds find what a server that has been
			// serving par at once finds (else the first round's misses,
			// cold starts, were up to a fifth of a line's requests).
			var wg sync.WaitGroup
			for range par {
				wg.Go(func() {
					res, err := warm.Run(context.Background(), s)
					if err == nil {
						err = res.Account()
					}
					if err != nil {
						b.Error(err)
					}
				})
			}
			wg.Wait()
			whenReady(warm)(par)
			hits0, misses0 := warm.WarmStats()
			var between func(n int)
			if d, err := time.ParseDuration(pause); err == nil && d > 0 {
				between = func(int) { time.Sleep(d) }
			} else if pause == "ready" {
				between = whenReady(warm)
			}
			ended0 := residentEnded(warm)
			benchPairs(b, warm, s, par, between)
			if strings.Contains(l.name, "resident") {
				b.ReportMetric(float64(residentEnded(warm)-ended0), "resident-ended")
			}
			if hits, misses := warm.WarmStats(); hits+misses > hits0+misses0 {
				hits, misses = hits-hits0, misses-misses0
				b.ReportMetric(100*float64(hits)/float64(hits+misses), "warm-hit-%")
			}
		})
	}
}

// residentEnded counts r's resident inits ended, for any reason.
func residentEnded(r *sandbox.Runner) uint64 {
	var n uint64
	for _, why := range sandbox.ResidentEndReasons() {
		n += r.ResidentEnded(why)
	}
	return n
}

// whenReady returns a pause for benchPairs that waits (up to 10 s) until
// r has n warm cells ready and no teardown in the background, and then
// for the machine to settle: the next round starts on an idle machine.
func whenReady(r *sandbox.Runner) func(n int) {
	m := &meter{}
	return func(n int) {
		for end := time.Now().Add(10 * time.Second); (r.WarmReady() < n || r.TeardownsPending() > 0) && time.Now().Before(end); {
			time.Sleep(5 * time.Millisecond)
		}
		m.settle()
	}
}

// benchPairs runs b.N plain execs and b.N cells in rounds of par
// concurrent runs of one kind, in blocks of rounds of one kind, the kinds
// taking turns to go first. Within a round the load is of one kind only,
// so the two kinds do not distort each other (a blocking os/exec Wait
// holds a thread; a cell's wait parks in the netpoller), and both see the
// same machine over the run. After each round between (if set) is called,
// untimed, with the round's size, so that work a round left (a warm set's
// refill) never overlaps the next round; after each block the machine
// settles. The CPU of both is charged to the round's kind.
var mu sync.Mutex // guards benchPairs' results

func benchPairs(b *testing.B, r *sandbox.Runner, spec sandbox.Spec, par int, between func(n int)) {
	plainOp := func() error {
		cmd := exec.Command(spec.Path)
		cmd.Env = []string{}
		return cmd.Run()
	}
	var peaks []float64
	var setup, run, tail []time.Duration // the phases of a cell, from its Result
	var cpu []time.Duration              // the CPU time its cell used
	var late sync.WaitGroup              // accounting read after Run (spec.LateUsage), as serve does
	var failed error
	cellOp := func() error {
		t0 := time.Now()
		res, err := r.Run(context.Background(), spec)
		end := time.Now()
		if err == nil && res.Cause != sandbox.CauseOK {
			err = fmt.Errorf("cause %s", res.Cause)
		}
		ok := err == nil
		account := func() {
			aerr := res.Account()
			mu.Lock()
			if aerr != nil {
				failed, ok = aerr, false
			}
			peaks = append(peaks, float64(res.Usage.MemoryPeak))
			if ok {
				setup = append(setup, res.Started.Sub(t0))
				run = append(run, res.Wall)
				tail = append(tail, end.Sub(res.Started.Add(res.Wall)))
				cpu = append(cpu, time.Duration(res.Usage.CPUUsageUsec)*time.Microsecond)
			}
			mu.Unlock()
		}
		if res.Late() {
			late.Go(account)
			return err
		}
		account()
		return err
	}
	var plain, cell []time.Duration
	// What each kind costs the machine (/proc/stat): its busy CPU, its
	// context switches (a switch between processes costs more than the
	// work around it where the CPU is emulated; the counts say how many
	// hand-offs a request takes) and this process's own CPU (the
	// caller's part), counted over its rounds, the pauses after them and
	// the settling after its block (below): a cell's work after its
	// answer (the put back of a resident init, its next stub, the
	// group's recycling, the kernel's deferred frees) is the cell's,
	// not the next round's. The meter's own reads of /proc/stat (~0.2 ms
	// of CPU each in the microVM) are taken out. wall and rounds are the
	// rounds' alone.
	type tally struct {
		rounds, off float64 // µs of busy CPU in the rounds, and after them
		ctxt        int64
		self, wall  time.Duration
	}
	busy := map[*[]time.Duration]*tally{&plain: {}, &cell: {}}
	m := newMeter(b)
	round := func(op func() error, into *[]time.Duration, n int) {
		t0 := time.Now()
		defer func() { busy[into].wall += time.Since(t0) }()
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				t0 := time.Now()
				err := op()
				d := time.Since(t0)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failed = err
				}
				*into = append(*into, d)
			})
		}
		wg.Wait()
	}
	ok := func() bool { // late accountings write failed too
		mu.Lock()
		defer mu.Unlock()
		return failed == nil
	}
	// Rounds come in blocks of one kind, the kinds taking turns to go
	// first; after a block the machine settles, so that what a block
	// left is charged to it and no block starts on another's leftovers.
	const block = 8
	b.ResetTimer()
	for done, i := 0, 0; done < b.N && ok(); i++ {
		rounds := min(block, (b.N-done+par-1)/par)
		kinds := []struct {
			op   func() error
			into *[]time.Duration
		}{{plainOp, &plain}, {cellOp, &cell}}
		if i%2 == 1 {
			kinds[0], kinds[1] = kinds[1], kinds[0]
		}
		for _, k := range kinds {
			t := busy[k.into]
			start := m.read()
			var off float64 // µs of busy CPU outside the rounds
			left := b.N - done
			for range rounds {
				n := min(par, left)
				left -= n
				round(k.op, k.into, n)
				if between != nil {
					b.StopTimer()
					p0 := m.read()
					between(n)
					m.read()
					off += m.since(p0).busy
					b.StartTimer()
				}
			}
			b.StopTimer()
			p0 := m.read()
			if k.into == &cell {
				late.Wait()
			}
			m.settle()
			off += m.since(p0).busy
			all := m.since(start)
			t.rounds += all.busy - off
			t.off += off
			t.ctxt += all.ctxt
			t.self += all.self
			b.StartTimer()
		}
		done += min(b.N-done, rounds*par)
	}
	b.StopTimer()
	late.Wait()
	if failed != nil {
		b.Fatal(failed)
	}
	slices.Sort(plain)
	slices.Sort(cell)
	q := func(d []time.Duration, f float64) float64 { return float64(d[int(f*float64(len(d)-1))]) }
	b.ReportMetric(q(cell, 0.5)/q(plain, 0.5), "p50-ratio")
	b.ReportMetric(q(cell, 0.99)/q(plain, 0.99), "p99-ratio")
	b.ReportMetric(q(plain, 0.5)/1e3, "plain-p50-µs")
	// cpu-ratio is the machine's busy CPU per cell against per plain
	// exec, with what a cell left after its answer (after-µs/op: the
	// busy CPU of the cells' pauses and settling beyond the plain
	// execs', which leave nothing, so that the idle machine's own work
	// in both is not counted), round-cpu-ratio the same in the rounds
	// alone; busy-µs/op the first per request, caller-µs/op this
	// process's part of everything (the Runner, or os/exec and its
	// fork), ctxt/op the machine's context switches. round-ratio is the
	// wall time of the rounds per request (the inverse of the
	// throughput ratio); busy-% the share of the machine's CPUs busy
	// during each kind's rounds: under load a round-ratio above
	// round-cpu-ratio with the cells' rounds less busy is time spent
	// waiting, not computing. The p50-ratio of concurrent rounds is not
	// the round-ratio: a round's plain execs are forked one after
	// another (the runtime's ForkLock) and end one after another, its
	// cells share the CPUs and end together.
	if pb, cb := busy[&plain], busy[&cell]; pb.rounds > 0 && cb.rounds > 0 && len(plain) == len(cell) {
		n := float64(len(cell))
		after := max(0, cb.off-pb.off) / n
		plainOp, cellOp := pb.rounds/n, cb.rounds/n+after
		b.ReportMetric(cellOp/plainOp, "cpu-ratio")
		b.ReportMetric(cb.rounds/pb.rounds, "round-cpu-ratio")
		b.ReportMetric(cb.wall.Seconds()/pb.wall.Seconds(), "round-ratio")
		share := func(t *tally) float64 {
			return 100 * t.rounds / float64(t.wall.Microseconds()) / float64(runtime.NumCPU())
		}
		b.ReportMetric(share(pb), "plain-busy-%")
		b.ReportMetric(share(cb), "cell-busy-%")
		b.ReportMetric(plainOp, "plain-busy-µs/op")
		b.ReportMetric(cellOp, "cell-busy-µs/op")
		b.ReportMetric(after, "cell-after-µs/op")
		b.ReportMetric(float64(pb.self.Microseconds())/n, "plain-caller-µs/op")
		b.ReportMetric(float64(cb.self.Microseconds())/n, "cell-caller-µs/op")
		b.ReportMetric(float64(pb.ctxt)/n, "plain-ctxt/op")
		b.ReportMetric(float64(cb.ctxt)/n, "cell-ctxt/op")
	}
	b.ReportMetric(q(cell, 0.5)/1e3, "cell-p50-µs")
	// Where a cell's time goes (p50 of each phase, not adding up to the
	// p50 of the whole): setup is Run's start to the worker's (a cell from
	// the pool, the init started or a warm one taken), run the worker's
	// wall time (for a confined cell up to its init's report), tail the
	// rest of Run (accounting, streams, and the cell's end when it is not
	// left to the background). cpu is the CPU time the cell used (for a
	// confined cell, its init's start and setup included when they were
	// not done ahead): par times it over the machine's CPUs is the least
	// a round can take when the cells are CPU-bound.
	for _, ph := range []struct {
		name string
		d    []time.Duration
	}{{"setup", setup}, {"run", run}, {"tail", tail}, {"cpu", cpu}} {
		if len(ph.d) > 0 {
			slices.Sort(ph.d)
			b.ReportMetric(q(ph.d, 0.5)/1e3, ph.name+"-p50-µs")
		}
	}
	slices.Sort(peaks)
	if len(peaks) > 0 && peaks[len(peaks)/2] > 0 {
		b.ReportMetric(peaks[len(peaks)/2]/1024, "cell-memory-peak-KiB")
	}
}

// newBenchEnv returns a Runner over a real pool: limits enforced when this
// process's group delegates memory, cpu and pids (the microVM), otherwise,
// as root on a cgroup2 mount without them, unenforced in a private base.
func newBenchEnv(b *testing.B) *sandbox.Runner { return newBenchEnvWarm(b, 0) }

// newBenchEnvWarm is newBenchEnv with warm confined cells (Config.WarmCells).
func newBenchEnvWarm(b testing.TB, warm int) *sandbox.Runner {
	b.Helper()
	return newConfinedEnv(b, sandbox.Config{WarmCells: warm})
}

// newConfinedEnv is newBenchEnv with the confinement settings of cfg
// (WarmCells, NetNamespaces).
func newConfinedEnv(b testing.TB, cfg sandbox.Config) *sandbox.Runner {
	b.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(b, "cells need root (euid %d)", os.Geteuid())
	}
	mnt, err := cgroup2Mount()
	if err != nil {
		skipOrFail(b, "no cgroup v2: %v", err)
	}
	opts := cgroup.Options{Mount: mnt}
	if delegated() || required() {
		opts.Base = filepath.Join(requireKernel(b), "base")
	} else {
		opts.Base = filepath.Join(mnt, fmt.Sprintf("cellgate-bench-%d-%d", os.Getpid(), testSeq.Add(1)))
		opts.Unenforced = []string{"memory", "cpu", "pids"}
	}
	trackBase(opts.Base)
	tree, err := cgroup.Open(context.Background(), opts)
	if err != nil {
		b.Fatalf("cgroup.Open %s: %v", opts.Base, err)
	}
	pool := cgroup.NewPool(tree, cgroup.PoolOptions{MaxIdle: 64})
	prof := benchProfile(b)
	if err := pool.Warm(prof); err != nil {
		b.Fatal(err)
	}
	cfg.Cells, cfg.Profile, cfg.Timeout = sandbox.PoolCells{Pool: pool}, prof, time.Minute
	if bin := os.Getenv("CELLGATE_BIN"); bin != "" && cfg.Launcher == nil {
		l, err := confine.OpenLauncher(filepath.Join(filepath.Dir(bin), confine.InitArg0))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { l.Close() })
		cfg.Launcher = l
	}
	r, err := sandbox.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		r.Close()
		if err := pool.Close(); err != nil {
			b.Errorf("Pool.Close: %v", err)
		}
		if err := tree.Close(); err != nil {
			b.Errorf("Tree.Close: %v", err)
		}
	})
	b.Logf("cells in %s, unenforced: %v", opts.Base, opts.Unenforced)
	return r
}

// delegated reports whether this process's group has memory, cpu and pids
// enabled for its children.
func delegated() bool {
	mnt, err := cgroup2Mount()
	if err != nil {
		return false
	}
	self, err := ownGroup()
	if err != nil {
		return false
	}
	sc, err := os.ReadFile(filepath.Join(mnt, self, "cgroup.subtree_control"))
	if err != nil {
		return false
	}
	return slices.Contains(strings.Fields(string(sc)), "memory") &&
		slices.Contains(strings.Fields(string(sc)), "cpu") &&
		slices.Contains(strings.Fields(string(sc)), "pids")
}

// benchProfile is the profile of newConfinedEnv's runner: 64 MiB, one
// CPU, 64 pids.
func benchProfile(t testing.TB) *cgroup.Profile { return profile(t, limits(64<<20, 1000, 64)) }

// noopBinary writes noopELF next to the worker copy (any uid may run it).
func noopBinary(t testing.TB) string { return elfBinary(t, "noop", noopELF) }

// elfBinaries are the programs elfBinary wrote, by name.
var elfBinaries sync.Map // string → *elfOnce

type elfOnce struct {
	once sync.Once
	path string
	err  error
}

// elfBinary writes the program elf makes next to the worker copy as
// name, once per test binary, and returns its path.
func elfBinary(t testing.TB, name string, elf func() []byte) string {
	t.Helper()
	dir := filepath.Dir(workerBinary(t))
	v, _ := elfBinaries.LoadOrStore(name, &elfOnce{})
	e := v.(*elfOnce)
	e.once.Do(func() {
		e.path = filepath.Join(dir, name)
		e.err = os.WriteFile(e.path, elf(), 0o755)
	})
	if e.err != nil {
		t.Fatalf("write the %s binary: %v", name, e.err)
	}
	return e.path
}

// noopELF is a complete static x86-64 Linux program of 129 bytes that calls
// exit(0): an ELF header, one PT_LOAD program header mapping the file, and
// the code (mov eax, 60; xor edi, edi; syscall). No loader, no libc: what a
// spawn costs, and nothing else.
func noopELF() []byte {
	return staticELF([]byte{0xb8, 0x3c, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05})
}

// staticELF is a complete static x86-64 Linux program running code: an
// ELF header, one PT_LOAD program header mapping the file, and the code.
func staticELF(code []byte) []byte {
	const base = 0x400000
	const ehsize, phsize = 64, 56
	size := uint64(ehsize + phsize + len(code))
	b := make([]byte, 0, size)
	le := binary.LittleEndian
	b = append(b, 0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0) // 64-bit, LSB, version 1, SysV
	b = le.AppendUint16(b, 2)                                              // ET_EXEC
	b = le.AppendUint16(b, 0x3e)                                           // EM_X86_64
	b = le.AppendUint32(b, 1)                                              // EV_CURRENT
	b = le.AppendUint64(b, base+ehsize+phsize)                             // entry
	b = le.AppendUint64(b, ehsize)                                         // phoff
	b = le.AppendUint64(b, 0)                                              // shoff
	b = le.AppendUint32(b, 0)                                              // flags
	b = le.AppendUint16(b, ehsize)
	b = le.AppendUint16(b, phsize)
	b = le.AppendUint16(b, 1) // phnum
	b = le.AppendUint16(b, 0) // shentsize
	b = le.AppendUint16(b, 0) // shnum
	b = le.AppendUint16(b, 0) // shstrndx
	b = le.AppendUint32(b, 1) // PT_LOAD
	b = le.AppendUint32(b, 5) // PF_R|PF_X
	b = le.AppendUint64(b, 0) // offset
	b = le.AppendUint64(b, base)
	b = le.AppendUint64(b, base)
	b = le.AppendUint64(b, size) // filesz
	b = le.AppendUint64(b, size) // memsz
	b = le.AppendUint64(b, 0x1000)
	return append(b, code...)
}

// meter reads the machine's busy CPU and context switches (/proc/stat)
// and this process's CPU, and takes the CPU of its own reads out of what
// it measures. The zero meter measures nothing and can still settle.
type meter struct {
	tb      testing.TB
	readCPU float64 // µs of this process's CPU per read of /proc/stat
	last    reading // the latest read
}

// reading is one read of a meter: busy in µs of CPU, reads the meter's
// reads so far.
type reading struct {
	busy  float64
	ctxt  int64
	self  time.Duration
	reads int
}

// newMeter returns a meter whose reads' own CPU it has measured.
func newMeter(tb testing.TB) *meter {
	m := &meter{tb: tb}
	r0 := m.read()
	for range 20 {
		m.read()
	}
	m.readCPU = float64((m.read().self - r0.self).Microseconds()) / float64(m.last.reads-r0.reads)
	return m
}

// read reads the counters now.
func (m *meter) read() reading {
	busy, ctxt, err := machineStat()
	if err != nil && m.tb != nil {
		m.tb.Fatal(err)
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil && m.tb != nil {
		m.tb.Fatal(err)
	}
	m.last = reading{busy: 1e6 * float64(busy) / clockTicks, ctxt: ctxt,
		self: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), reads: m.last.reads + 1}
	return m.last
}

// since returns what was used since r0 up to the latest read, the
// meter's reads in between taken out.
func (m *meter) since(r0 reading) reading {
	reads := float64(m.last.reads - r0.reads)
	own := time.Duration(reads * m.readCPU * float64(time.Microsecond))
	return reading{busy: m.last.busy - r0.busy - reads*m.readCPU, ctxt: m.last.ctxt - r0.ctxt,
		self: m.last.self - r0.self - own}
}

// settle waits until the machine is quiet (no busy tick counted in
// /proc/stat over 30 ms, the meter's own reads aside), at most 1 s: what
// a block of rounds left in the background, and the kernel's deferred
// work after it, is done. It ends on a read.
func (m *meter) settle() {
	const window, most = 30 * time.Millisecond, time.Second
	prev := m.read()
	for end := time.Now().Add(most); time.Now().Before(end); {
		time.Sleep(window)
		cur := m.read()
		if cur.busy == prev.busy {
			return
		}
		prev = cur
	}
}
