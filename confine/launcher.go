package confine

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Launcher is the executable a cell's init is started from: the cellgate
// binary or cellgate-init, opened once at start-up so that every cell runs
// the same file even when the binary on disk is replaced by an upgrade.
type Launcher struct {
	f        *os.File
	fd       int
	dev, ino uint64 // the file opened, for Check
	name     string
	self     bool // the running executable: the Go init
}

// OpenLauncher opens exe ("" = /proc/self/exe, the running binary),
// close-on-exec: a child gets it only through Attach.
func OpenLauncher(exe string) (*Launcher, error) {
	if exe == "" {
		exe = "/proc/self/exe"
	}
	fd, err := unix.Open(exe, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open the cell init's executable %s: %w", exe, err)
	}
	var opened, running unix.Stat_t
	if err := unix.Fstat(fd, &opened); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat the cell init's executable %s: %w", exe, err)
	}
	self := unix.Stat("/proc/self/exe", &running) == nil && opened.Dev == running.Dev && opened.Ino == running.Ino
	return &Launcher{
		f: os.NewFile(uintptr(fd), exe), fd: fd, dev: opened.Dev, ino: opened.Ino,
		name: exe, self: self,
	}, nil
}

// Attach returns what to execute to start the launcher with attr, and a
// copy of attr that passes the launcher to the child as its fd
// len(attr.Files): the path is /proc/self/fd/ of that number, resolved in
// the child by its execve. The child's own fd, not one it inherits at the
// daemon's number: before the exec, os.StartProcess moves its pipe (and
// any of attr.Files below its index) onto the fds just above the highest
// of attr.Files, and an inherited launcher at one of those numbers would
// be overwritten (the execve then opens a pipe, EACCES). An init closes
// the fd first thing (cellgate-init's main, InitMain): the exec made it
// inheritable, and nothing of it may reach the program.
func (l *Launcher) Attach(attr *os.ProcAttr) (string, *os.ProcAttr) {
	a := *attr
	a.Files = append(attr.Files[:len(attr.Files):len(attr.Files)], l.f)
	return "/proc/self/fd/" + strconv.Itoa(len(attr.Files)), &a
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
	now, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(l.fd))
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

// Close releases the fd; no cell may be starting.
func (l *Launcher) Close() error { return l.f.Close() }
