package confine

import (
	"os"
	"testing"
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
