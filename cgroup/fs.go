package cgroup

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// dirOps are the two directory operations whose effect differs between
// cgroupfs (where mkdir makes the control files and rmdir removes them) and
// a plain directory faking it in tests. Everything else is ordinary file I/O
// relative to a directory fd and works on both.
type dirOps interface {
	mkdir(path string) error
	rmdir(path string) error
}

// kernelOps is cgroupfs itself.
type kernelOps struct{}

func (kernelOps) mkdir(path string) error { return unix.Mkdir(path, 0o755) }
func (kernelOps) rmdir(path string) error { return unix.Rmdir(path) }

// boundedOps lets at most cap(slots) mkdir and rmdir calls into cgroupfs
// at once. The kernel serialises them anyway (the parent directory's
// lock, then cgroup_mutex), so more callers buy no throughput; but each
// caller waiting in the kernel holds an OS thread, and the Go runtime
// starts another to run the rest and never ends it (go.dev/issue/14592).
// Callers beyond the bound wait as parked goroutines, which hold none.
type boundedOps struct {
	dirOps
	slots chan struct{}
}

// newBoundedOps bounds ops to GOMAXPROCS callers at once, at least 2.
func newBoundedOps(ops dirOps) boundedOps {
	return boundedOps{dirOps: ops, slots: make(chan struct{}, max(2, runtime.GOMAXPROCS(0)))}
}

func (b boundedOps) mkdir(path string) error {
	b.slots <- struct{}{}
	defer func() { <-b.slots }()
	return b.dirOps.mkdir(path)
}

func (b boundedOps) rmdir(path string) error {
	b.slots <- struct{}{}
	defer func() { <-b.slots }()
	return b.dirOps.rmdir(path)
}

// openDir opens a group's directory for openat and for
// SysProcAttr.CgroupFD. O_PATH would do for both (checked on 6.18: openat
// reads and writes through it, and clone3 takes it with fget_raw), but a
// read-only directory descriptor is what clone(2) describes for
// CLONE_INTO_CGROUP, and costs the same.
func openDir(path string) (int, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("open %s: %w", path, err)
		}
		return fd, nil
	}
}

// writeAt writes value to the control file name in the group dirfd.
// O_TRUNC is what a shell's "echo v > file" does; cgroupfs accepts it.
func writeAt(dirfd int, name, value string) error {
	fd, err := openat(dirfd, name, unix.O_WRONLY|unix.O_TRUNC|unix.O_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return writeFD(fd, value)
}

// readAt reads the control file name in the group dirfd whole.
func readAt(dirfd int, name string) ([]byte, error) {
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return readFD(fd)
}

// readFD reads fd from offset 0 to EOF with pread, so an fd kept open
// (cgroup.events) can be read again.
func readFD(fd int) ([]byte, error) {
	buf := make([]byte, 0, 512)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, cap(buf))...)[:len(buf)]
		}
		n, err := unix.Pread(fd, buf[len(buf):cap(buf)], int64(len(buf)))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

func openat(dirfd int, name string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return fd, err
	}
}

// readFile reads a file by path (off the hot path).
func readFile(path string) ([]byte, error) { return os.ReadFile(path) }

// writeFile writes value to the control file at path (off the hot path),
// without creating it.
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// preadWhole reads a control file held open since its cell was created,
// from offset 0, so the same fd can be read again. A cgroupfs control file
// is one seq_file record that the kernel renders whole on each read from
// offset 0 and copies out as far as the buffer goes; a read shorter than
// the buffer has therefore returned all of it, and the read that would
// only confirm EOF (readFD's last) is skipped: it is a syscall, and under
// emulation each one into cgroupfs is expensive. A full buffer is grown
// and read on.
func preadWhole(fd int) ([]byte, error) { return preadInto(fd, make([]byte, 512)) }

// preadInto is preadWhole into buf, which grows only when the file does
// not fit.
func preadInto(fd int, buf []byte) ([]byte, error) {
	off := 0
	for {
		n, err := unix.Pread(fd, buf[off:], int64(off))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		off += n
		if n == 0 || off < len(buf) {
			return buf[:off], nil
		}
		buf = append(buf, make([]byte, len(buf))...)
	}
}

// writeFD writes value to an open control file (cgroup.kill is held open).
// Each write to a cgroupfs file is handled on its own; the offset plays no
// part. cgroupfs takes a write whole: a short write means the value was not
// applied.
func writeFD(fd int, value string) error {
	b := []byte(value)
	for {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n < len(b) {
			return unix.EIO
		}
		return nil
	}
}
