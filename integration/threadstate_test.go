package integration

import (
	"cmp"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// threadStates says where serve's OS threads sat in the kernel over a
// phase, sampled from /proc/<pid>/task/*/stack (wchan where the stack is
// not readable): the most threads seen at once, and per state the most
// threads seen in it at once. A Go thread blocked in a system call is one
// the runtime replaced with a new thread to keep running goroutines, so
// the states other than the futex of an idle M tell where the extra
// threads were made. A thread in read(2) or write(2) also says what the
// fd is and whether it blocks: a non-blocking read seen in pipe_read was
// copying (a long system call, after which the runtime had given its P to
// another thread), not waiting.
type threadStates struct {
	samples, most int
	peak          map[string]int // state: most threads in it at once
	// busiest is the sample with the most threads outside idleState.
	busiest map[string]int
}

// idleState is where an idle Go thread (an M with no work) waits.
const idleState = "futex_wait_queue in __x64_sys_futex"

func busy(counts map[string]int) int {
	n := 0
	for s, c := range counts {
		if s != idleState {
			n += c
		}
	}
	return n
}

// threadSampleEvery is how often startThreadSampler looks.
const threadSampleEvery = 20 * time.Millisecond

// startThreadSampler samples serve's threads until the returned function
// is called, which returns what was seen.
func startThreadSampler(b *testing.B, pid int) func() threadStates {
	b.Helper()
	st := threadStates{peak: map[string]int{}}
	stop, done := make(chan struct{}), make(chan struct{})
	var once sync.Once
	go func() {
		defer close(done)
		tick := time.NewTicker(threadSampleEvery)
		defer tick.Stop()
		for {
			counts := sampleThreads(pid)
			st.samples++
			total := 0
			for state, n := range counts {
				st.peak[state] = max(st.peak[state], n)
				total += n
			}
			st.most = max(st.most, total)
			if busy(counts) > busy(st.busiest) {
				st.busiest = counts
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() threadStates {
		once.Do(func() { close(stop) })
		<-done
		return st
	}
}

// sampleThreads counts pid's threads by kernel state; threads that end
// while being read are left out.
func sampleThreads(pid int) map[string]int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	counts := map[string]int{}
	for _, task := range tasks {
		if state, ok := threadState(task); ok {
			counts[state]++
		}
	}
	return counts
}

// threadState names where one thread is: "running" when it is on a CPU or
// runnable in user space; else its innermost kernel frame that is not the
// scheduler's, with the system call's entry point it came through
// ("__mutex_lock in __x64_sys_mkdir", the frame under do_syscall_64);
// else its wchan.
func threadState(task string) (string, bool) {
	stat, err := os.ReadFile(filepath.Join(task, "stat"))
	if err != nil {
		return "", false
	}
	// The state letter follows the ")" that ends the command name.
	if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'R' {
		return "running", true
	}
	if stack, err := os.ReadFile(filepath.Join(task, "stack")); err == nil && len(stack) > 0 {
		return stackState(string(stack)) + readFDState(task), true
	}
	wchan, err := os.ReadFile(filepath.Join(task, "wchan"))
	if err != nil {
		return "", false
	}
	return "wchan " + cmp.Or(strings.TrimSpace(string(wchan)), "0"), true
}

// stackState reduces a /proc/<pid>/task/<tid>/stack to its innermost frame
// outside the scheduler and the system call's entry point.
func stackState(stack string) string {
	var frames []string
	for line := range strings.Lines(stack) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		name, _, _ := strings.Cut(f[len(f)-1], "+")
		frames = append(frames, name)
	}
	top, entry := "", ""
	for i, f := range frames {
		if top == "" && !schedulerFrame(f) {
			top = f
		}
		if f == "do_syscall_64" && i > 0 {
			entry = frames[i-1]
		}
	}
	top = cmp.Or(top, cmp.Or(strings.Join(frames, "<"), "no stack"))
	if entry == "" || entry == top {
		return top
	}
	return top + " in " + entry
}

// readFDState says, for a thread in read(2) or write(2), what the file
// is and whether it is in blocking mode (" on pipe, blocking"), from
// /proc/<pid>/task/<tid>/syscall and the fd's fdinfo; "" otherwise.
func readFDState(task string) string {
	sc, err := os.ReadFile(filepath.Join(task, "syscall"))
	f := strings.Fields(string(sc))
	if err != nil || len(f) < 2 || (f[0] != "0" && f[0] != "1") {
		return ""
	}
	fd, err := strconv.ParseUint(strings.TrimPrefix(f[1], "0x"), 16, 32)
	if err != nil {
		return ""
	}
	target, _ := os.Readlink(filepath.Join(task, "fd", strconv.FormatUint(fd, 10)))
	kind, _, _ := strings.Cut(target, ":")
	info, _ := os.ReadFile(filepath.Join(task, "fdinfo", strconv.FormatUint(fd, 10)))
	mode := "blocking"
	for line := range strings.Lines(string(info)) {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			if flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil && flags&0o4000 != 0 {
				mode = "non-blocking"
			}
		}
	}
	return " on " + kind + ", " + mode
}

func schedulerFrame(f string) bool {
	for _, p := range []string{"__schedule", "schedule", "io_schedule", "preempt_schedule", "__cond_resched"} {
		if strings.HasPrefix(f, p) {
			return true
		}
	}
	return false
}

// String lists the states by their peaks, largest first.
func (st threadStates) String() string {
	states := make([]string, 0, len(st.peak))
	for s := range st.peak {
		states = append(states, s)
	}
	slices.SortFunc(states, func(a, c string) int {
		return cmp.Or(cmp.Compare(st.peak[c], st.peak[a]), cmp.Compare(a, c))
	})
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d samples every %s, at most %d threads at once; most at once per kernel state:", st.samples, threadSampleEvery, st.most)
	for _, s := range states {
		fmt.Fprintf(&sb, "\n\t%3d  %s", st.peak[s], s)
	}
	fmt.Fprintf(&sb, "\nthe sample with the most threads not idle (%d):", busy(st.busiest))
	for _, s := range slices.Sorted(maps.Keys(st.busiest)) {
		fmt.Fprintf(&sb, "\n\t%3d  %s", st.busiest[s], s)
	}
	return sb.String()
}
