package confine

import (
	"fmt"
	"os"
	"strconv"
)

// Launcher is the executable a cell's init is started from: the cellgate
// binary, opened once at start-up so that every cell runs the same file
// even when the binary on disk is replaced by an upgrade.
type Launcher struct {
	f    *os.File
	path string
	name string
}

// OpenLauncher opens exe ("" = /proc/self/exe, the running binary). The fd
// is close-on-exec; the init is executed through /proc/self/fd/N, which
// resolves in the forked child before exec closes it.
func OpenLauncher(exe string) (*Launcher, error) {
	if exe == "" {
		exe = "/proc/self/exe"
	}
	f, err := os.Open(exe)
	if err != nil {
		return nil, fmt.Errorf("open the cell init's executable %s: %w", exe, err)
	}
	return &Launcher{f: f, path: "/proc/self/fd/" + strconv.Itoa(int(f.Fd())), name: exe}, nil
}

// Name is the executable as it was opened, for messages.
func (l *Launcher) Name() string { return l.name }

// Path is what to execute.
func (l *Launcher) Path() string { return l.path }

// Close releases the fd; no cell may be starting.
func (l *Launcher) Close() error { return l.f.Close() }
