package cgroup

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestUpdateWrites(t *testing.T) {
	tests := []struct {
		name      string
		old, next []Setting
		want      []Setting
		unknown   []string
	}{
		{name: "first budget", next: set("memory.max", "1"), want: set("memory.max", "1")},
		{name: "same files", old: set("memory.max", "1", "pids.max", "5"), next: set("memory.max", "2", "pids.max", "6"), want: set("memory.max", "2", "pids.max", "6")},
		{name: "dropped limits reset first", old: set("memory.max", "1", "cpu.max", "1000 100000", "cpu.weight", "50"), next: set("pids.max", "6"),
			want: set("memory.max", "max", "cpu.max", "max", "cpu.weight", "100", "pids.max", "6")},
		{name: "io per device", old: set("io.max", "8:0 rbps=1", "io.max", "8:0 wbps=2", "io.weight", "8:0 50", "io.weight", "default 10"), next: set("io.max", "8:0 wbps=3"),
			want: set("io.max", "8:0 rbps=max", "io.weight", "8:0 default", "io.weight", "default 100", "io.max", "8:0 wbps=3")},
		{name: "quota and burst after a burst", old: set("cpu.max", "50000 100000", "cpu.max.burst", "40000"), next: set("cpu.max", "20000 100000", "cpu.max.burst", "10000"),
			want: set("cpu.max.burst", "0", "cpu.max", "20000 100000", "cpu.max.burst", "10000")},
		{name: "quota and burst, none before", old: set("cpu.max", "20000 100000"), next: set("cpu.max", "50000 100000", "cpu.max.burst", "40000"),
			want: set("cpu.max", "50000 100000", "cpu.max.burst", "40000")},
		{name: "burst dropped", old: set("cpu.max", "50000 100000", "cpu.max.burst", "40000"), next: set("cpu.max", "20000 100000"),
			want: set("cpu.max.burst", "0", "cpu.max", "20000 100000")},
		{name: "hugetlb", old: set("hugetlb.2MB.max", "4096"), want: set("hugetlb.2MB.max", "max")},
		{name: "unknown unified file", old: set("memory.zswap.max", "0", "memory.high", "9"), want: set("memory.high", "max"), unknown: []string{"memory.zswap.max"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, unknown := updateWrites(tt.old, tt.next)
			if !slices.Equal(got, tt.want) || !slices.Equal(unknown, tt.unknown) {
				t.Fatalf("got %v (unknown %v)\nwant %v (unknown %v)", got, unknown, tt.want, tt.unknown)
			}
		})
	}
}

