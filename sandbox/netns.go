package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
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
// when nothing of the cell is left in it either: no socket of any family
// and no connection, not even one in TIME_WAIT (the namespace's sockstat
// counts, read on a thread switched into it), so a TIME_WAIT connection,
// or a socket that a process outside the cell holds, sends it to its end
// instead. A program cannot change anything
// else of it: it runs under an unprivileged uid with no capabilities and
// no_new_privs, so the interfaces, addresses, routes, filters and sysctls
// are as the pool made them. What a later cell can still learn of an
// earlier one is the namespace's counters (/proc/net/snmp, loopback's
// packet counts), and only within one tenant. A cell whose program ran as
// the host's root (allow_root with host_namespaces: [user]) never gives
// its namespace back; root of a user namespace of its own (RootMap) has
// no capability over a namespace its user namespace does not own. At most
// maxUsedFactor*size namespaces wait for reuse, all tenants together, and
// one tenant may hold them all: a tenant with more cells at once than
// size would otherwise end, and make again, a namespace for most of its
// cells (a third of them at 16 concurrent requests with size 8). Each
// tenant is still sure of size: when the pool is full, a namespace given
// back by a tenant holding fewer takes the place of the oldest of the
// tenant holding the most, if that one holds more than size.
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

	metricsOnce sync.Once // the log line of a tcp_no_metrics_save that cannot be written

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
	if log == nil {
		log = slog.New(slog.DiscardHandler)
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
// not run as the host's root. The namespace then waits for a later cell
// of the tenant if nothing of the cell is left in it and there is room;
// otherwise the fd is closed, and the namespace ends with it.
func (p *netnsPool) give(tenant string, fd int, reusable bool) {
	if reusable {
		reusable = p.room(tenant) && p.empty(fd)
	}
	evicted := -1
	if reusable {
		p.mu.Lock()
		if victim, ok := p.place(tenant); ok {
			if victim != "" {
				us := p.used[victim]
				evicted, p.used[victim] = us[0], us[1:]
				p.nused--
			}
			p.used[tenant] = append(p.used[tenant], fd)
			p.nused++
			fd = -1
		}
		p.mu.Unlock()
	}
	for _, f := range []int{fd, evicted} {
		if f >= 0 {
			unix.Close(f)
		}
	}
}

// room reports whether a namespace of tenant's given back would be kept.
func (p *netnsPool) room(tenant string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.place(tenant)
	return ok
}

// place decides, with p.mu held, whether a namespace tenant gives back is
// kept, and whose oldest namespace it then replaces ("": none): room in
// the pool, or, the pool full, tenant holding fewer than size and
// another holding more (the one holding the most).
func (p *netnsPool) place(tenant string) (victim string, ok bool) {
	if p.closed {
		return "", false
	}
	if p.nused < maxUsedFactor*p.size {
		return "", true
	}
	if len(p.used[tenant]) >= p.size {
		return "", false
	}
	most := 0
	for t, us := range p.used {
		if len(us) > most {
			victim, most = t, len(us)
		}
	}
	return victim, most > p.size
}

// hasNoSocket reports whether the namespace fd holds no socket at all,
// read from its sockstat files on a thread switched into it: sockstat's
// count of the namespace's sockets is 0 (every socket a process made in
// it, of any family, bound or not, whoever holds it now; the kernel's own
// are not counted), and so are its TCP connections (an orphaned one, closed
// by its process and still closing, is no one's socket but still in use),
// its connections in TIME_WAIT ("tw", the namespace's own count, IPv4
// and IPv6 together), what UDP, UDP-Lite and raw sockets have hashed,
// and the same of IPv6 in sockstat6. Two small files:
// the socket tables (/proc/net/tcp) would list the same connections, but
// reading one walks the kernel's whole connection hash, which a profile of
// serve found costing more than the rest of the check. Any doubt (a file
// that cannot be read or parsed) is a no; an absent sockstat6 (IPv6
// disabled) counts nothing.
func (p *netnsPool) hasNoSocket(fd int) bool {
	clean := false
	if err := p.onThread(func() error { return unix.Setns(fd, unix.CLONE_NEWNET) }, func() {
		var buf [4096]byte
		clean = sockstatZero(&buf, "/proc/thread-self/net/sockstat", false, sockstatKeys...) &&
			sockstatZero(&buf, "/proc/thread-self/net/sockstat6", true, sockstat6Keys...)
	}); err != nil {
		return false
	}
	return clean
}

// The counts of a namespace without a socket: of sockets made by its
// processes, then of what each protocol has hashed, sockets of the
// kernel's own included (which "sockets: used" leaves out), and TCP's
// TIME_WAIT.
var (
	sockstatKeys  = []string{"sockets: used", "TCP: inuse", "TCP: tw", "UDP: inuse", "UDPLITE: inuse", "RAW: inuse"}
	sockstat6Keys = []string{"TCP6: inuse", "UDP6: inuse", "UDPLITE6: inuse", "RAW6: inuse"}
)

// sockstatZero reports whether every count the keys name is 0 in the
// sockstat file at path. A key is a line's label and a field's name
// ("TCP: tw" is the number after "tw" on the line "TCP: ..."). A key not
// found, or a number that does not parse, is a no; an absent file is a
// yes when absentOK.
func sockstatZero(buf *[4096]byte, path string, absentOK bool, keys ...string) bool {
	f, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return absentOK
	}
	if err != nil {
		return false
	}
	defer unix.Close(f)
	return sockstatZeroAt(buf, f, keys...)
}

