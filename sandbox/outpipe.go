package sandbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A worker's output pipe ends when its writers do, not when the last copy
// of its write end is closed. The two differ: while the daemon holds a
// write end (from the pipe's creation until the worker or its init has
// it), every process the daemon clones in that time gets a copy of it,
// close-on-exec, and holds it until that clone execs. A confined cell's
// init is cloned with new namespaces, which under load takes the kernel
// seconds (the clones wait for each other's mount namespaces), so a
// finished request's pipe stayed open in another request's clone and the
// reader, waiting for EOF, timed out: a 500 for a request that had
// answered. Such copies never write. So once every process that may write
// is gone (Run has returned: the cell is empty, or its init reported that
// the program and all it left are dead), the reader takes what the pipe
// holds and then ends, whoever else still has a copy. A copy that does
// write, one a fork route's preloader kept (its app's code can), gets no
// further than what the pipe held then: the reader reads no more than
// that, however fast the copy refills it.

// OutputReader is the read end of a worker's output pipe.
type OutputReader struct {
	f     *os.File
	rc    syscall.RawConn
	fd    int         // f's, for WritersGone's count (open until Close, which comes after)
	ended atomic.Bool // read without mu by Read's wake-up
	// mu orders each read from the pipe with WritersGone's count of what
	// it holds, so that no byte is counted in left and read before.
	mu sync.Mutex
	// left is what the reader may still read once ended: what the pipe
	// held at WritersGone, less what was read since; -1 where the kernel
	// did not say (every byte until the pipe is found empty). Under mu.
	left int64
}

// OutputPipe returns a pipe for a worker's stdout or stderr: the write end
// to put in Spec.Stdout or Spec.Stderr (close it once Run returned) and
// the read end. Call WritersGone on the read end once Run has returned.
func OutputPipe() (*OutputReader, *os.File, error) {
	pw, pr, fd, err := workerPipe(false)
	if err != nil {
		return nil, nil, err
	}
	rc, err := pr.SyscallConn()
	if err != nil {
		pr.Close()
		pw.Close()
		return nil, nil, fmt.Errorf("output pipe: %w", err)
	}
	return &OutputReader{f: pr, rc: rc, fd: fd}, pw, nil
}

// Read reads like a pipe's read end, except that once WritersGone was
// called a read that finds the pipe empty returns io.EOF.
func (r *OutputReader) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		var n int
		var rerr error
		err := r.rc.Read(func(fd uintptr) bool {
			// Whether the writers were gone before the read: a pipe found
			// empty after that is empty for good. Checked after the read,
			// a writer could have written, and WritersGone been called,
			// between the two, and its output would be lost.
			r.mu.Lock()
			defer r.mu.Unlock()
			ended := r.ended.Load()
			buf := b
			if ended {
				if r.left == 0 {
					n, rerr = 0, io.EOF
					return true
				}
				if r.left > 0 && int64(len(buf)) > r.left {
					buf = buf[:r.left]
				}
			}
			for {
				n, rerr = unix.Read(int(fd), buf)
				if !errors.Is(rerr, unix.EINTR) {
					break
				}
			}
			if errors.Is(rerr, unix.EAGAIN) {
				if ended {
					n, rerr = 0, io.EOF
					return true
				}
				return false // wait for data, or for WritersGone
			}
			if ended && n > 0 && r.left > 0 {
				r.left -= int64(n)
			}
			return true
		})
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded) && r.ended.Load():
			// WritersGone's wake-up: read what is left.
			r.f.SetReadDeadline(time.Time{})
			continue
		case err != nil:
			return 0, err
		case rerr != nil:
			if n < 0 {
				n = 0
			}
			if rerr != io.EOF {
				rerr = &os.PathError{Op: "read", Path: r.f.Name(), Err: rerr}
			}
			return n, rerr
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// WritersGone says that no process that may write to the pipe is left:
// the reader returns what the pipe holds, then io.EOF (no more than it
// holds now, whatever is written after). A Read waiting for data is
// woken. Called once, from one goroutine.
func (r *OutputReader) WritersGone() {
	r.mu.Lock()
	r.left = -1
	// FIONREAD (TIOCINQ) of a pipe: the bytes it holds.
	if n, err := unix.IoctlGetInt(r.fd, unix.TIOCINQ); err == nil {
		r.left = int64(n)
	}
	r.ended.Store(true)
	r.mu.Unlock()
	r.f.SetReadDeadline(time.Now())
}

// Close closes the read end.
func (r *OutputReader) Close() error { return r.f.Close() }

// workerPipe returns a pipe between a worker and the daemon (and the
// daemon's end's fd number, which File.Fd would make blocking): the worker's
// end (the read end when workerReads) blocking, as a program that is not Go
// expects of its standard streams (a C or shell program does not retry a
// read or write that fails with EAGAIN), and the daemon's end
// non-blocking, on the runtime's poller. os.Pipe makes both ends
// non-blocking, and a pipe end passed to the init with SCM_RIGHTS keeps
// that flag (os/exec clears it only through File.Fd).
func workerPipe(workerReads bool) (worker, daemon *os.File, daemonFD int, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, -1, fmt.Errorf("pipe2: %w", err)
	}
	w, d := p[1], p[0]
	if workerReads {
		w, d = p[0], p[1]
	}
	if err := unix.SetNonblock(d, true); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, nil, -1, fmt.Errorf("pipe: set O_NONBLOCK: %w", err)
	}
	// NewFile puts a non-blocking descriptor on the poller.
	return os.NewFile(uintptr(w), "|worker"), os.NewFile(uintptr(d), "|daemon"), d, nil
}
