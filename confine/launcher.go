package confine

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Launcher is the executable a cell's init is started from: the cellgate
// binary, opened once at start-up so that every cell runs the same file
// even when the binary on disk is replaced by an upgrade.
type Launcher struct {
	f        *os.File
	fd       int
	dev, ino uint64 // the file opened, for Check
	path     string
	name     string
	self     bool // the running executable: the Go init
}

// OpenLauncher opens exe ("" = /proc/self/exe, the running binary). The fd
// is close-on-exec; the init is executed through /proc/self/fd/N, which
// resolves in the forked child before exec closes it.
func OpenLauncher(exe string) (*Launcher, error) {
	if exe == "" {
		exe = "/proc/self/exe"
	}
	fd, err := unix.Open(exe, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open the cell init's executable %s: %w", exe, err)
	}
	// The init's fds 0-3 are set up in the forked child before the exec
	// resolves /proc/self/fd/N: N must not be one of them.
	high, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, minLauncherFD)
	unix.Close(fd)
	if err != nil {
		return nil, fmt.Errorf("dup the cell init's executable %s: %w", exe, err)
	}
	var opened, running unix.Stat_t
	if err := unix.Fstat(high, &opened); err != nil {
		unix.Close(high)
		return nil, fmt.Errorf("stat the cell init's executable %s: %w", exe, err)
	}
	self := unix.Stat("/proc/self/exe", &running) == nil && opened.Dev == running.Dev && opened.Ino == running.Ino
	return &Launcher{
		f: os.NewFile(uintptr(high), exe), fd: high, dev: opened.Dev, ino: opened.Ino,
		path: "/proc/self/fd/" + strconv.Itoa(high), name: exe, self: self,
	}, nil
}

// Check reports whether the launcher's fd still refers to the file it
// opened. Were an fd of the daemon's closed twice (a defect), the second
// close could end the launcher's and its number go to the next file
// opened: starting an init would then fail with EACCES or ENOEXEC and
// nothing would say why. A failed start adds Check's error to its own.
func (l *Launcher) Check() error {
	var st unix.Stat_t
	if unix.Fstat(l.fd, &st) == nil && st.Dev == l.dev && st.Ino == l.ino {
		return nil
	}
	now, err := os.Readlink(l.path)
	if err != nil {
		now = "closed"
	}
	return fmt.Errorf("the cell init's executable %s, opened as fd %d, is not that fd's file any more (now %s): an fd of cellgate's was closed twice, a defect to report", l.name, l.fd, now)
}

// GoInit reports whether the launcher is the running executable, whose
// init is the Go one (confine.Init): it has none of cellgate-init's
// template, spawner and resident modes.
func (l *Launcher) GoInit() bool { return l.self }

// Name is the executable as it was opened, for messages.
func (l *Launcher) Name() string { return l.name }

// minLauncherFD is the lowest fd the launcher is kept at: above the fds
// a cell's init is given (0-2 and ControlFD).
const minLauncherFD = 10

// Path is what to execute.
func (l *Launcher) Path() string { return l.path }

// Close releases the fd; no cell may be starting.
func (l *Launcher) Close() error { return l.f.Close() }
