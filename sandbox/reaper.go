package sandbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// reaper waits for workers to exit with one OS thread for all of them: a
// goroutine blocked in epoll_wait on an epoll instance of its own, in which
// each worker's pidfd is registered (a pidfd becomes readable when its
// process exits).
//
// Why not the runtime's netpoller (os.NewFile on the pidfd and a
// SyscallConn read: Go's src/os/file_unix.go newFile puts a non-blocking fd
// in the poller, and src/internal/poll/fd_unix.go FD.RawRead parks the
// goroutine in waitRead)? It also needs no thread per worker, but the
// runtime polls the network only when a P runs out of work or sysmon finds
// it unpolled for 10 ms. Under load (every P busy with spawning goroutines)
// an exit was then noticed late: with 32 cells in flight on two CPUs, p90
// of the wait went to 26 ms and the cell's median latency to 3.7-3.9x a
// plain exec, against 1.4-1.5x for a blocking wait (measured on the host,
// BenchmarkCellLifecycle concurrent=32). A thread of our own in epoll_wait
// is woken by the kernel at once, like a blocking wait, and is still only
// one thread.
type reaper struct {
	epfd int
	wake int // eventfd: Close writes it to end the loop

	mu      sync.Mutex
	waiting map[int32]chan struct{} // by pidfd
	closed  bool
	done    chan struct{}
}

func newReaper() (*reaper, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(wake)
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll_ctl add eventfd: %w", err)
	}
	r := &reaper{epfd: epfd, wake: wake, waiting: map[int32]chan struct{}{}, done: make(chan struct{})}
	go r.loop()
	return r, nil
}

// loop wakes the waiter of every pidfd that became readable.
func (r *reaper) loop() {
	defer close(r.done)
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(r.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			// Cannot happen with a valid epoll fd; wake everyone so that
			// they fall back to a blocking wait.
			r.mu.Lock()
			for fd, ch := range r.waiting {
				close(ch)
				delete(r.waiting, fd)
			}
			r.mu.Unlock()
			return
		}
		r.mu.Lock()
		for _, ev := range events[:n] {
			if int(ev.Fd) == r.wake {
				r.mu.Unlock()
				return
			}
			if ch, ok := r.waiting[ev.Fd]; ok {
				close(ch)
				delete(r.waiting, ev.Fd)
			}
		}
		r.mu.Unlock()
	}
}

// close ends the loop. Waits in progress must have returned.
func (r *reaper) close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	r.mu.Unlock()
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(r.wake, one[:])
	<-r.done
	unix.Close(r.wake)
	unix.Close(r.epfd)
}

// wait waits for w to exit and reaps it through its pidfd. Without a pidfd
// (kernel < 5.4, or the runtime's probe failed) it falls back to
// proc.Wait, which holds a thread.
func (r *reaper) wait(w *worker) (exitStatus, error) {
	if w.pidfd < 0 {
		return waitBlocking(w.proc)
	}
	fd := w.pidfd
	// Already gone (a short worker, or a kill)? Then no registration.
	if st, ok, err := waitidNoHang(fd); err != nil || ok {
		return st, err
	}
	if err := r.readable(fd); err != nil {
		return exitStatus{}, fmt.Errorf("pidfd of pid %d: %w", w.pid, err)
	}
	st, ok, err := waitidNoHang(fd)
	if err == nil && !ok {
		err = fmt.Errorf("waitid pidfd of pid %d: readable but not exited", w.pid)
	}
	return st, err
}

// readable waits until fd is readable (a pidfd: its process exited; a
// socket: data or its peer's end) on the reaper's thread.
func (r *reaper) readable(fd int) error {
	ch := make(chan struct{})
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return errors.New("sandbox: Runner closed")
	}
	r.waiting[int32(fd)] = ch
	r.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(fd)}
	if err := unix.EpollCtl(r.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		r.mu.Lock()
		delete(r.waiting, int32(fd))
		r.mu.Unlock()
		return fmt.Errorf("epoll_ctl add fd %d: %w", fd, err)
	}
	<-ch
	// A cgi worker's pidfd is a dup sharing its open file description with
	// the os.Process's, so closing it alone would not take it out of the
	// epoll set.
	unix.EpollCtl(r.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	return nil
}

// waitidNoHang reaps the process of pidfd if it has exited.
func waitidNoHang(pidfd int) (exitStatus, bool, error) {
	var info sigchldInfo
	for {
		_, _, e := unix.Syscall6(unix.SYS_WAITID, unix.P_PIDFD, uintptr(pidfd),
			uintptr(unsafe.Pointer(&info)), unix.WEXITED|unix.WNOHANG, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return exitStatus{}, false, fmt.Errorf("waitid pidfd: %w", e)
		}
		break
	}
	if info.Pid == 0 {
		return exitStatus{}, false, nil
	}
	return fromSiginfo(info.Code, info.Status), true, nil
}