// TestSetBudgetsRollback is a reload whose budgets the kernel refuses part
// of the way: a write for tenant c fails after the global budget, tenants
// a and b and the new tenant d were written. The tree must be as it was
// before: every file back to its previous value, d's group removed, and
// the groups' budgets as cellgate knows them unchanged. A file that cannot
// be put back is named in the error and logged at error level.
func TestSetBudgetsRollback(t *testing.T) {
	const gi = 1 << 30
	oldGlobal := &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(4 * gi)}}
	old := []Budget{
		{"a", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(gi)}, Pids: &specs.LinuxPids{Limit: i64(100)},
			CPU: &specs.LinuxCPU{Quota: i64(50000), Period: u64(100000)}}},
		{"b", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(gi)}}},
		{"c", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(10)}}},
	}
	newGlobal := &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(8 * gi)}}
	next := []Budget{
		{"a", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(2 * gi)}, Pids: &specs.LinuxPids{Limit: i64(200)}}}, // cpu.max dropped: reset
		{"b", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(3 * gi)}, Unified: map[string]string{"memory.high": "2147483648"}}},
		{"d", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(7)}}}, // a new tenant
		{"c", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(5 * gi)}, Pids: &specs.LinuxPids{Limit: i64(20)}}},
	}
	files := []string{"memory.max", "memory.high", "cpu.max", "pids.max"}
	tests := []struct {
		name string
		// breakRestore makes a's memory.max refuse writes once the
		// change has written it (when d's group is made).
		breakRestore bool
	}{
		{name: "restored"},
		{name: "a restore fails", breakRestore: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := &fakeFS{}
			var logs syncBuffer
			tr := mustOpenFake(t, fs, fakeRoot(t, "memory", "cpu", "pids"), func(o *Options) {
				o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			})
			if _, err := tr.SetBudgets(oldGlobal, old); err != nil {
				t.Fatal(err)
			}
			dir := func(name string) string { return filepath.Join(tr.CellsPath(), name) }
			// The kernel refuses c's pids.max: a directory where the file
			// was makes the write fail as a refused value would.
			refuse(t, filepath.Join(dir("c"), "pids.max"))
			if tt.breakRestore {
				fs.mkdirErr = func(path string) error {
					if path == dir("d") {
						refuse(t, filepath.Join(dir("a"), "memory.max"))
					}
					return nil
				}
			}
			before := snapshot(t, tr.CellsPath(), []string{"memory.max"})
			for _, b := range old {
				before += snapshot(t, dir(b.Tenant), files)
			}

			groups, err := tr.SetBudgets(newGlobal, next)
			if err == nil || groups != nil {
				t.Fatalf("SetBudgets with a refused write = %v, %v; want an error", groups, err)
			}
			after := snapshot(t, tr.CellsPath(), []string{"memory.max"})
			for _, b := range old {
				after += snapshot(t, dir(b.Tenant), files)
			}
			if exists(dir("d")) {
				t.Error("the group of the new tenant d was left behind")
			}
			if !tt.breakRestore {
				if after != before {
					t.Fatalf("files after the failed change:\n%s\nwant as before:\n%s", after, before)
				}
				if errors.Is(err, ErrNotRestored) {
					t.Errorf("err = %v; want no ErrNotRestored", err)
				}
				// The budgets cellgate knows are the old ones: a change
				// that now succeeds resets a's cpu.max, which only the
				// old budget set.
				os.Remove(filepath.Join(dir("c"), "pids.max"))
				write(t, filepath.Join(dir("c"), "pids.max"), "10\n")
				if _, err := tr.SetBudgets(newGlobal, next); err != nil {
					t.Fatal(err)
				}
				if got := read(t, filepath.Join(dir("a"), "cpu.max")); got != "max" {
					t.Errorf("a's cpu.max after the next change = %q, want max", got)
				}
				return
			}
			want := strings.Replace(before, "a/memory.max=1073741824\n", "a/memory.max=<refused>\n", 1)
			if after != want {
				t.Errorf("files after the failed change:\n%s\nwant:\n%s", after, want)
			}
			if !errors.Is(err, ErrNotRestored) || !strings.Contains(err.Error(), `memory.max="1073741824" in `+dir("a")) {
				t.Errorf("err = %v; want ErrNotRestored naming a's memory.max and its value", err)
			}
			if l := logs.String(); !containsAll(l, "level=ERROR", "tenant=a ", "file=memory.max ", "value=1073741824 ") {
				t.Errorf("log does not name the file left changed:\n%s", l)
			}
		})
	}
}

// refuse replaces the control file at path with a directory, which a
// write then fails on, as on a value the kernel refuses. The file is back
// (holding "max") before the tree closes: the fake's rmdir refuses a
// group with a directory in it.
func refuse(t testing.TB, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if fi, err := os.Stat(path); err == nil && fi.IsDir() {
			os.Remove(path)
			os.WriteFile(path, []byte("max\n"), 0o644)
		}
	})
}

// snapshot renders files of the group dir as "<group>/<file>=<value>"
// lines; a file refused writes (refuse) is "<refused>".
func snapshot(t testing.TB, dir string, files []string) string {
	t.Helper()
	var b strings.Builder
	for _, f := range files {
		v := "<refused>"
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		} else if !fi.IsDir() {
			v = read(t, filepath.Join(dir, f))
		}
		b.WriteString(filepath.Base(dir) + "/" + f + "=" + v + "\n")
	}
	return b.String()
}

func containsAll(s string, subs ...string) bool {
	return !slices.ContainsFunc(subs, func(sub string) bool { return !strings.Contains(s, sub) })
}

