package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
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
// cloned from a thread switched into one (setns) without CLONE_NEWNET.
// A thread that cannot be switched back to the daemon's namespace is
// never used again: its goroutine ends locked to it, and the runtime ends
// the thread.
//
// Reuse within a tenant. Made ahead, a namespace still costs its creation
// and its destruction (the kernel's cleanup_net) in CPU: together about a
// tenth of a confined request's CPU under load (a system-wide profile of
// serve in the microVM). So the daemon keeps the fd while the cell runs,
// and once the cell is empty (no process of it is left in the namespace)
// the namespace goes back to the pool for a later cell of the same tenant,
// when nothing of the cell is left in it either: no TCP, UDP, raw or Unix
// socket (read from /proc/thread-self/net on a thread switched into it),
// so a TIME_WAIT connection, or a socket that a process outside the cell
// holds, sends it to its end instead. A program cannot change anything
// else of it: it runs under an unprivileged uid with no capabilities and
// no_new_privs, so the interfaces, addresses, routes, filters and sysctls
// are as the pool made them. What a later cell can still learn of an
// earlier one is the namespace's counters (/proc/net/snmp, loopback's
// packet counts), and only within one tenant. A cell whose program ran as
// root (allow_root) never gives its namespace back. At most size
// namespaces per tenant wait for reuse, maxUsedFactor*size in all; beyond
// that they end.
//
// The refill starts with the first take (a daemon with no confined route
// makes none) and makes one namespace at a time: their creation
// serialises in the kernel anyway. A namespace made this way is charged
// to the daemon's memory, not to the cell's.

// maxUsedFactor bounds the namespaces waiting for reuse, all tenants
// together, at this many times the pool's size.
const maxUsedFactor = 8

type netnsPool struct {
	hits, misses, reused atomic.Uint64

	host  int // the daemon's own network namespace
	size  int
	log   *slog.Logger
	empty func(fd int) bool // whether a namespace holds no socket: hasNoSocket

	mu      sync.Mutex
	ready   []int            // fresh namespaces
	used    map[string][]int // by tenant: namespaces back from a cell, for reuse
	nused   int              // the entries of used
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
	p := &netnsPool{host: host, size: size, log: log, used: map[string][]int{}, wake: make(chan struct{}, 1), done: make(chan struct{})}
	p.empty = p.hasNoSocket
	return p, nil
}

// take returns the fd of a namespace for a cell of tenant, which the
// caller ends with give, or -1 when none is ready: one a cell of the
// tenant gave back if there is one, else a fresh one.
func (p *netnsPool) take(tenant string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return -1
	}
	if us := p.used[tenant]; len(us) > 0 {
		fd := us[len(us)-1]
		p.used[tenant] = us[:len(us)-1]
		if len(us) == 1 {
			delete(p.used, tenant)
		}
		p.nused--
		p.hits.Add(1)
		p.reused.Add(1)
		return fd
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

// give ends a cell's use of the namespace fd of tenant's, once no process
// of the cell is left. reusable: the cell emptied and its program did
// not run as root. The namespace then waits for a later cell of the
// tenant if nothing of the cell is left in it and there is room;
// otherwise the fd is closed, and the namespace ends with it.
func (p *netnsPool) give(tenant string, fd int, reusable bool) {
	if reusable {
		reusable = p.room(tenant) && p.empty(fd)
	}
	if reusable {
		p.mu.Lock()
		if p.fits(tenant) {
			p.used[tenant] = append(p.used[tenant], fd)
			p.nused++
			fd = -1
		}
		p.mu.Unlock()
	}
	if fd >= 0 {
		unix.Close(fd)
	}
}

// room reports whether a namespace of tenant's given back would be kept.
func (p *netnsPool) room(tenant string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fits(tenant)
}

// fits is room with p.mu held.
func (p *netnsPool) fits(tenant string) bool {
	return !p.closed && len(p.used[tenant]) < p.size && p.nused < maxUsedFactor*p.size
}

// socketTables are the namespace's socket tables that can list what
// sockstat does not count: connections in TIME_WAIT, which are not
// sockets of anyone's; each lists one entry a line after its header.
// Every other socket of the namespace, of any family (UDP, raw, Unix,
// orphaned TCP), is counted by sockstat until it is freed.
var socketTables = []string{"tcp", "tcp6"}

// hasNoSocket reports whether the namespace fd holds no socket at all,
// read on a thread switched into it: sockstat's count of the namespace's
// sockets (every socket a process made in it, bound or not, whoever holds
// it now; the kernel's own are not counted) is 0, and no TCP table lists
// a connection in TIME_WAIT. Any doubt (a file that cannot be read) is a
// no.
func (p *netnsPool) hasNoSocket(fd int) bool {
	clean := false
	if err := p.onThread(func() error { return unix.Setns(fd, unix.CLONE_NEWNET) }, func() {
		var buf [4096]byte
		if n, ok := socketsUsed(&buf, "/proc/thread-self/net/sockstat"); !ok || n != 0 {
			return
		}
		for _, t := range socketTables {
			if !oneLine(&buf, "/proc/thread-self/net/"+t) {
				return
			}
		}
		clean = true
	}); err != nil {
		return false
	}
	return clean
}

// socketsUsed reads the count of a sockstat file's first line, "sockets:
// used N".
func socketsUsed(buf *[4096]byte, path string) (int, bool) {
	f, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer unix.Close(f)
	n, err := unix.Read(f, buf[:])
	for errors.Is(err, unix.EINTR) {
		n, err = unix.Read(f, buf[:])
	}
	if err != nil {
		return 0, false
	}
	line, _, _ := bytes.Cut(buf[:n], []byte{'\n'})
	v, ok := bytes.CutPrefix(line, []byte("sockets: used "))
	if !ok {
		return 0, false
	}
	used, err := strconv.Atoi(string(v))
	return used, err == nil
}

// oneLine reports whether the file at path is one line (a table's header)
// and no more. An absent table (a protocol the kernel lacks, IPv6 when
// disabled) holds no socket.
func oneLine(buf *[4096]byte, path string) bool {
	f, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return true
	}
	if err != nil {
		return false
	}
	defer unix.Close(f)
	lines := 0
	for {
		n, err := unix.Read(f, buf[:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false
		}
		if n == 0 {
			return lines == 1
		}
		lines += bytes.Count(buf[:n], []byte{'\n'})
		if lines > 1 {
			return false
		}
	}
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
	for _, us := range p.used {
		ready = append(ready, us...)
	}
	p.used, p.nused = nil, 0
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

// NetnsReused counts the hits of NetnsStats whose namespace an earlier
// cell of the same tenant had used.
func (r *Runner) NetnsReused() uint64 {
	if r.netns == nil {
		return 0
	}
	return r.netns.reused.Load()
}
