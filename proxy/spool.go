package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrSpoolFull: a spool was asked to hold more than its limit. The request
// body and response spools wrap it in ErrBodyTooLarge and
// ErrResponseTooLarge.
var ErrSpoolFull = errors.New("spool limit reached")

// spoolBudget bounds what all spools hold at once: bytes in memory and
// bytes in spool files, separately (Config.SpoolMemory, SpoolDisk). A
// spool that finds no room in memory moves to a file early; one that finds
// no room on disk fails with ErrSpoolBudget (503 with Retry-After: the
// request is refused, or the cell whose response it was is killed, rather
// than the disk filled or the cell kept alive for a slow client). A zero
// limit is no limit.
//
// It also bounds the spool file writes in progress at once (io). A write
// to a file is a blocking system call: its goroutine holds an OS thread
// for the call, and the runtime starts another thread for the goroutines
// left to run; Go never ends an idle thread (golang/go#14592), so every
// response spooled at the same moment left a thread behind for the life
// of the process (50 slow readers: 9 threads became 30 and stayed). A
// goroutine waiting for a slot is parked and holds no thread. A nil io
// does not bound the writes.
type spoolBudget struct {
	memLimit, diskLimit int64
	mem, disk           atomic.Int64
	io                  chan struct{}
	// ioPeak is the most writes seen in progress at once (tests).
	ioNow, ioPeak atomic.Int64
}

// spoolWriters is how many spool file writes and closes may be in
// progress at once: enough to keep a disk busy, few enough that the
// threads they hold stay few.
const spoolWriters = 4

// newSpoolBudget returns a budget of memLimit bytes in memory and
// diskLimit in files (0: no limit) with spoolWriters write slots.
func newSpoolBudget(memLimit, diskLimit int64) *spoolBudget {
	return &spoolBudget{memLimit: memLimit, diskLimit: diskLimit, io: make(chan struct{}, spoolWriters)}
}

// writeFile writes p to f in one of the budget's write slots.
func (b *spoolBudget) writeFile(f *os.File, p []byte) (int, error) {
	if b.io != nil {
		b.io <- struct{}{}
		defer func() { <-b.io }()
	}
	now := b.ioNow.Add(1)
	for peak := b.ioPeak.Load(); now > peak && !b.ioPeak.CompareAndSwap(peak, now); peak = b.ioPeak.Load() {
	}
	defer b.ioNow.Add(-1)
	return f.Write(p)
}

// closeFile closes f in one of the budget's write slots: the last close
// of an unlinked file frees its pages before the system call returns,
// which for a large spool is as long as a write, and 50 spools closed at
// once (slow readers all cut off or gone together) held a thread each.
func (b *spoolBudget) closeFile(f *os.File) error {
	if b.io != nil {
		b.io <- struct{}{}
		defer func() { <-b.io }()
	}
	return f.Close()
}

// take reserves n bytes in used under limit, or reports that they do not
// fit.
func take(used *atomic.Int64, limit, n int64) bool {
	if v := used.Add(n); limit > 0 && v > limit {
		used.Add(-n)
		return false
	}
	return true
}

// SpoolStats are the bytes that spools hold now, for metrics.
type SpoolStats struct{ Memory, Disk int64 }

// SpoolStats returns the bytes held by the spools of requests and
// responses now.
func (s *Server) SpoolStats() SpoolStats {
	return SpoolStats{Memory: s.spools.mem.Load(), Disk: s.spools.disk.Load()}
}

// spool holds a body of bounded size: in memory up to a threshold, then in
// an unlinked temporary file (O_TMPFILE, or create and unlink where the file
// system lacks it), so that nothing is left on disk whatever happens to the
// process. The proxy writes the file itself, so its pages are charged to
// cellgate's own cgroup, never to a cell.
//
// Write, then read with Reader or File; Close releases the memory and the
// file. A spool is used by one goroutine at a time.
type spool struct {
	dir       string
	threshold int
	limit     int64
	budget    *spoolBudget

	mem  *[]byte // pooled; nil once the spool moved to a file
	file *os.File
	size int64
	// Bytes reserved in the budget: memHeld for mem, diskHeld for file.
	memHeld, diskHeld int64
}

// memPool recycles the in-memory part of spools. Buffers grow with append up
// to the threshold and go back to the pool when they are not much larger.
var memPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

func newSpool(dir string, threshold int, limit int64, budget *spoolBudget) *spool {
	return &spool{dir: dir, threshold: threshold, limit: limit, budget: budget, mem: memPool.Get().(*[]byte)}
}

