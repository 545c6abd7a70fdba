package cgroup

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestUsageSince(t *testing.T) {
	base := Usage{CPUUsageUsec: 100, CPUUserUsec: 60, CPUSystemUsec: 40, NrThrottled: 1, ThrottledUsec: 10,
		MemoryPeak: 9 << 20, MemoryMax: 2, OOM: 1, OOMKill: 1, OOMGroupKill: 0, PidsPeak: 7, PidsMax: 3,
		IOReadBytes: 4096, IOWriteBytes: 8192}
	now := Usage{CPUUsageUsec: 250, CPUUserUsec: 150, CPUSystemUsec: 100, NrThrottled: 1, ThrottledUsec: 10,
		MemoryPeak: 1 << 20, MemoryMax: 2, OOM: 1, OOMKill: 1, OOMGroupKill: 0, PidsPeak: 7, PidsMax: 4,
		IOReadBytes: 4096, IOWriteBytes: 12288, Missing: []string{"io.stat"}}
	got := now.since(base, false)
	want := Usage{CPUUsageUsec: 150, CPUUserUsec: 90, CPUSystemUsec: 60, PidsMax: 1, IOWriteBytes: 4096,
		Missing: []string{"io.stat", "memory.peak", "pids.peak"}}
	if !usageEqual(got, want) {
		t.Errorf("since, no peak reset:\n got %+v\nwant %+v", got, want)
	}
	if got.OOMKilled() {
		t.Error("an OOM kill of a request before counts as the current request's")
	}
	got = now.since(base, true)
	want.MemoryPeak, want.Missing = 1<<20, []string{"io.stat", "pids.peak"}
	if !usageEqual(got, want) {
		t.Errorf("since, memory.peak reset:\n got %+v\nwant %+v", got, want)
	}
	if len(now.Missing) != 1 {
		t.Errorf("since changed its receiver's Missing: %v", now.Missing)
	}
	// Every figure of a Usage is a counter or one of the two peaks: a
	// figure added to Usage and not to counters would carry over.
	figures := 0
	for f := range reflect.TypeFor[Usage]().Fields() {
		if f.Type.Kind() == reflect.Uint64 {
			figures++
		}
	}
	if n := len(now.counters()); figures != n+2 {
		t.Errorf("Usage has %d figures, counters %d and the two peaks", figures, n)
	}
	// A counter below its base (never from the kernel) is zero, not a
	// wrapped-around figure.
	if got := (Usage{}).since(base, false); got.CPUUsageUsec != 0 || got.IOReadBytes != 0 {
		t.Errorf("since with counters below the base: %+v", got)
	}
}

func usageEqual(a, b Usage) bool {
	return reflect.DeepEqual(a, b)
}

