package sandbox

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cellgate/cellgate/confine"
)

// TestKillerSpared: once a resident init has started the program, a kill
// ends the program's cell and leaves the init, which reports the end; if
// no report comes within the grace (finish is stuck), the init is killed
// too. A report in time (finish) leaves it alive.
func TestKillerSpared(t *testing.T) {
	// start starts a process standing for the init; its channel closes
	// when it has exited.
	start := func(t *testing.T) (*worker, chan struct{}) {
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-done })
		w, err := newProcWorker(cmd.Process)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(w.pidfd) })
		return w, done
	}
	exited := func(done chan struct{}, within time.Duration) bool {
		select {
		case <-done:
			return true
		case <-time.After(within):
			return false
		}
	}
	// The grace is a minute where the init must live: no machine is slow
	// enough to reach it. The test ends each such killer with finish, so
	// that its timer does nothing later.
	t.Run("spared: the cell is killed, the init is not", func(t *testing.T) {
		w, cmd := start(t)
		cell := &fakeCell{c: &fakeCells{}}
		k := &killer{cell: cell, w: w, log: slog.New(slog.DiscardHandler)}
		k.spare(time.Minute)
		defer k.finish()
		k.kill(CauseDeadline)
		if cell.killed != 1 {
			t.Errorf("cell killed %d times, want 1", cell.killed)
		}
		if exited(cmd, 200*time.Millisecond) {
			t.Fatal("the spared init was killed at once")
		}
	})
	t.Run("no report: the init is killed after the grace", func(t *testing.T) {
		w, cmd := start(t)
		cell := &fakeCell{c: &fakeCells{}}
		k := &killer{cell: cell, w: w, log: slog.New(slog.DiscardHandler)}
		k.spare(100 * time.Millisecond)
		k.kill(CauseDeadline)
		if cell.killed != 1 {
			t.Errorf("cell killed %d times, want 1", cell.killed)
		}
		if !exited(cmd, time.Minute) {
			t.Fatal("the spared init outlived the grace by a minute without a report")
		}
	})
	t.Run("a report in time: the init lives on", func(t *testing.T) {
		w, cmd := start(t)
		k := &killer{cell: &fakeCell{c: &fakeCells{}}, w: w, log: slog.New(slog.DiscardHandler)}
		k.spare(time.Minute)
		k.kill(CauseDeadline)
		if got := k.finish(); got != CauseDeadline {
			t.Errorf("finish: %q, want %q", got, CauseDeadline)
		}
		k.kill(CauseKilled) // after the report: nothing more
		if exited(cmd, 400*time.Millisecond) {
			t.Fatal("the init was killed after it reported")
		}
	})
	t.Run("not spared: the worker is killed with the cell", func(t *testing.T) {
		w, cmd := start(t)
		k := &killer{cell: &fakeCell{c: &fakeCells{}}, w: w, log: slog.New(slog.DiscardHandler)}
		k.kill(CauseDeadline)
		if !exited(cmd, time.Minute) {
			t.Fatal("the worker outlived the kill by a minute")
		}
	})
}

// TestResidentWanted: an init coming back is kept when its set has room
// for it beside its other cells, itself counted out when the set counts
// it as busy.
func TestResidentWanted(t *testing.T) {
	s := &warmSet{want: 2, busy: 1, ready: make([]*initProc, 1)}
	taken := &initProc{set: s}
	if !taken.wanted(s) {
		t.Errorf("an init taken from a set of 2 (1 ready, itself busy): not wanted")
	}
	other := &initProc{} // started by a request that found the set empty, no place kept
	if other.wanted(s) {
		t.Errorf("an init from outside a full set: wanted")
	}
	s.ready = nil
	if !other.wanted(s) {
		t.Errorf("an init from outside, the set one short: not wanted")
	}
	if taken.wanted(nil) {
		t.Errorf("a set gone (idle, or the pool closed): wanted")
	}
}

