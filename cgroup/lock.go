package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// One owner per base. Open takes an exclusive flock(2) on the base
// group's directory before it moves, sweeps or creates anything, and holds
// it on a close-on-exec descriptor until the process exits: the kernel
// drops the lock with the last descriptor, so a crashed daemon never
// leaves it behind and needs no stale-lock cleanup. A second daemon on the
// same base is refused (BaseInUseError names the holder's pid) rather
// than given a subtree of its own: the sweep that makes a crashed run's
// leftovers safe to remove is only sound when nobody else can be using
// them. cgroupfs (kernfs) has no lock operations of its own, so the VFS's
// generic flock applies to its directories as to any other.

// BaseInUseError: another live process holds the base's lock.
type BaseInUseError struct {
	Base string
	PID  int // the holder from /proc/locks; 0 when it could not be found
}

func (e *BaseInUseError) Error() string {
	who := "another process (its pid is not in /proc/locks)"
	if e.PID > 0 {
		who = fmt.Sprintf("another cellgate, pid %d", e.PID)
	}
	return fmt.Sprintf("cgroup base %s is in use by %s: one base has one owner, whose cells a second would sweep; "+
		"stop that one first, or give this one a base of its own (--cgroup-base)", e.Base, who)
}

// Is makes errors.Is(err, ErrBaseInUse) true.
func (e *BaseInUseError) Is(target error) bool { return target == ErrBaseInUse }

// lockBase opens dir and takes an exclusive flock on it without waiting.
// The returned descriptor holds the lock; closing it releases it.
func lockBase(dir, proc string) (int, error) {
	fd, err := openDir(dir)
	if err != nil {
		return -1, err
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	switch {
	case err == nil:
		return fd, nil
	case errors.Is(err, unix.EWOULDBLOCK):
		pid, _ := lockHolder(fd, proc)
		unix.Close(fd)
		return -1, &BaseInUseError{Base: dir, PID: pid}
	default:
		unix.Close(fd)
		return -1, fmt.Errorf("lock %s (flock): %w", dir, err)
	}
}

// lockHolder finds the pid holding a FLOCK on the file of fd in
// <proc>/locks, whose lines read
//
//	1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF
//
// (pid, then major:minor in hex and the inode in decimal). Waiters are
// marked "->" and skipped.
func lockHolder(fd int, proc string) (int, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	id := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	if proc == "" {
		proc = "/proc"
	}
	f, err := os.Open(filepath.Join(proc, "locks"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[1] != "FLOCK" {
			continue
		}
		if fs[5] == id {
			return strconv.Atoi(fs[4])
		}
	}
	return 0, fmt.Errorf("no flock on %s in %s/locks", id, proc)
}