// Write appends p. Beyond the limit it stores what fits and returns
// ErrSpoolFull; beyond the budget's disk room it stores nothing of p and
// returns ErrSpoolBudget.
func (s *spool) Write(p []byte) (int, error) {
	full := false
	if room := s.limit - s.size; int64(len(p)) > room {
		p, full = p[:room], true
	}
	if s.file == nil && (len(*s.mem)+len(p) > s.threshold || !take(&s.budget.mem, s.budget.memLimit, int64(len(p)))) {
		if err := s.toFile(); err != nil {
			return 0, err
		}
	} else if s.file == nil {
		s.memHeld += int64(len(p))
	}
	var n int
	if s.file != nil {
		if !take(&s.budget.disk, s.budget.diskLimit, int64(len(p))) {
			return 0, fmt.Errorf("spool %d more bytes in %s: %w (%d in use, limit %d)",
				len(p), s.dir, ErrSpoolBudget, s.budget.disk.Load(), s.budget.diskLimit)
		}
		var err error
		n, err = s.budget.writeFile(s.file, p)
		s.size += int64(n)
		s.diskHeld += int64(len(p))
		if err != nil {
			return n, fmt.Errorf("write spool file: %w", err)
		}
	} else {
		*s.mem = append(*s.mem, p...)
		n = len(p)
		s.size += int64(n)
	}
	if full {
		return n, fmt.Errorf("hold more than %d bytes: %w", s.limit, ErrSpoolFull)
	}
	return n, nil
}

// ReadFrom copies r to the spool through a pooled buffer (io.Copy would
// allocate one per call).
func (s *spool) ReadFrom(r io.Reader) (int64, error) {
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	buf := *bufp
	var total int64
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			w, werr := s.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// toFile moves the spool to a new unlinked temporary file.
func (s *spool) toFile() error {
	n := int64(len(*s.mem))
	if !take(&s.budget.disk, s.budget.diskLimit, n) {
		return fmt.Errorf("move a spool of %d bytes to %s: %w (%d in use, limit %d)",
			n, s.dir, ErrSpoolBudget, s.budget.disk.Load(), s.budget.diskLimit)
	}
	s.diskHeld += n
	f, err := openTempFile(s.dir)
	if err != nil {
		return err
	}
	if _, err := s.budget.writeFile(f, *s.mem); err != nil {
		f.Close()
		return fmt.Errorf("write spool file in %s: %w", s.dir, err)
	}
	s.file = f
	s.putMem()
	return nil
}

// Len is the number of bytes written.
func (s *spool) Len() int64 { return s.size }

// File returns the spool's file positioned at its start, or nil when the
// spool is in memory.
func (s *spool) File() (*os.File, error) {
	if s.file == nil {
		return nil, nil
	}
	if _, err := s.file.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewind spool file: %w", err)
	}
	return s.file, nil
}

// Bytes returns the in-memory content, or nil when the spool is a file.
// The slice is valid until Close.
func (s *spool) Bytes() []byte {
	if s.mem == nil {
		return nil
	}
	return *s.mem
}

// StdinReader returns the content for a worker's stdin: nil when the
// spool is empty, a bytes.Reader over the memory, or a new read-only
// *os.File on the spool file positioned at its start, which exec hands to
// the worker as its fd 0 without a copy. The caller closes that file (the
// returned close func) once the worker is done.
//
// The worker gets a descriptor of its own, opened O_RDONLY through
// /proc/self/fd, not the proxy's read-write one: with that it could
// truncate the spool or grow it without bound on cellgate's disk. Without
// /proc the spool is not handed over as a file; the bytes go through a pipe.
func (s *spool) StdinReader() (io.Reader, func() error, error) {
	noop := func() error { return nil }
	switch {
	case s.size == 0:
		return nil, noop, nil
	case s.file == nil:
		return bytes.NewReader(*s.mem), noop, nil
	}
	ro, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(s.file.Fd())), os.O_RDONLY, 0)
	if err != nil {
		f, err := s.File()
		if err != nil {
			return nil, noop, err
		}
		return io.NewSectionReader(f, 0, s.size), noop, nil
	}
	return ro, ro.Close, nil
}

// Close releases the memory and closes the file (which, being unlinked,
// disappears).
func (s *spool) Close() error {
	s.putMem()
	s.budget.disk.Add(-s.diskHeld)
	s.diskHeld = 0
	if s.file == nil {
		return nil
	}
	err := s.budget.closeFile(s.file)
	s.file = nil
	return err
}

// putMem gives the memory back to the pool and the budget.
func (s *spool) putMem() {
	s.budget.mem.Add(-s.memHeld)
	s.memHeld = 0
	if s.mem == nil {
		return
	}
	if cap(*s.mem) <= 2*s.threshold+16<<10 {
		*s.mem = (*s.mem)[:0]
		memPool.Put(s.mem)
	}
	s.mem = nil
}

// openTempFile opens a new read-write file in dir that has no name:
// O_TMPFILE (Linux 3.11, and a file system that supports it), else a named
// file removed at once.
func openTempFile(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), dir+"/(unlinked spool)"), nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, fmt.Errorf("open temporary file in %s: %w (set the proxy's TempDir to a writable directory)", dir, err)
	}
	f, err := os.CreateTemp(dir, ".cellgate-spool-*")
	if err != nil {
		return nil, fmt.Errorf("create temporary file in %s: %w (set the proxy's TempDir to a writable directory)", dir, err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("unlink temporary file %s: %w", f.Name(), err)
	}
	return f, nil
}