// TestPoolRecycle: a recycled cell is handed out again, before the idle
// ones, with its Usage the new request's alone: its counters from where
// they stood when it was readied, its peaks left out where the kernel
// cannot reset them (memory.peak before 6.12, pids.peak always).
func TestPoolRecycle(t *testing.T) {
	for _, reset := range []bool{false, true} {
		name := "memory.peak read-only (6.1)"
		if reset {
			name = "memory.peak reset (6.12)"
		}
		t.Run(name, func(t *testing.T) {
			tr, p := newFakePool(t, &fakeFS{peakReadOnly: !reset}, PoolOptions{MaxIdle: 2})
			if tr.Features().MemoryPeakReset != reset {
				t.Fatalf("Features.MemoryPeakReset = %v, want %v", tr.Features().MemoryPeakReset, reset)
			}
			prof := testProfile(t, "acme").Reused()
			c, err := p.Get(t.Context(), prof)
			if err != nil {
				t.Fatal(err)
			}
			write(t, c.Path()+"/cpu.stat", "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n")
			write(t, c.Path()+"/memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n")
			write(t, c.Path()+"/memory.peak", "33554432\n")
			write(t, c.Path()+"/pids.peak", "9\n")
			write(t, c.Path()+"/memory.current", "1048576\n")
			first, err := c.Usage()
			if err != nil || first.CPUUsageUsec != 100 || first.PidsPeak != 9 || !first.OOMKilled() || !slices.Equal(first.Missing, []string{"io.stat"}) {
				t.Fatalf("a cell's first Usage: %+v, %v", first, err)
			}
			p.Recycle(c)
			eventually(t, "the recycled cell is ready", func() bool { return p.Idle(prof) == 3 })
			again, err := p.Get(t.Context(), prof)
			if err != nil {
				t.Fatal(err)
			}
			if again != c || !exists(c.Path()) {
				t.Fatalf("Get after Recycle handed out %s, want the recycled %s", again.Path(), c.Path())
			}
			if got := again.CPUBefore(); got != 100 {
				t.Errorf("CPUBefore of the recycled cell = %d, want the first request's 100", got)
			}
			if s := p.Stats(); s.Reused != 1 {
				t.Errorf("Stats.Reused = %d, want 1", s.Reused)
			}
			if reset {
				// The reset went through the held fd (the fake keeps what
				// was written); the kernel would now count from there.
				if got := read(t, c.Path()+"/memory.peak"); !strings.HasPrefix(got, "reset") {
					t.Errorf("memory.peak after the recycle holds %q: not reset through the cell's fd", got)
				}
				write(t, c.Path()+"/memory.peak", "2097152\n")
			}
			write(t, c.Path()+"/cpu.stat", "usage_usec 130\nuser_usec 70\nsystem_usec 60\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n")
			u, err := c.Usage()
			if err != nil {
				t.Fatal(err)
			}
			if u.CPUUsageUsec != 30 || u.CPUUserUsec != 10 || u.CPUSystemUsec != 20 || u.OOMKilled() || u.MemoryMax != 0 {
				t.Errorf("the second request's counters: %+v, want its own (CPU 30, no OOM kill, no max event)", u)
			}
			if u.PidsPeak != 0 || !slices.Contains(u.Missing, "pids.peak") {
				t.Errorf("the second request's pids.peak: %d, missing %v: want it left out", u.PidsPeak, u.Missing)
			}
			switch {
			case reset && (u.MemoryPeak != 2<<20 || slices.Contains(u.Missing, "memory.peak")):
				t.Errorf("memory.peak reset: the second request's peak %d, missing %v, want 2 MiB", u.MemoryPeak, u.Missing)
			case !reset && (u.MemoryPeak != 0 || !slices.Contains(u.Missing, "memory.peak")):
				t.Errorf("memory.peak not reset: the second request's peak %d, missing %v, want it left out", u.MemoryPeak, u.Missing)
			}
			p.Release(again)
			eventually(t, "a released recycled cell is removed", func() bool { return !exists(c.Path()) })
		})
	}
}

// TestPoolRecycleChargedLater: a cell's memory.current is read anew at
// each readying, through the fd held since the first: a cell that held
// little after one request and more than a reuse allows after the next
// is removed then.
func TestPoolRecycleChargedLater(t *testing.T) {
	_, p := newFakePool(t, &fakeFS{}, PoolOptions{MaxIdle: 2})
	prof := testProfile(t, "acme").Reused()
	c, err := p.Get(t.Context(), prof)
	if err != nil {
		t.Fatal(err)
	}
	write(t, c.Path()+"/memory.current", "1048576\n")
	p.Recycle(c)
	eventually(t, "the recycled cell is ready", func() bool { return p.Stats().Reused == 0 && p.Idle(prof) == 3 })
	if again, err := p.Get(t.Context(), prof); err != nil || again != c {
		t.Fatalf("Get after Recycle: %v, %v; want the recycled cell", again, err)
	}
	write(t, c.Path()+"/memory.current", "4194305\n") // over an eighth of its memory.max
	p.Recycle(c)
	eventually(t, "the cell charged over the bound is removed", func() bool { return !exists(c.Path()) && p.Stats().Removed == 1 })
	if s := p.Stats(); s.Removed != 1 {
		t.Errorf("Stats.Removed = %d, want 1", s.Removed)
	}
}

