package confine

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFinishEmptiesTmpfs: with a mount namespace of its own, finish
// removes what the cell's tmpfs mounts hold (files, directories,
// symlinks, not what they point to) and keeps the mount points; without
// one it touches nothing.
func TestFinishEmptiesTmpfs(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	fill := func(t *testing.T) (string, string) {
		a, b := t.TempDir(), t.TempDir()
		for _, err := range []error{
			os.WriteFile(filepath.Join(a, "f"), []byte("data"), 0o600),
			os.MkdirAll(filepath.Join(a, "d", "e"), 0o700),
			os.WriteFile(filepath.Join(a, "d", "e", "g"), []byte("data"), 0o600),
			os.Symlink(outside, filepath.Join(b, "link")),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
		return a, b
	}
	count := func(t *testing.T, dirs ...string) int {
		n := 0
		for _, d := range dirs {
			ents, err := os.ReadDir(d)
			if err != nil {
				t.Fatalf("mount point %s: %v", d, err)
			}
			n += len(ents)
		}
		return n
	}
	for _, tc := range []struct {
		name string
		ns   Namespaces
		want int
	}{
		{"own mount namespace", NSMount, 0},
		{"host mount namespace", AllNamespaces &^ NSMount &^ NSPID, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := fill(t)
			finish(&Plan{Namespaces: tc.ns, Tmpfs: []Tmpfs{{Target: a}, {Target: b}}})
			if n := count(t, a, b); n != tc.want {
				t.Errorf("%d entries left in the tmpfs mount points, want %d", n, tc.want)
			}
			if _, err := os.Stat(outside); err != nil {
				t.Errorf("a symlink's target outside the mounts: %v", err)
			}
		})
	}
}

// emptyDirChild names the directory emptyDirMain works in, when the test
// binary is started for it.
const emptyDirChild = "CONFINE_TEST_EMPTYDIR"

// emptyDirMain runs in a mount namespace of its own (unshare -m): it
// mounts a tmpfs below dir with a file in it, empties dir, and fails
// (exit 1) when the file below the mount is gone.
func emptyDirMain(dir string) int {
	m := filepath.Join(dir, "mounted")
	if err := os.Mkdir(m, 0o755); err != nil {
		fmt.Println(err)
		return 2
	}
	if err := unix.Mount("tmpfs", m, "tmpfs", 0, "size=1m"); err != nil {
		fmt.Println("mount:", err)
		return 2
	}
	kept := filepath.Join(m, "host-file")
	if err := os.WriteFile(kept, []byte("x"), 0o644); err != nil {
		fmt.Println(err)
		return 2
	}
	emptyDir(dir)
	if _, err := os.Stat(kept); err != nil {
		fmt.Println("a file on another mount below the tmpfs was removed:", err)
		return 1
	}
	return 0
}

// TestEmptyDirStaysOnItsMount: emptying a cell's tmpfs never crosses into
// a mount below it (a writable bind of the host's under /tmp), as the C
// init's nftw(FTW_MOUNT) does not; the Go init's os.RemoveAll did.
func TestEmptyDirStaysOnItsMount(t *testing.T) {
	inOwnMountNamespace(t, emptyDirChild)
}