// TestAwaitComing: a take that finds its set empty while a resident init
// is on its way back, or being set up, waits until that one is back (and
// counted out of the returning ones) or set up, not for its bound; the
// bound and the request's context end the wait, with no more waits.
func TestAwaitComing(t *testing.T) {
	never := make(chan time.Time)
	t.Run("back", func(t *testing.T) {
		w := &warmPool{}
		s := &warmSet{busy: 1, returning: 1}
		ip := &initProc{set: s, returning: true}
		go func() {
			time.Sleep(20 * time.Millisecond)
			w.mu.Lock()
			ip.back()
			ip.leaveSet()
			w.mu.Unlock()
		}()
		w.mu.Lock()
		got := w.awaitComing(context.Background(), s, true, never)
		returning, busy := s.returning, s.busy
		w.mu.Unlock()
		if !got {
			t.Fatal("awaitComing: false, want true (the init came back)")
		}
		if returning != 0 || busy != 0 || ip.returning {
			t.Errorf("after the return: returning %d, busy %d, init returning %v; want 0, 0, false", returning, busy, ip.returning)
		}
	})
	t.Run("each its own", func(t *testing.T) {
		// Two on their way back, three takes: two wait, one each; the
		// third does not. One back wakes both waiting; neither counts
		// as waiting any more, so the one still on its way is waited
		// for again.
		w := &warmPool{}
		s := &warmSet{busy: 2, returning: 2}
		ip := &initProc{set: s, returning: true}
		got := make(chan bool, 2)
		for range 2 {
			go func() {
				w.mu.Lock()
				defer w.mu.Unlock()
				got <- w.awaitComing(context.Background(), s, true, never)
			}()
		}
		for {
			w.mu.Lock()
			awaited := s.awaited
			w.mu.Unlock()
			if awaited == 2 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		w.mu.Lock()
		third := w.awaitComing(context.Background(), s, true, never)
		ip.back()
		ip.leaveSet()
		w.mu.Unlock()
		if third {
			t.Error("a third take waited with two on their way back, both waited for")
		}
		if !<-got || !<-got {
			t.Fatal("awaitComing: false, want true (an init came back)")
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if s.awaited != 0 || s.returning != 1 {
			t.Errorf("after one back: %d waiting, %d returning; want 0 and 1", s.awaited, s.returning)
		}
	})
	t.Run("setup", func(t *testing.T) {
		// A setup in flight is waited for on a resident route only, and
		// not once it failed (pausing before its next try); its end
		// wakes the take.
		w := &warmPool{}
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.awaitComing(context.Background(), &warmSet{preparing: 1}, false, never) {
			t.Error("a warm (not resident) route's take waited for a setup")
		}
		if w.awaitComing(context.Background(), &warmSet{preparing: 1, failing: 1}, true, never) {
			t.Error("a take waited for a setup that failed")
		}
		s := &warmSet{preparing: 1}
		go func() {
			time.Sleep(20 * time.Millisecond)
			w.mu.Lock()
			s.preparing--
			s.arrived()
			w.mu.Unlock()
		}()
		if !w.awaitComing(context.Background(), s, true, never) {
			t.Error("awaitComing for a resident route's setup: false, want true (it ended)")
		}
		if s.awaited != 0 {
			t.Errorf("%d takes counted as waiting after the wait", s.awaited)
		}
	})
	t.Run("bound", func(t *testing.T) {
		w := &warmPool{}
		over := make(chan time.Time, 1)
		over <- time.Now()
		w.mu.Lock()
		got := w.awaitComing(context.Background(), &warmSet{returning: 1}, true, over)
		w.mu.Unlock()
		if got {
			t.Error("awaitComing past its bound: true, want false")
		}
	})
	t.Run("context", func(t *testing.T) {
		w := &warmPool{}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		w.mu.Lock()
		got := w.awaitComing(ctx, &warmSet{returning: 1}, true, never)
		w.mu.Unlock()
		if got {
			t.Error("awaitComing with its context ended: true, want false")
		}
	})
}

// TestStubTook: what the process started ahead in a request's cell left
// on the init's stub socket once the init has reported its end: its byte
// (it took the frame: the program may have run), its byte and an errno
// (its execve failed), nothing (it ended first: nothing ran), nothing
// with the frame unread (nothing ran either). The daemon holds both ends
// of the pair (prepareNext), so that no end of the stub's closes it; the
// pair serves the next stub only when the byte was read and nothing else
// (reuse): a frame left unread would go to the next stub.
func TestStubTook(t *testing.T) {
	for _, tc := range []struct {
		name        string
		wrote       []byte // by the stub before its end
		unread      bool   // the daemon's frame left unread
		closed      bool   // the stub's end closed (no end of it left)
		took, reuse bool
		errno       syscall.Errno
	}{
		{name: "took", wrote: []byte{1}, took: true, reuse: true},
		{name: "execve failed", wrote: append([]byte{1}, binary.NativeEndian.AppendUint32(nil, uint32(syscall.ENOENT))...), took: true, reuse: true, errno: syscall.ENOENT},
		{name: "ended first", took: false},
		{name: "frame unread", unread: true, took: false},
		{name: "frame unread, end closed", unread: true, closed: true, took: false},
		{name: "end closed", closed: true, took: false},
		{name: "not its byte", wrote: []byte{2}, took: true, reuse: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sv, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			daemon, stub := sv[0], sv[1]
			defer unix.Close(daemon)
			if tc.unread {
				if _, err := unix.Write(daemon, []byte("frame")); err != nil {
					t.Fatal(err)
				}
			}
			// The byte and the errno as the stub writes them: apart.
			if len(tc.wrote) > 0 {
				unix.Write(stub, tc.wrote[:1])
				if len(tc.wrote) > 1 {
					unix.Write(stub, tc.wrote[1:])
				}
			}
			if tc.closed {
				unix.Close(stub)
			} else {
				defer unix.Close(stub)
			}
			took, reuse, errno := stubTook(daemon)
			if took != tc.took || reuse != tc.reuse || errno != tc.errno {
				t.Errorf("stubTook: %v, %v, %v; want %v, %v, %v", took, reuse, errno, tc.took, tc.reuse, tc.errno)
			}
		})
	}
}

// TestTakeWaitedGrows: a take that finds its resident set empty and gets
// the init that was on its way back raises the set's target by one and
// asks for a refill, so that a client sending its requests back to back
// finds a second init ready while the first is put back; a take that
// finds one ready asks for nothing.
func TestTakeWaitedGrows(t *testing.T) {
	r := &Runner{}
	w := newWarmPool(r, 0, 4)
	r.warm = w
	defer w.cancel()
	plan := mustPrepare(t, &confine.Plan{Namespaces: confine.NSPID, Resident: true})
	k := warmKey{plan: plan}
	now := time.Now()
	s := &warmSet{want: 1, busy: 1, returning: 1, wake: make(chan struct{}, 1), taken: now, missed: now}
	w.sets[k] = s
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	ctl := fds[0]
	ip := &initProc{set: s, returning: true, resident: true, ctl: ctl, view: stampView(plan)}
	go func() { // its put back
		time.Sleep(20 * time.Millisecond)
		w.mu.Lock()
		defer w.mu.Unlock()
		ip.back()
		ip.leaveSet()
		s.ready = append(s.ready, ip)
	}()
	got, slot, refill := w.take(context.Background(), k)
	if got != ip || slot != nil {
		t.Fatalf("take: %p, slot %p; want the init that came back, no slot", got, slot)
	}
	w.mu.Lock()
	want := s.want
	w.mu.Unlock()
	if !refill || want != 2 {
		t.Errorf("after a wait: refill %v, target %d; want true, 2", refill, want)
	}

	// Back again at once: the next take finds it ready, and asks for
	// nothing.
	w.mu.Lock()
	ip.returning, s.returning = true, 1
	ip.back()
	ip.leaveSet()
	s.ready = append(s.ready, ip)
	w.mu.Unlock()
	got, _, refill = w.take(context.Background(), k)
	if got != ip || refill {
		t.Errorf("a ready init: take %p, refill %v; want it, false", got, refill)
	}
	if s.want != 2 {
		t.Errorf("after a hit: target %d, want 2", s.want)
	}
}

// TestSendToStubEnded: an exec frame larger than the stub socket's room,
// sent to a stub that died before it read it, fails once the init
// reports the stub's end (refused: nothing ran), instead of waiting for
// room forever (the daemon holds the stub's end of the pair too, so the
// socket never hangs up); a frame the stub reads goes whole.
func TestSendToStubEnded(t *testing.T) {
	pair := func() (int, int) {
		sv, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(sv[0]); unix.Close(sv[1]) })
		return sv[0], sv[1]
	}
	frame := make([]byte, 4<<20) // confine.MaxLaunch: far over the socket's room
	t.Run("stub ended", func(t *testing.T) {
		stub, _ := pair()
		ctl, initEnd := pair()
		done := make(chan error, 1)
		go func() { done <- sendToStub(stub, ctl, frame, []int{0}) }()
		time.Sleep(50 * time.Millisecond)
		unix.Write(initEnd, []byte("report")) // the init's report of the stub's end
		select {
		case err := <-done:
			if !errors.Is(err, errStubEnded) || !refused(err) {
				t.Fatalf("sendToStub: %v, want errStubEnded, refused", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("sendToStub still waits 10 s after the init reported the stub's end")
		}
	})
	t.Run("read", func(t *testing.T) {
		stub, stubEnd := pair()
		ctl, _ := pair()
		got := make(chan int, 1)
		go func() {
			n, buf := 0, make([]byte, 64<<10)
			for n < len(frame) {
				m, err := unix.Read(stubEnd, buf)
				if err != nil || m == 0 {
					break
				}
				n += m
			}
			got <- n
		}()
		if err := sendToStub(stub, ctl, frame, []int{0}); err != nil {
			t.Fatalf("sendToStub: %v", err)
		}
		if n := <-got; n != len(frame) {
			t.Fatalf("the stub read %d bytes, want %d", n, len(frame))
		}
	})
}

// TestResidentEndCounted: a resident init coming back is counted, when
// it is not kept, under why: one that died as failed (its network
// namespace cannot be read, which is not a socket left in it), one
// whose set went while its next cell was prepared as surplus.
func TestResidentEndCounted(t *testing.T) {
	plan := mustPrepare(t, &confine.Plan{Namespaces: confine.NSPID | confine.NSNet, Resident: true})
	k := warmKey{plan: plan}
	pool := func() *warmPool {
		w := newWarmPool(&Runner{}, 0, 4)
		t.Cleanup(w.cancel)
		return w
	}
	counts := func(w *warmPool) map[ResidentEnd]uint64 {
		got := map[ResidentEnd]uint64{}
		for _, e := range ResidentEndReasons() {
			if n := w.ends[e].Load(); n > 0 {
				got[e] = n
			}
		}
		return got
	}

	t.Run("died", func(t *testing.T) {
		w := pool()
		s := &warmSet{want: 2, busy: 1, wake: make(chan struct{}, 1)}
		w.sets[k] = s
		dead := exec.Command("true")
		if err := dead.Run(); err != nil { // reaped: its /proc/PID is gone
			t.Fatal(err)
		}
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[0])
		unix.Close(fds[1]) // the init's end, closed by its exit
		ip := &initProc{set: s, resident: true, proc: dead.Process, ctl: fds[0], view: stampView(plan)}
		defer ip.closeSockstat()
		if keep, _ := w.keeps(k, ip); keep {
			t.Fatal("a dead init kept")
		}
		if got := counts(w); len(got) != 1 || got[EndFailed] != 1 {
			t.Errorf("ends counted %v, want failed 1", got)
		}
	})

	t.Run("set gone meanwhile", func(t *testing.T) {
		w := pool()
		s := &warmSet{want: 2, busy: 1, wake: make(chan struct{}, 1)}
		w.sets[k] = s
		ip := &initProc{set: s, resident: true, view: stampView(plan), next: &fakeCell{c: &fakeCells{}}}
		keep, surplus := w.keeps(k, ip)
		if !keep {
			t.Fatalf("a quiet init of a set with room not kept (ends %v)", counts(w))
		}
		w.mu.Lock()
		delete(w.sets, k) // the set ended while the next cell was prepared
		w.mu.Unlock()
		if w.settle(k, ip, keep, surplus) {
			t.Fatal("an init of a set gone was put back")
		}
		if got := counts(w); len(got) != 1 || got[EndSurplus] != 1 {
			t.Errorf("ends counted %v, want surplus 1", got)
		}
		if s.busy != 0 || ip.set != nil {
			t.Errorf("after settle: busy %d, set %p; want 0, none", s.busy, ip.set)
		}
	})
}