// syncBuffer is a bytes.Buffer a logger may write to from any goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAddTenants: the groups of the tenants that have none are made with
// their budgets, the others left as they are; when one cannot be made or
// its budget written, none of the groups made is left.
func TestAddTenants(t *testing.T) {
	budgets := []Budget{
		{"a", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(50)}}}, // has a group
		{"d", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(7)}}},
		{"e", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(8)}}},
	}
	tests := []struct {
		name string
		// failE makes e's group fail: its mkdir, or the write of its
		// budget (its pids.max missing).
		failE func(fs *fakeFS) error
	}{
		{name: "made"},
		{name: "mkdir refused", failE: func(*fakeFS) error { return unix.EAGAIN }},
		{name: "budget refused", failE: func(fs *fakeFS) error { fs.omit = []string{"pids.max"}; return nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := &fakeFS{}
			tr := mustOpenFake(t, fs, fakeRoot(t, "memory", "cpu", "pids"), nil)
			if _, err := tr.SetBudgets(nil, []Budget{{"a", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(10)}}}}); err != nil {
				t.Fatal(err)
			}
			dir := func(name string) string { return filepath.Join(tr.CellsPath(), name) }
			if tt.failE != nil {
				fs.mkdirErr = func(path string) error {
					if path == dir("e") {
						return tt.failE(fs)
					}
					return nil
				}
			}
			made, err := tr.AddTenants(budgets)
			if got := read(t, filepath.Join(dir("a"), "pids.max")); got != "10" {
				t.Errorf("a's pids.max = %q, want 10: a tenant with a group is left as it is", got)
			}
			if tt.failE != nil {
				if err == nil || made != nil {
					t.Fatalf("AddTenants with e failing = %v, %v; want an error", made, err)
				}
				for _, name := range []string{"d", "e"} {
					if exists(dir(name)) {
						t.Errorf("the group of %s was left behind", name)
					}
				}
				fs.mkdirErr, fs.omit = nil, nil
				if made, err := tr.AddTenants(budgets[:2]); err != nil || !slices.Equal(made, []string{"d"}) {
					t.Errorf("AddTenants again = %v, %v; want d made", made, err)
				}
				return
			}
			if err != nil || !slices.Equal(made, []string{"d", "e"}) {
				t.Fatalf("AddTenants = %v, %v; want d and e made", made, err)
			}
			if got := read(t, filepath.Join(dir("d"), "pids.max")) + " " + read(t, filepath.Join(dir("e"), "pids.max")); got != "7 8" {
				t.Errorf("pids.max of d and e = %s, want 7 8", got)
			}
			if made, err := tr.AddTenants(budgets); err != nil || made != nil {
				t.Errorf("AddTenants again = %v, %v; want nothing made", made, err)
			}
		})
	}
}

// TestBudgetWriteLeavesCellsFree: a budget change whose write the
// kernel holds (a memory.max lowered below what the group holds, which
// reclaims in the write) does not hold up the making of cells. A FIFO
// stands for the file: the change's read of its value (to restore it
// should the change fail) waits for the test to write one.
func TestBudgetWriteLeavesCellsFree(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids"), nil)
	budget := func(limit int64) []Budget {
		return []Budget{{"a", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(limit)}}}}
	}
	if _, err := tr.SetBudgets(nil, budget(1<<30)); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(tr.CellsPath(), "a", "memory.max")
	if err := os.Remove(fifo); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	changed := make(chan error, 1)
	go func() {
		_, err := tr.SetBudgets(nil, budget(512<<20))
		changed <- err
	}()
	// The change is in its read once a writer can open the FIFO.
	var w int
	for deadline := time.Now().Add(time.Minute); ; {
		fd, err := unix.Open(fifo, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err == nil {
			w = fd
			break
		}
		if !errors.Is(err, unix.ENXIO) || time.Now().After(deadline) {
			t.Fatalf("the budget change never read %s: %v", fifo, err)
		}
		time.Sleep(time.Millisecond)
	}

	prof, err := NewProfile("a", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(32 << 20)}})
	if err != nil {
		t.Fatal(err)
	}
	made := make(chan error, 1)
	go func() {
		c, err := tr.NewCell(prof)
		if err == nil {
			err = c.Remove(context.Background())
		}
		made <- err
	}()
	waited := false
	select {
	case err := <-made:
		if err != nil {
			t.Errorf("NewCell during a budget change: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("NewCell waited for the budget change's write")
		waited = true
	}

	// Let the change go on: the value read, then the new one written.
	if _, err := unix.Write(w, []byte("1073741824\n")); err != nil {
		t.Fatal(err)
	}
	unix.Close(w)
	r, err := os.Open(fifo)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || string(got) != "536870912" {
		t.Errorf("the change wrote %q (%v), want 536870912", got, err)
	}
	if err := <-changed; err != nil {
		t.Errorf("SetBudgets: %v", err)
	}
	if waited {
		<-made
	}
}
