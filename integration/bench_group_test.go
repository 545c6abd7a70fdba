package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkCellGroup prices what the kernel charges for a cgroup of a
// request's own, apart from anything cellgate does, with no cellgate code
// in the loop: the static hello of examples/cgi started by os/exec
// ("plain"), in a group made for the run and removed after it ("fresh":
// mkdir, memory.max, pids.max and cpu.max written, clone3
// CLONE_INTO_CGROUP, the accounting files a cell's Result reads (io.stat
// aside: the io controller is not enabled here), rmdir),
// and in a group kept across runs ("reused": the same without the mkdir
// and the rmdir, as cells that served request after request would be).
// The modes interleave in rounds, at 1 and 16 concurrent loops (each loop
// with a group of its own in "reused"); reported as ratios to plain: the
// p50 and the whole machine's busy CPU per run (/proc/stat, so the
// kernel's deferred work of a removed group, done by kworkers, counts).
//
// A fresh group per request is what keeps each request's memory.peak,
// pids.peak and OOM events its own on every kernel (memory.peak can be
// reset only from 6.12, through the fd that reset it; pids.peak cannot be
// reset), so "fresh" is the least a cell per request costs beside a plain
// exec, whatever else the cell does.
func BenchmarkCellGroup(b *testing.B) {
	dir := requireKernel(b)
	hello := filepath.Join(cgiDir(b), "hello")
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { devnull.Close() })
	run := func(group string) error {
		cmd := exec.Command(hello)
		cmd.Stdout = devnull
		cmd.Env = []string{"GATEWAY_INTERFACE=CGI/1.1", "REQUEST_METHOD=GET", "SERVER_PROTOCOL=HTTP/1.1"}
		if group != "" {
			fd, err := syscall.Open(group, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer syscall.Close(fd)
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
		}
		if err := cmd.Run(); err != nil {
			return err
		}
		if group != "" {
			for _, f := range []string{"cpu.stat", "memory.peak", "memory.events", "pids.peak", "pids.events"} {
				if _, err := os.ReadFile(filepath.Join(group, f)); err != nil {
					return err
				}
			}
		}
		return nil
	}
	limit := func(group string) error {
		for _, kv := range [][2]string{{"memory.max", "67108864"}, {"pids.max", "64"}, {"cpu.max", "100000 100000"}} {
			if err := os.WriteFile(filepath.Join(group, kv[0]), []byte(kv[1]), 0); err != nil {
				return err
			}
		}
		return nil
	}
	var seq int64
	var mu sync.Mutex
	modes := []groupMode{
		{"plain", func(int) error { return run("") }},
		{"fresh", func(int) error {
			mu.Lock()
			seq++
			g := filepath.Join(dir, "fresh-"+strconv.FormatInt(seq, 36))
			mu.Unlock()
			if err := os.Mkdir(g, 0o755); err != nil {
				return err
			}
			err := limit(g)
			if err == nil {
				err = run(g)
			}
			if rerr := os.Remove(g); err == nil {
				err = rerr
			}
			return err
		}},
		{"reused", func(loop int) error { return run(filepath.Join(dir, "reused-"+strconv.Itoa(loop))) }},
	}
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("concurrent=%d", conc), func(b *testing.B) { benchGroups(b, dir, conc, modes, limit) })
	}
}

// groupMode is one way BenchmarkCellGroup starts the hello: run(loop).
type groupMode struct {
	name string
	run  func(loop int) error
}

// benchGroups runs BenchmarkCellGroup's modes at conc concurrent loops:
// rounds of perRound runs of each mode in turn.
func benchGroups(b *testing.B, dir string, conc int, modes []groupMode, limit func(group string) error) {
	const perRound, rounds = 40, 3
	for i := range conc {
		g := filepath.Join(dir, "reused-"+strconv.Itoa(i))
		if err := os.Mkdir(g, 0o755); err != nil && !os.IsExist(err) {
			b.Fatal(err)
		}
		if err := limit(g); err != nil {
			b.Fatal(err)
		}
	}
	type figures struct{ p50, cpu []float64 }
	got := map[string]*figures{}
	for b.Loop() {
		for range rounds {
			for _, m := range modes {
				lat, busy, err := groupRound(perRound, conc, m.run)
				if err != nil {
					b.Fatalf("%s at %d concurrent: %v", m.name, conc, err)
				}
				f := got[m.name]
				if f == nil {
					f = &figures{}
					got[m.name] = f
				}
				f.p50 = append(f.p50, float64(lat))
				f.cpu = append(f.cpu, float64(busy))
			}
		}
	}
	median := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	ref := got["plain"]
	var report strings.Builder
	fmt.Fprintf(&report, "BenchmarkCellGroup: concurrent=%d, %d runs x %d rounds (medians), ratios to plain (p50 %.2f ms, busy CPU %.2f ms/run):",
		conc, perRound, rounds, median(ref.p50)/1e6, median(ref.cpu)/1e6)
	for _, m := range modes[1:] {
		f := got[m.name]
		p, c := median(f.p50)/median(ref.p50), median(f.cpu)/median(ref.cpu)
		fmt.Fprintf(&report, "\n  %-7s p50 %.3f  CPU/run %.3f", m.name, p, c)
		b.ReportMetric(p, fmt.Sprintf("%s-c%d/plain-p50", m.name, conc))
		b.ReportMetric(c, fmt.Sprintf("%s-c%d/plain-cpu", m.name, conc))
	}
	// On stdout: go test keeps only the first 10 lines of a
	// benchmark's log without -v.
	fmt.Println(report.String())
}

// groupRound runs f n times with conc loops and returns the median
// latency and the whole machine's busy CPU time per run, the kernel's
// work deferred after the last run included (a short pause before the
// last read).
func groupRound(n, conc int, f func(loop int) error) (p50, busy time.Duration, err error) {
	time.Sleep(settleKernel)
	j0, err := busyTicks()
	if err != nil {
		return 0, 0, err
	}
	lat := make([]time.Duration, n)
	next := make(chan int)
	errs := make(chan error, conc)
	var wg sync.WaitGroup
	for loop := range conc {
		wg.Go(func() {
			for i := range next {
				t0 := time.Now()
				if err := f(loop); err != nil {
					errs <- err
					for range next {
					}
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	time.Sleep(settleKernel)
	j1, err := busyTicks()
	if err != nil {
		return 0, 0, err
	}
	select {
	case err := <-errs:
		return 0, 0, err
	default:
	}
	slices.Sort(lat)
	return lat[n/2], time.Duration(float64(j1-j0) * float64(time.Second) / clockTicks / float64(n)), nil
}

// settleKernel is the pause before a figure of the whole machine's CPU
// is read after a run, for the kernel's work that the run deferred to
// kworkers to be done.
const settleKernel = 200 * time.Millisecond

// busyTicks is the time all CPUs have spent not idle (nor waiting for
// I/O), in clock ticks (clockTicks), from /proc/stat's first line.
func busyTicks() (int64, error) {
	busy, _, err := machineStat()
	return busy, err
}

// machineStat returns the whole machine's busy CPU ticks (as busyTicks)
// and its context switches since boot (/proc/stat's ctxt).
func machineStat() (busy, ctxt int64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, "ctxt "); ok {
			if ctxt, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64); err != nil {
				return 0, 0, fmt.Errorf("/proc/stat: %q: %w", l, err)
			}
		}
	}
	if ctxt == 0 {
		return 0, 0, fmt.Errorf("/proc/stat: no ctxt line")
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: first line %q", line)
	}
	for i, s := range f[1:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, ctxt, nil
}
