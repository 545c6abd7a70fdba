package confine

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLauncherGoInit: the running executable, opened as itself or by its
// path (serve --init naming the cellgate binary), is the Go init; another
// executable is not.
func TestLauncherGoInit(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want bool
	}{{"", true}, {exe, true}, {"/bin/sh", false}} {
		l, err := OpenLauncher(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.GoInit(); got != tc.want {
			t.Errorf("OpenLauncher(%q).GoInit() = %v, want %v", tc.path, got, tc.want)
		}
		l.Close()
	}
}

// TestLauncherCheck: a launcher whose fd number now holds another file
// (as after a double close elsewhere and an open reusing the number) is
// named so, with the file now there; an intact one passes.
func TestLauncherCheck(t *testing.T) {
	l, err := OpenLauncher("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Check(); err != nil {
		t.Fatalf("Check of a launcher just opened: %v", err)
	}
	null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(null)
	if err := unix.Dup3(null, l.fd, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	err = l.Check()
	if err == nil || !strings.Contains(err.Error(), "now /dev/null") || !strings.Contains(err.Error(), "/bin/sh") {
		t.Errorf("Check with /dev/null on the launcher's fd: %v, want an error naming /bin/sh and /dev/null", err)
	}
}

// TestLauncherAttach: a child started from Attach runs the launcher
// whatever the numbers of the daemon's fds. os.StartProcess moves its own
// pipe onto the fd above the highest of the child's files before the
// exec: a launcher inherited at that number (the daemon's /dev/null just
// below it) was overwritten, and the exec of /proc/self/fd/N failed with
// EACCES, a pipe's. Attach passes it as the child's own fd, after the
// files, where nothing moves it.
func TestLauncherAttach(t *testing.T) {
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	// /dev/null at a free high fd, the launcher at the one above it.
	below, err := unix.FcntlInt(null.Fd(), unix.F_DUPFD_CLOEXEC, 200)
	if err != nil {
		t.Fatal(err)
	}
	low := os.NewFile(uintptr(below), os.DevNull)
	defer low.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	opened, err := OpenLauncher(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer opened.Close()
	fd, err := unix.FcntlInt(uintptr(opened.fd), unix.F_DUPFD_CLOEXEC, below+1)
	if err != nil {
		t.Fatal(err)
	}
	if fd != below+1 {
		unix.Close(fd)
		t.Fatalf("fd %d is taken: the launcher is at %d, not just above /dev/null", below+1, fd)
	}
	l := *opened
	l.f, l.fd = os.NewFile(uintptr(fd), exe), fd
	defer l.f.Close()

	var out strings.Builder
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	path, attr := l.Attach(&os.ProcAttr{Files: []*os.File{low, w, low}})
	if want := "/proc/self/fd/3"; path != want || len(attr.Files) != 4 || attr.Files[3] != l.f {
		t.Errorf("Attach: %s with files %v, want %s, the launcher after the three", path, attr.Files, want)
	}
	p, err := os.StartProcess(path, []string{exe, "-test.run=^$"}, attr)
	w.Close()
	if err != nil {
		r.Close()
		t.Fatalf("start the launcher at fd %d with /dev/null at %d: %v", fd, below, err)
	}
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			break
		}
	}
	r.Close()
	st, err := p.Wait()
	if err != nil || !st.Success() || !strings.Contains(out.String(), "PASS") {
		t.Errorf("the launcher's run: %v %v, output %q", st, err, out.String())
	}
}