// inOwnMountNamespace runs this test binary as root in a mount namespace
// of its own (unshare -m) with env set to a directory of its own, where
// TestMain runs that variable's child, and fails with its output when it
// fails.
func inOwnMountNamespace(t *testing.T, env string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare(1)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(unshare, "-m", "--propagation", "private", self)
	cmd.Env = append(os.Environ(), env+"="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

// TestTmpfsEmpty: the statfs that spares an empty tmpfs the walk says
// empty only for a tmpfs that holds nothing but its root: not with a
// file, a directory, a symlink or a file unlinked but still open in it,
// not for a tmpfs without an inode limit, and not for a directory of
// another filesystem, however empty.
func TestTmpfsEmpty(t *testing.T) {
	// An empty directory is an inode of its filesystem besides the root.
	if tmpfsEmpty(t.TempDir()) {
		t.Errorf("an empty directory of a filesystem is taken for an empty tmpfs")
	}
	inOwnMountNamespace(t, tmpfsEmptyChild)
}

// tmpfsEmptyChild names the directory tmpfsEmptyMain works in, when the
// test binary is started for it.
const tmpfsEmptyChild = "CONFINE_TEST_TMPFSEMPTY"

// tmpfsEmptyMain runs in a mount namespace of its own (unshare -m): it
// mounts tmpfs below dir and prints each wrong answer of tmpfsEmpty
// (exit 1).
func tmpfsEmptyMain(dir string) int {
	bad := 0
	check := func(what, at string, want bool) {
		if got := tmpfsEmpty(at); got != want {
			fmt.Printf("%s: tmpfsEmpty %v, want %v\n", what, got, want)
			bad++
		}
	}
	m := filepath.Join(dir, "cell")
	unlimited := filepath.Join(dir, "unlimited")
	for _, d := range []string{m, unlimited} {
		if err := os.Mkdir(d, 0o755); err != nil {
			fmt.Println(err)
			return 2
		}
	}
	if err := unix.Mount("tmpfs", m, "tmpfs", 0, "size=1m"); err != nil {
		fmt.Println("mount:", err)
		return 2
	}
	if err := unix.Mount("tmpfs", unlimited, "tmpfs", 0, "size=1m,nr_inodes=0"); err != nil {
		fmt.Println("mount:", err)
		return 2
	}
	check("a fresh tmpfs", m, true)
	check("a fresh tmpfs without an inode limit", unlimited, false)
	check("the directory holding the mounts", dir, false)
	for _, step := range []struct {
		what string
		make func(string) error
	}{
		{"a file", func(p string) error { return os.WriteFile(p, []byte("x"), 0o600) }},
		{"a directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"a symlink", func(p string) error { return os.Symlink("/etc/passwd", p) }},
	} {
		if err := step.make(filepath.Join(m, "x")); err != nil {
			fmt.Println(err)
			return 2
		}
		check("a tmpfs with "+step.what, m, false)
		emptyDir(m)
		check("the tmpfs emptied of "+step.what, m, true)
	}
	f, err := os.Create(filepath.Join(m, "open"))
	if err != nil {
		fmt.Println(err)
		return 2
	}
	os.Remove(f.Name())
	check("a tmpfs with a file unlinked but open", m, false)
	f.Close()
	check("the tmpfs once that file is closed", m, true)
	if bad > 0 {
		return 1
	}
	return 0
}

// TestWipeFollowsNoSwappedLink: emptying a cell's tmpfs, both inits (root)
// never follow a symlink that replaces a directory while they walk. A
// process outside the cell may hold a directory fd of the tmpfs (passed
// over a socket in a shared writable mount) and swap a directory with a
// symlink to somewhere else in a loop; a walk by paths then removed files
// there (the C init's nftw and the Go walk both did, a few hundred of a
// thousand files per round).
func TestWipeFollowsNoSwappedLink(t *testing.T) {
	t.Setenv(cWipeEnv, cWipe(t))
	inOwnMountNamespace(t, wipeRaceChild)
}

// wipeRaceChild names the directory wipeRaceMain works in; cWipeEnv the
// C init's wipe compiled alone (testdata/wipe.c), empty without a C
// compiler.
const (
	wipeRaceChild = "CONFINE_TEST_WIPERACE"
	cWipeEnv      = "CONFINE_TEST_CWIPE"
)

// cWipe compiles testdata/wipe.c, or returns "" without a C compiler.
func cWipe(t *testing.T) string {
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	if _, err := exec.LookPath(cc); err != nil {
		t.Logf("no C compiler, the Go walk only: %v", err)
		return ""
	}
	bin := filepath.Join(t.TempDir(), "wipe")
	if out, err := exec.Command(cc, "-O2", "-static", "-w", "-o", bin, "testdata/wipe.c").CombinedOutput(); err != nil {
		t.Fatalf("compile testdata/wipe.c: %v\n%s", err, out)
	}
	return bin
}

// wipeRaceMain runs in a mount namespace of its own (unshare -m): a
// directory of files outside a tmpfs, the same names in a directory of
// the tmpfs beside a symlink to the first, the two swapped in a loop while
// each walk empties the tmpfs; it fails (exit 1) when a file outside the
// tmpfs is gone.
func wipeRaceMain(dir string) int {
	const files, rounds = 1000, 5
	victim, cell := filepath.Join(dir, "victim"), filepath.Join(dir, "cell")
	for _, d := range []string{victim, cell} {
		if err := os.Mkdir(d, 0o755); err != nil {
			fmt.Println(err)
			return 2
		}
	}
	if err := unix.Mount("tmpfs", cell, "tmpfs", 0, "size=16m"); err != nil {
		fmt.Println("mount:", err)
		return 2
	}
	fill := func(d string) error {
		for i := range files {
			if err := os.WriteFile(filepath.Join(d, fmt.Sprint("f", i)), nil, 0o644); err != nil {
				return err
			}
		}
		return nil
	}
	if err := fill(victim); err != nil {
		fmt.Println(err)
		return 2
	}
	walks := []struct {
		name string
		run  func() error
	}{{"the Go init", func() error { emptyDir(cell); return nil }}}
	if c := os.Getenv(cWipeEnv); c != "" {
		walks = append(walks, struct {
			name string
			run  func() error
		}{"the C init", func() error { return exec.Command(c, cell).Run() }})
	}
	for _, w := range walks {
		for range rounds {
			sw := filepath.Join(cell, "w")
			d, s := filepath.Join(sw, "d"), filepath.Join(sw, "s")
			if err := os.MkdirAll(d, 0o755); err != nil {
				fmt.Println(err)
				return 2
			}
			if err := fill(d); err != nil {
				fmt.Println(err)
				return 2
			}
			if err := os.Symlink(victim, s); err != nil {
				fmt.Println(err)
				return 2
			}
			stop, done := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(done)
				for {
					select {
					case <-stop:
						return
					default:
						unix.Renameat2(unix.AT_FDCWD, d, unix.AT_FDCWD, s, unix.RENAME_EXCHANGE)
					}
				}
			}()
			err := w.run()
			close(stop)
			<-done
			if err != nil {
				fmt.Printf("%s: %v\n", w.name, err)
				return 2
			}
			left, err := os.ReadDir(victim)
			if err != nil {
				fmt.Println(err)
				return 2
			}
			if len(left) != files {
				fmt.Printf("%s removed %d of %d files outside the tmpfs through a swapped symlink\n", w.name, files-len(left), files)
				return 1
			}
			os.RemoveAll(sw) // what the walk left while the swaps ran (a link it could not remove as a directory)
		}
	}
	return 0
}

// wipeDirChild names the directory the test binary empties (emptyDir)
// when started for it.
const wipeDirChild = "CONFINE_TEST_WIPEDIR"

// TestWipeWithTheUnitsCapabilities: both inits empty a cell's tmpfs with
// the capabilities the systemd unit and the pod leave them, which have
// neither CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH nor CAP_FOWNER: what the
// program (another uid) closed to others (0700, as mkdtemp makes), made
// read-only (0500), or left in a sticky directory of its own goes too.
// Before, root could not open or write in them: their files stayed
// charged to the cell until its end, and a resident cell ended as
// unclean after each such request.
func TestWipeWithTheUnitsCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("files of another uid need root")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("no setpriv(1)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	walks := map[string][]string{"the Go init": {self}}
	if c := cWipe(t); c != "" {
		walks["the C init"] = []string{c}
	}
	const uid = 2000000000
	for name, argv := range walks {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			tree := []struct {
				path string
				mode os.FileMode
				dir  bool
			}{
				{"closed", 0o700, true}, {"closed/f", 0o600, false},
				{"closed/sub", 0o700, true}, {"closed/sub/f", 0o600, false},
				{"readonly", 0o500, true},
				{"sticky", 0o1777 | os.ModeSticky, true}, {"sticky/f", 0o600, false},
				{"top", 0o600, false},
			}
			// Made from the leaves up: a directory is closed only once
			// what it holds is made.
			for _, e := range tree {
				p := filepath.Join(dir, e.path)
				var err error
				if e.dir {
					err = os.Mkdir(p, 0o755)
				} else {
					err = os.WriteFile(p, []byte("x"), 0o600)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(dir, "readonly", "f"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			for i := len(tree) - 1; i >= 0; i-- {
				p := filepath.Join(dir, tree[i].path)
				if err := os.Lchown(p, uid, uid); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, tree[i].mode); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Lchown(filepath.Join(dir, "readonly", "f"), uid, uid); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(setpriv, append([]string{"--bounding-set=-dac_override,-dac_read_search,-fowner", "--"}, append(argv, dir)...)...)
			cmd.Env = append(os.Environ(), wipeDirChild+"="+dir)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, out)
			}
			var left []string
			filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if p != dir {
					left = append(left, strings.TrimPrefix(p, dir+"/"))
				}
				return nil
			})
			if len(left) > 0 {
				t.Errorf("%s, without CAP_DAC_OVERRIDE and CAP_FOWNER, left %q", name, left)
			}
		})
	}
}
