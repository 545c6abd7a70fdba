package sandbox

import (
	"errors"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseStat(t *testing.T) {
	tail := " 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 4242 0 0"
	for _, tc := range []struct {
		name string
		line string
		want procStat
		err  bool
	}{
		{name: "zombie", line: "9 (sh) Z 1 9 9" + tail, want: procStat{comm: "sh", state: 'Z', ppid: 1, start: 4242}},
		{name: "comm with spaces and parentheses", line: "12 (a) b) (c) S 7 12 12" + tail, want: procStat{comm: "a) b) (c", state: 'S', ppid: 7, start: 4242}},
		{name: "no comm", line: "12 sh Z 1", err: true},
		{name: "cut before starttime", line: "9 (sh) Z 1 9 9 0 0", err: true},
		{name: "ppid not a number", line: "9 (sh) Z x 9 9" + tail, err: true},
		{name: "empty", line: "", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.line))
			if tc.err {
				if err == nil {
					t.Fatalf("parseStat(%q) = %+v, want an error", tc.line, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseStat(%q) = %+v, %v; want %+v", tc.line, got, err, tc.want)
			}
		})
	}
}

func TestSeenTwice(t *testing.T) {
	a, b := procID{pid: 10, start: 100}, procID{pid: 11, start: 100}
	for _, tc := range []struct {
		name string
		prev []procID
		cur  []procID
		want []procID
	}{
		{name: "first sighting", cur: []procID{a}},
		{name: "second sighting", prev: []procID{a}, cur: []procID{a, b}, want: []procID{a}},
		{name: "pid used again", prev: []procID{{pid: 10, start: 99}}, cur: []procID{a}},
		{name: "gone", prev: []procID{a, b}, cur: []procID{b}, want: []procID{b}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prev := map[procID]struct{}{}
			for _, id := range tc.prev {
				prev[id] = struct{}{}
			}
			got, next := seenTwice(prev, tc.cur)
			if len(got) != len(tc.want) {
				t.Fatalf("seenTwice = %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("seenTwice = %v, want %v", got, tc.want)
				}
			}
			if len(next) != len(tc.cur) {
				t.Fatalf("next scan's prev = %v, want %v", next, tc.cur)
			}
			for _, id := range tc.cur {
				if _, ok := next[id]; !ok {
					t.Fatalf("next scan's prev = %v, want %v", next, tc.cur)
				}
			}
		})
	}
}

// zombie waits until pid is a zombie.
func zombie(t testing.TB, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			t.Fatalf("pid %d: %v", pid, err)
		}
		if st, err := parseStat(b); err == nil && st.state == 'Z' {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d is not a zombie after 30s: %s", pid, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// forkTrue starts /bin/true with no pidfd anywhere in this process.
func forkTrue(t testing.TB) int {
	t.Helper()
	pid, err := syscall.ForkExec("/bin/true", []string{"true"}, &syscall.ProcAttr{})
	if err != nil {
		t.Fatalf("fork /bin/true: %v", err)
	}
	return pid
}

func newTestStrays(t testing.TB) *StrayReaper {
	t.Helper()
	if fd, err := unix.PidfdOpen(os.Getpid(), 0); err != nil {
		t.Skipf("no pidfd_open: %v", err)
	} else {
		unix.Close(fd)
	}
	s, err := NewStrayReaper(StrayConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStrayScan: of the test's zombie children, only the one no fd of the
// process refers to is reaped, and only at the second scan that sees it;
// the one an os.Process holds and the one a bare pidfd_open holds (an
// init the spawner cloned) are left to their waiters.
func TestStrayScan(t *testing.T) {
	s := newTestStrays(t)

	proc, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	opened := forkTrue(t)
	pidfd, err := unix.PidfdOpen(opened, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	stray := forkTrue(t)
	for _, pid := range []int{proc.Pid, opened, stray} {
		zombie(t, pid)
	}

	s.Scan()
	for _, pid := range []int{proc.Pid, opened, stray} {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err != nil {
			t.Fatalf("pid %d reaped at its first sighting: %v", pid, err)
		} else if st, _ := parseStat(b); st.state != 'Z' {
			t.Fatalf("pid %d reaped at its first sighting: %s", pid, b)
		}
	}
	before := s.Reaped()
	s.Scan()
	if got := s.Reaped() - before; got < 1 {
		t.Errorf("second scan reaped %d strays, want the one", got)
	}
	if _, err := unix.Wait4(stray, nil, unix.WNOHANG, nil); !errors.Is(err, unix.ECHILD) {
		t.Errorf("the stray (pid %d) is still a child after the second scan: wait4: %v", stray, err)
	}

	ps, err := proc.Wait()
	if err != nil || !ps.Success() {
		t.Errorf("the os.Process's child was taken: Wait = %v, %v", ps, err)
	}
	st, ok, err := waitidNoHang(pidfd)
	if err != nil || !ok || st.code != 0 {
		t.Errorf("the pidfd_open'ed child was taken: waitid = %v, %v, %v", st, ok, err)
	}
}

// BenchmarkStrayHeldPidfds: the fd scan of a scan that found a candidate,
// with 3,000 pipes (6,000 fds) and 100 pidfds open beside it.
func BenchmarkStrayHeldPidfds(b *testing.B) {
	newTestStrays(b)
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for range 3000 {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			b.Fatalf("pipe (raise the fd limit): %v", err)
		}
		fds = append(fds, p[0], p[1])
	}
	for range 100 {
		fd, err := unix.PidfdOpen(os.Getpid(), 0)
		if err != nil {
			b.Fatal(err)
		}
		fds = append(fds, fd)
	}
	pid := forkTrue(b)
	zombie(b, pid)
	b.Cleanup(func() { unix.Wait4(pid, nil, 0, nil) })
	b.ReportMetric(float64(len(fds)), "fds")
	b.ResetTimer()
	for b.Loop() {
		c := openCand(procID{pid: pid, start: startOf(b, pid)}, os.Getpid())
		if c == nil {
			b.Fatal("no candidate")
		}
		if held := heldPidfds(map[int]*strayCand{pid: c}); held[pid] {
			b.Fatal("a stray is held")
		}
		unix.Close(c.fd)
	}
}

func startOf(t testing.TB, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	st, err := parseStat(b)
	if err != nil {
		t.Fatal(err)
	}
	return st.start
}
