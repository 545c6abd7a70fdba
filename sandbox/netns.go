package sandbox

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Network namespaces made ahead. Creating a network namespace adds a few
// milliseconds to a confined cell's start (the setup of
// BenchmarkCellConfined's "net" line), and with CLONE_NEWNET it happens
// inside the clone of the cell's init, which the Go runtime makes under syscall.ForkLock: every
// other spawn of the daemon waits for it. So the Runner keeps a few fresh
// namespaces, each made off the request's path on a thread of its own
// (unshare(CLONE_NEWNET), the namespace opened by fd, the
// thread switched back) and held only by that fd. A cell's init is then
// cloned from a thread switched into one (setns) without CLONE_NEWNET,
// and the fd is closed: the init holds the namespace's only reference, as
// if it had made it, and its exit ends it. A namespace serves exactly one
// cell. A thread that cannot be switched back to the daemon's namespace is
// never used again: its goroutine ends locked to it, and the runtime ends
// the thread.
//
// The refill starts with the first take (a daemon with no confined route
// makes none) and makes one namespace at a time: their creation
// serialises in the kernel anyway. A namespace made this way is charged
// to the daemon's memory, not to the cell's.

type netnsPool struct {
	hits, misses atomic.Uint64

	host int // the daemon's own network namespace
	size int
	log  *slog.Logger

	mu      sync.Mutex
	ready   []int
	started bool
	closed  bool
	wake    chan struct{}
	done    chan struct{}
}

func newNetnsPool(size int, log *slog.Logger) (*netnsPool, error) {
	host, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open the daemon's network namespace /proc/thread-self/ns/net: %w", err)
	}
	return &netnsPool{host: host, size: size, log: log, wake: make(chan struct{}, 1), done: make(chan struct{})}, nil
}

// take returns a fresh namespace's fd, which the caller closes, or -1
// when none is ready.
func (p *netnsPool) take() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return -1
	}
	if !p.started {
		p.started = true
		go p.refill()
	}
	wakeUp(p.wake)
	n := len(p.ready)
	if n == 0 {
		p.misses.Add(1)
		return -1
	}
	fd := p.ready[n-1]
	p.ready = p.ready[:n-1]
	p.hits.Add(1)
	return fd
}

// refill keeps size namespaces ready until close.
func (p *netnsPool) refill() {
	defer close(p.done)
	if err := p.canSwitch(); err != nil {
		p.log.Warn("network namespaces cannot be made ahead here (setns refused, e.g. by a container's seccomp profile such as deploy/seccomp/cellgate.json); each confined cell makes its own", "err", err)
		return
	}
	for {
		p.mu.Lock()
		closed, n := p.closed, len(p.ready)
		p.mu.Unlock()
		if closed {
			return
		}
		if n >= p.size {
			<-p.wake
			continue
		}
		fd, err := p.create()
		if err != nil {
			p.log.Warn("network namespace ahead of its cell; cells make their own", "err", err)
			time.Sleep(warmRetry)
			continue
		}
		p.mu.Lock()
		if p.closed {
			unix.Close(fd)
		} else {
			p.ready = append(p.ready, fd)
		}
		p.mu.Unlock()
	}
}

// canSwitch checks that a thread may switch network namespaces, by
// switching one to the daemon's own. Where setns is refused (a seccomp
// profile, a missing capability), a thread that entered a namespace made
// ahead could never come back, and ending it would end, through its
// parent-death signal, the init it had started.
func (p *netnsPool) canSwitch() error {
	if err := p.onThread(func() error { return unix.Setns(p.host, unix.CLONE_NEWNET) }, func() {}); err != nil {
		return fmt.Errorf("setns into the daemon's own network namespace: %w", err)
	}
	return nil
}

// create makes a namespace and returns its fd. Its loopback is brought up
// by the init cloned into it, as in a namespace the init makes itself
// (the plan still names the network namespace).
func (p *netnsPool) create() (int, error) {
	fd := -1
	var err error
	if eerr := p.onThread(func() error { return unix.Unshare(unix.CLONE_NEWNET) }, func() {
		if fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			err = fmt.Errorf("open /proc/thread-self/ns/net: %w", err)
		}
	}); eerr != nil {
		return -1, fmt.Errorf("unshare(CLONE_NEWNET): %w", eerr)
	}
	return fd, err
}

// start starts the init (startNoNewPrivs) inside the namespace ns.
func (p *netnsPool) start(ns int, path string, args []string, attr *os.ProcAttr) (*os.Process, error) {
	var proc *os.Process
	var err error
	if eerr := p.onThread(func() error { return unix.Setns(ns, unix.CLONE_NEWNET) }, func() {
		proc, err = startNoNewPrivs(path, args, attr)
	}); eerr != nil {
		return nil, fmt.Errorf("setns into a network namespace made ahead: %w", eerr)
	}
	return proc, err
}

// onThread runs f on a thread of its own after enter switched the
// thread's network namespace, then switches it back to the daemon's. An
// error of enter is returned (the thread is unchanged then); a thread
// that cannot be switched back is ended, with a log line.
func (p *netnsPool) onThread(enter func() error, f func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := enter(); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		f()
		if err := unix.Setns(p.host, unix.CLONE_NEWNET); err != nil {
			p.log.Error("a thread could not return to the daemon's network namespace; it ends", "err", err)
			errc <- nil
			return // still locked: the runtime ends the thread
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

// close ends the refill and closes every namespace made ahead.
func (p *netnsPool) close() {
	p.mu.Lock()
	p.closed = true
	started := p.started
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	if started {
		wakeUp(p.wake)
		<-p.done
	}
	for _, fd := range ready {
		unix.Close(fd)
	}
	unix.Close(p.host)
}

// NetnsStats counts the confined cells whose init found a network
// namespace made ahead (hits) and those that made their own (misses).
func (r *Runner) NetnsStats() (hits, misses uint64) {
	if r.netns == nil {
		return 0, 0
	}
	return r.netns.hits.Load(), r.netns.misses.Load()
}
