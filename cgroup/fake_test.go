package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeFS imitates cgroupfs on a plain directory: mkdir creates the control
// files a kernel would (the controllers come from the parent's
// cgroup.subtree_control), rmdir refuses populated groups and groups with
// children (EBUSY) and removes the files first. Tests simulate processes by
// writing "populated 1" to cgroup.events; kill turns it back to 0 when
// autoKill is set (see killer).
type fakeFS struct {
	// mkdirErr, when set, may refuse a mkdir (EAGAIN, ENOSPC).
	mkdirErr func(path string) error
	// rmdirHook, when set, runs before each rmdir (tests block in it).
	rmdirHook func(path string)
	// omit names control files mkdir does not create (a kernel without
	// them); set it after Open, whose probe needs cgroup.kill.
	omit []string
	// peakReadOnly makes memory.peak 0444, as before Linux 6.12 (no
	// reset); by default it is 0644, as from 6.12.
	peakReadOnly bool

	mkdirs atomic.Int64
	rmdirs atomic.Int64
}

var controllerFiles = map[string]map[string]string{
	"memory": {
		"memory.max": "max\n", "memory.low": "0\n", "memory.high": "max\n", "memory.swap.max": "max\n",
		"memory.oom.group": "0\n", "memory.peak": "0\n", "memory.current": "0\n",
		"memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
	},
	"cpu":  {"cpu.max": "max 100000\n", "cpu.weight": "100\n", "cpu.max.burst": "0\n", "cpu.idle": "0\n"},
	"pids": {"pids.max": "max\n", "pids.peak": "0\n", "pids.events": "max 0\n"},
	"io":   {"io.stat": "", "io.max": "", "io.weight": "default 100\n"},
	"hugetlb": {
		"hugetlb.2MB.max": "max\n", "hugetlb.2MB.rsvd.max": "max\n", "hugetlb.2MB.current": "0\n",
		"hugetlb.1GB.max": "max\n", "hugetlb.1GB.rsvd.max": "max\n", "hugetlb.1GB.current": "0\n",
	},
}

func (f *fakeFS) mkdir(path string) error {
	if f.mkdirErr != nil {
		if err := f.mkdirErr(path); err != nil {
			return err
		}
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		return errnoOf(err)
	}
	f.mkdirs.Add(1)
	parent, _ := os.ReadFile(filepath.Join(filepath.Dir(path), "cgroup.subtree_control"))
	ctrls := fakeControllers(string(parent))
	files := map[string]string{
		"cgroup.events": "populated 0\nfrozen 0\n", "cgroup.kill": "", "cgroup.procs": "",
		"cgroup.subtree_control": "", "cgroup.controllers": strings.Join(ctrls, " ") + "\n",
		"cgroup.max.descendants": "max\n", "cgroup.type": "domain\n",
		"cgroup.stat": "nr_descendants 0\nnr_dying_descendants 0\n",
	}
	cpuStat := "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"
	for _, c := range ctrls {
		for k, v := range controllerFiles[c] {
			files[k] = v
		}
		if c == "cpu" {
			cpuStat += "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"
		}
	}
	files["cpu.stat"] = cpuStat
	for k, v := range files {
		if slices.Contains(f.omit, k) {
			continue
		}
		mode := os.FileMode(0o644)
		if k == "memory.peak" && f.peakReadOnly {
			mode = 0o444
		}
		if err := os.WriteFile(filepath.Join(path, k), []byte(v), mode); err != nil {
			return err
		}
	}
	return nil
}

// fakeControllers parses a subtree_control the fake wrote or a test wrote:
// "+memory +cpu" and "memory cpu" both name memory and cpu.
func fakeControllers(s string) []string {
	var out []string
	for _, f := range strings.Fields(s) {
		out = append(out, strings.TrimPrefix(f, "+"))
	}
	return out
}

func (f *fakeFS) rmdir(path string) error {
	if f.rmdirHook != nil {
		f.rmdirHook(path)
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return errnoOf(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			return unix.EBUSY
		}
	}
	ev, _ := os.ReadFile(filepath.Join(path, "cgroup.events"))
	if strings.Contains(string(ev), "populated 1") {
		return unix.EBUSY
	}
	for _, e := range ents {
		os.Remove(filepath.Join(path, e.Name()))
	}
	f.rmdirs.Add(1)
	return errnoOf(os.Remove(path))
}

func errnoOf(err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// fakeRoot makes a fake cgroup2 mount in t.TempDir() whose root delegates
// ctrls, and returns its path.
func fakeRoot(t testing.TB, ctrls ...string) string {
	t.Helper()
	root := t.TempDir()
	write(t, filepath.Join(root, "cgroup.controllers"), strings.Join(ctrls, " "))
	write(t, filepath.Join(root, "cgroup.subtree_control"), strings.Join(ctrls, " "))
	return root
}

// openFake opens a Tree on a fake root with a private base.
func openFake(t testing.TB, fs *fakeFS, root string, mod func(*Options)) (*Tree, error) {
	t.Helper()
	o := Options{
		Mount:      root,
		Base:       filepath.Join(root, "cellgate"),
		ProbeSpawn: func(int) error { return nil },
		ops:        fs,
	}
	if mod != nil {
		mod(&o)
	}
	return Open(t.Context(), o)
}

func mustOpenFake(t testing.TB, fs *fakeFS, root string, mod func(*Options)) *Tree {
	t.Helper()
	tr, err := openFake(t, fs, root, mod)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// write writes a fake cgroupfs file as the kernel does: whatever its
// mode (a read-only memory.peak included, which only root could write
// through its mode).
func write(t testing.TB, path, s string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err == nil && fi.Mode().Perm()&0o200 == 0 {
		if err := os.Chmod(path, fi.Mode().Perm()|0o200); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(path, fi.Mode().Perm())
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// killer simulates the kernel's cgroup.kill for dir: when cgroup.kill of
// dir or of a group above it becomes "1" it writes populated 0. It stops
// at the end of the test.
func killer(t testing.TB, dir string) {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	t.Cleanup(func() { close(done); wg.Wait() })
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
			if killedAbove(dir) {
				// Overwrite the file in place (a cell holds it open) with
				// a value of the same length and no truncation, so a
				// concurrent read sees one value or the other, as the
				// kernel's does.
				if f, err := os.OpenFile(filepath.Join(dir, "cgroup.events"), os.O_WRONLY, 0); err == nil {
					f.WriteAt([]byte("populated 0\nfrozen 0\n"), 0)
					f.Close()
				}
				return
			}
		}
	}()
}

// killedAbove reports whether cgroup.kill of dir or of a directory above
// it holds "1".
func killedAbove(dir string) bool {
	for d := dir; d != filepath.Dir(d); d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "cgroup.kill")); err == nil && strings.TrimSpace(string(b)) == "1" {
			return true
		}
	}
	return false
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