// sockstatZeroAt is sockstatZero of the sockstat file open as f, read
// from its start (a procfs file is made again at each read from 0, so
// one held open serves every check).
func sockstatZeroAt(buf *[4096]byte, f int, keys ...string) bool {
	n, err := unix.Pread(f, buf[:], 0)
	for errors.Is(err, unix.EINTR) {
		n, err = unix.Pread(f, buf[:], 0)
	}
	if err != nil || n == len(buf) {
		return false
	}
	for _, key := range keys {
		v, ok := sockstatCount(buf[:n], key)
		if !ok || v != 0 {
			return false
		}
	}
	return true
}

// sockstatCount finds key ("TCP: tw") in a sockstat file's text: the line
// that starts with the label ("TCP:"), then the number after the field's
// name ("tw") among the line's name-number pairs.
func sockstatCount(text []byte, key string) (int, bool) {
	label, field, _ := strings.Cut(key, ": ")
	for line := range bytes.Lines(text) {
		rest, ok := bytes.CutPrefix(line, []byte(label+":"))
		if !ok {
			continue
		}
		words := strings.Fields(string(rest))
		for i := 0; i+1 < len(words); i += 2 {
			if words[i] == field {
				v, err := strconv.Atoi(words[i+1])
				return v, err == nil
			}
		}
		return 0, false
	}
	return 0, false
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

// noMetricsSave is the sysctl that keeps TCP from saving what it learnt
// of a peer, written in each namespace made ahead.
const noMetricsSave = "/proc/sys/net/ipv4/tcp_no_metrics_save"

// create makes a namespace and returns its fd. Its loopback is brought up
// by the init cloned into it, as in a namespace the init makes itself
// (the plan still names the network namespace).
func (p *netnsPool) create() (int, error) {
	fd := -1
	var err error
	if eerr := p.onThread(func() error { return unix.Unshare(unix.CLONE_NEWNET) }, func() {
		// TCP keeps what it learnt of a peer (RTT, congestion window)
		// after the connection, readable by netlink: nothing of a cell
		// is left for the next. Where /proc/sys is read-only (systemd's
		// ProtectKernelTunables=, a container's) the namespace is made
		// all the same: its cells' only peer is its own loopback.
		if werr := os.WriteFile(noMetricsSave, []byte("1"), 0); werr != nil {
			p.metricsOnce.Do(func() {
				p.log.Info("network namespaces made ahead keep TCP metrics (of loopback connections only) for later cells of the same tenant", "err", werr)
			})
		}
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
