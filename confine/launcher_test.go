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