// TestPoolRecycleRefused: a recycled cell that holds more than a reuse
// allows (an eighth of its memory.max) charged, a populated one (killed
// and waited for first, so that it can go), one killed during its
// request, or one for whose profile MaxIdle recycled cells wait, is
// removed; Close removes the recycled cells that wait. A killed group
// kills what is cloned into it (Cell.killed): before, a populated cell
// was killed and handed on, and its next request died at its start.
func TestPoolRecycleRefused(t *testing.T) {
	tr, p := newFakePool(t, &fakeFS{}, PoolOptions{MaxIdle: 1})
	prof := testProfile(t, "acme").Reused() // memory.max 32 MiB: 4 MiB may stay charged
	get := func() *Cell {
		c, err := p.Get(t.Context(), prof)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	charged := get()
	write(t, charged.Path()+"/memory.current", "4194305\n")
	p.Recycle(charged)
	eventually(t, "a cell with over 4 MiB charged is removed", func() bool { return !exists(charged.Path()) })

	populated, killed, busy, spare := get(), get(), get(), get()
	write(t, populated.Path()+"/cgroup.events", "populated 1\nfrozen 0\n")
	killer(t, populated.Path())
	p.Recycle(populated)
	// The removal is counted after the directory is gone: wait for both.
	eventually(t, "a populated cell is killed and removed", func() bool { return !exists(populated.Path()) && p.Stats().Removed == 2 })
	if err := killed.Kill(); err != nil { // its request's deadline
		t.Fatal(err)
	}
	p.Recycle(killed)
	eventually(t, "a cell killed during its request is removed", func() bool { return !exists(killed.Path()) && p.Stats().Removed == 3 })
	write(t, busy.Path()+"/memory.current", "4194304\n")
	p.Recycle(busy)
	eventually(t, "a cell at the bound is recycled", func() bool { return len(p.profiles[prof.key].reused) == 1 })
	p.Recycle(spare)
	eventually(t, "a second recycled cell over MaxIdle is removed", func() bool { return !exists(spare.Path()) && p.Stats().Removed == 4 })
	if s := p.Stats(); s.Reused != 0 || s.Removed != 4 {
		t.Errorf("Stats = %+v, want 4 removed, none reused", s)
	}
	// A cell of a profile that did not ask for reuse (the same tenant and
	// limits) is removed, and never handed to that profile's Get.
	plain := testProfile(t, "acme")
	other, err := p.Get(t.Context(), plain)
	if err != nil {
		t.Fatal(err)
	}
	p.Recycle(other)
	eventually(t, "a cell of a profile without reuse is removed", func() bool { return !exists(other.Path()) })
	c, err := p.Get(t.Context(), plain)
	if err != nil || c == busy {
		t.Fatalf("Get of the profile without reuse: %v, the recycled cell of the reused one: %v", err, c == busy)
	}
	p.Release(c)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if exists(busy.Path()) {
		t.Error("Close left the recycled cell")
	}
	if n := subdirs(t, tr.CellsPath()+"/acme"); n != 0 {
		t.Errorf("Close left %d cells", n)
	}
}

// TestPoolRecycleEndedReading: a cell whose Usage was read once it had
// emptied (UsageEnded) is readied for its next request from that
// reading, its files not read again; one read by Usage is read anew.
func TestPoolRecycleEndedReading(t *testing.T) {
	_, p := newFakePool(t, &fakeFS{peakReadOnly: true}, PoolOptions{MaxIdle: 2})
	prof := testProfile(t, "acme").Reused()
	cpu := func(c *Cell, usec int) {
		write(t, c.Path()+"/cpu.stat", fmt.Sprintf("usage_usec %d\nuser_usec 0\nsystem_usec %d\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n", usec, usec))
	}
	c, err := p.Get(t.Context(), prof)
	if err != nil {
		t.Fatal(err)
	}
	write(t, c.Path()+"/memory.current", "1048576\n")
	// recycle reads c as read says, then has its files hold after (what
	// a second reading would take) and recycles it; it returns the base
	// its next request counts from.
	recycle := func(read func() (Usage, error), after int) uint64 {
		t.Helper()
		if _, err := read(); err != nil {
			t.Fatal(err)
		}
		cpu(c, after)
		reused := p.Stats().Reused
		p.Recycle(c)
		eventually(t, "the recycled cell is ready", func() bool { return p.Idle(prof) == 3 })
		again, err := p.Get(t.Context(), prof)
		if err != nil || again != c || p.Stats().Reused != reused+1 {
			t.Fatalf("Get after Recycle: %v, %v; want the recycled cell", again, err)
		}
		return c.CPUBefore()
	}
	cpu(c, 100)
	if got := recycle(c.UsageEnded, 350); got != 100 {
		t.Errorf("after UsageEnded: the next request counts from %d, want the reading's 100", got)
	}
	cpu(c, 400)
	if got := recycle(c.Usage, 650); got != 650 {
		t.Errorf("after Usage: the next request counts from %d, want 650, read anew", got)
	}
}
