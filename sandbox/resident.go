package sandbox

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"syscall"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
	"golang.org/x/sys/unix"
)

// Resident cells. A warm cell moves its setup (the init's start, its
// namespaces, its view) off the request's path but not off the CPU: each
// request still pays for one, and under load that is most of what a
// confined request costs beyond an unconfined one. A resident cell pays
// it once for many requests: its init (cellgate-init, from the plan's
// resident frame) stays in a group of its own, the cell's, and for each
// request clones the program into a group made for that request alone
// (the request's cell, from the pool like any cell: its limits, its
// accounting, its OOM kill) with CLONE_INTO_CGROUP; the init runs under
// confine.ResidentFilter, and the program adds a rule refusing clone3
// before its execve. The program's process is started ahead, in the next
// request's cell, when the init is put back (prepareNext), and takes the
// request's exec frame from the daemon itself. When the
// program has ended the init ends
// every other process of its PID namespace and empties the private tmpfs
// (as every init does, finish) and its IPC namespace (every SysV object
// and POSIX message queue removed), reports, and waits for the next
// request;
// the daemon reads the request's cell, empties and releases it, and puts
// the init back in its route's set.
//
// What successive requests of one route share, then: the init, the
// mount namespace with its read-only view (the tmpfs emptied between
// them), the PID, UTS, IPC and network namespaces (every process of the
// previous request gone, every SysV object and POSIX message queue
// removed, as with a network namespace reused today), never a process, a
// file of the private tmpfs, an IPC object or a uid of the previous
// request's (each request has its own uid from the pool, as before; a
// route run as root has one uid for all its requests, in a cell kept or
// not). A program run as root is root of a user namespace of its own
// (confine.Plan.RootMap), which owns none of the cell's other
// namespaces: it may change no more of them than an unprivileged
// program (no mount, hostname, network setting or sysctl) and its cell
// is kept alike. One run as the host's root (host_namespaces: [user])
// could change what the next request finds, so its cell is not kept.
//
// A resident init serves as long as its view may (view.go): up to
// viewMaxAge after the view was made, and while it covers the daemon's
// files the host holds. The sets of warm.go hold them (ready, or busy
// serving a request, both counted against the set's target), at most
// Config.ResidentCells per route.

// ResidentEnd is why a resident init stopped serving its route: each
// end costs a later request (or the refill) the start of another one, so
// an operator whose route's resident cells end often learns why
// (Runner.ResidentEnded, the metric cellgate_resident_ended_total).
type ResidentEnd int

const (
	// EndUnclean: a request left what the init does not end (a tree
	// deeper than its wipe goes, a file or an IPC object it cannot
	// remove).
	EndUnclean ResidentEnd = iota
	// EndRoot: a request's program ran as the host's root (a route's
	// host_namespaces: [user]). One run as root of a user namespace of
	// its own (confine.Plan.RootMap) can change nothing the next request
	// finds that an unprivileged one could not, and its cell is kept.
	EndRoot
	// EndSockets: a socket was left in the cell's network namespace (a
	// connection in TIME_WAIT counts).
	EndSockets
	// EndAged: the init's view may serve no further request: it was
	// made viewMaxAge before, or it no longer covers a file of the
	// daemon's replaced on the host since (view.go).
	EndAged
	// EndSurplus: the route's set had all the cells it wanted.
	EndSurplus
	// EndFailed: the init died (killed, OOM-killed with its tenant), or
	// failed a request or the preparation of the next one.
	EndFailed
	residentEnds
)

var residentEndNames = [residentEnds]string{"unclean", "root", "sockets", "aged", "surplus", "failed"}

func (e ResidentEnd) String() string { return residentEndNames[e] }

// ResidentEndReasons lists every ResidentEnd.
func ResidentEndReasons() []ResidentEnd {
	all := make([]ResidentEnd, residentEnds)
	for e := range residentEnds {
		all[e] = e
	}
	return all
}

// ResidentEnded counts the resident inits ended for why.
func (r *Runner) ResidentEnded(why ResidentEnd) uint64 {
	if r.warm == nil {
		return 0
	}
	return r.warm.ends[why].Load()
}

// ended counts a resident init ended for why.
func (w *warmPool) ended(why ResidentEnd) { w.ends[why].Add(1) }

// endedIf counts ip ended for why if it is a resident init (a warm
// cell's end is not counted by why).
func (w *warmPool) endedIf(ip *initProc, why ResidentEnd) {
	if ip.resident {
		w.ended(why)
	}
}

// returnWait bounds how long a request that finds its route's set empty
// waits for a resident init on its way back (putBackLater), or being set
// up, before it starts one of its own. A put back is a few reads, a cell
// of the pool and a prepare frame, a part of what a start does besides
// the init and its namespaces, and a setup is the start the request
// would make, begun earlier; so the request waits for it to end, ready
// or ended, and only starts one if it was ended: a bound of
// milliseconds, which a put back on a loaded machine does not always
// meet, has requests back to back start inits for nothing, each ended as
// surplus later. The bound is for an init that stalls (stopped from the
// host); each is waited for by one take at most (warmSet.awaited), so
// that a burst starts inits for the rest.
const returnWait = time.Second

// residentFor reports whether the cells of plan are resident: the Runner
// keeps them (Config.ResidentCells) and the plan may be (a PID namespace
// of its own, not cells: fresh).
func (r *Runner) residentFor(plan *confine.Prepared) bool {
	return r.warm != nil && r.warm.resident > 0 && plan.ResidentFrame() != nil
}

// startResident starts a resident init, of plan, in a cell of prof's of
// its own, for a request that found no ready one.
func (r *Runner) startResident(ctx context.Context, k warmKey) (*initProc, error) {
	home, err := r.cells.Get(ctx, k.prof)
	if err != nil {
		// As the request's own cell: a 503 with Retry-After at the cap.
		return nil, fmt.Errorf("%w: tenant %q: the resident init's cell: %w", ErrNoCell, k.prof.Tenant(), err)
	}
	ip, err := r.startInit(home, k.plan, k.prof.Tenant())
	if err != nil {
		r.cells.Release(home)
		return nil, err
	}
	return ip, nil
}

// putBackLater puts back a resident init whose request has ended
// (putBack) off the request's path: the checks and the next request's
// preparation cost the request nothing. A take that finds the set empty
// meanwhile waits for it (take, returnWait).
func (w *warmPool) putBackLater(k warmKey, ip *initProc) {
	if back := w.returning(k, ip); back != nil {
		go back()
	}
}

// returning counts ip as on its way back to its set, so that a take
// finding the set empty waits for it, and returns the put back for the
// caller to run off the request's path; or, when ip has no set or the
// pool is closing, puts it back now and returns nil.
func (w *warmPool) returning(k warmKey, ip *initProc) (back func()) {
	w.mu.Lock()
	s := ip.set
	if s == nil || w.ctx.Err() != nil {
		w.mu.Unlock()
		w.putBack(k, ip)
		return nil
	}
	s.returning++
	ip.returning = true
	w.returns.Add(1)
	w.mu.Unlock()
	return func() {
		defer w.returns.Done()
		w.putBack(k, ip)
	}
}

// putBack returns a resident init whose request has ended (its report
// read) to the key's set, its next request's cell prepared, if the set
// still wants it and its view has not aged (view.go; the files it
// covers are checked by the next take); otherwise it is ended off the
// request's path, and, unless the set had all it wanted,
// the refill is woken to set another up: the request's own kick came
// when its Result was known, with this init still counted as serving.
func (w *warmPool) putBack(k warmKey, ip *initProc) {
	ip.final, ip.got, ip.started = nil, nil, false
	keep, surplus := w.keeps(k, ip)
	if keep && ip.next == nil {
		if keep = w.r.prepareNext(w.ctx, ip, k.prof); !keep {
			w.ended(EndFailed)
		}
	}
	if !w.settle(k, ip, keep, surplus) {
		w.r.teardowns.run(func() { w.r.discard(ip) })
	}
}

// keeps decides whether a resident init coming back (putBack) may serve
// another request, and counts why not when it may not; surplus: its set
// had all it wanted.
func (w *warmPool) keeps(k warmKey, ip *initProc) (keep, surplus bool) {
	// A cell prepared and not used (the request failed before its
	// hand-off) holds the stub's socket: no program ran since the check.
	quiet := ip.next != nil || ip.netQuiet(k.plan)
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.ctx.Err() != nil:
		return false, false
	case !quiet && ip.gone():
		// An init that died has no network namespace to read: the
		// check failed for that, not for a socket.
		w.ended(EndFailed)
		return false, false
	case !quiet:
		w.ended(EndSockets)
		return false, false
	case ip.view.aged(time.Now()):
		w.ended(EndAged)
		return false, false
	case !ip.wanted(w.sets[k]):
		w.ended(EndSurplus)
		return false, true
	}
	return true, false
}

// settle puts ip, kept (keeps, and its next request's cell prepared),
// among its set's ready ones, and reports whether it did; an init not
// kept wakes the refill to set another up, unless the set had all it
// wanted. A set gone since keeps (idle, or its route's policy replaced)
// wants no more: its init is counted as surplus.
func (w *warmPool) settle(k warmKey, ip *initProc, keep, surplus bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	ip.back()
	ip.leaveSet()
	s := w.sets[k]
	switch {
	case !keep:
	case w.ctx.Err() != nil:
		keep = false
	case s == nil:
		keep = false
		w.ended(EndSurplus)
	default:
		s.ready = append(s.ready, ip)
	}
	if !keep && s != nil && !surplus {
		wakeUp(s.wake)
	}
	return keep
}

// wanted reports whether s has room for ip beside its other cells (ready,
// busy, being set up), ip itself counted out. Called with warmPool.mu held.
func (ip *initProc) wanted(s *warmSet) bool {
	if s == nil {
		return false
	}
	others := len(s.ready) + s.busy + s.preparing
	if ip.set == s {
		others--
	}
	return others < s.want
}

// netQuiet reports whether the resident init's network namespace, when
// the plan gives it one of its own, holds no socket, with the same counts
// as a network namespace given back for reuse (netns.go, hasNoSocket),
// read through the init's /proc/PID/net: what a request left there (a
// loopback connection in TIME_WAIT) would otherwise be seen by the next,
// so the cell is not kept.
func (ip *initProc) netQuiet(plan *confine.Prepared) bool {
	if plan.Plan().Namespaces&confine.NSNet == 0 {
		return true
	}
	if ip.sockstat == nil {
		ip.sockstat = openSockstat(ip.proc.Pid)
	}
	var buf [4096]byte
	v4, v6 := ip.sockstat[0], ip.sockstat[1]
	return v4 >= 0 && sockstatZeroAt(&buf, v4, sockstatKeys...) &&
		(v6 == noIPv6 || v6 >= 0 && sockstatZeroAt(&buf, v6, sockstat6Keys...))
}

// noIPv6 stands for a sockstat6 file absent (a kernel without IPv6):
// nothing to count there.
const noIPv6 = -2

// openSockstat opens the sockstat and sockstat6 files of pid's network
// namespace, which a resident init's netQuiet reads at each put back:
// held open, each check is two reads, not two path walks through /proc
// and back (closeSockstat closes them with the init's end). A file that
// cannot be opened is -1 (the check fails: the cell is not kept), an
// absent sockstat6 noIPv6.
func openSockstat(pid int) *[2]int {
	dir := "/proc/" + strconv.Itoa(pid) + "/net/"
	fds := [2]int{-1, -1}
	for i, name := range []string{"sockstat", "sockstat6"} {
		f, err := unix.Open(dir+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		switch {
		case err == nil:
			fds[i] = f
		case i == 1 && errors.Is(err, unix.ENOENT):
			fds[i] = noIPv6
		}
	}
	return &fds
}

// closeSockstat closes what openSockstat opened for ip, if anything.
func (ip *initProc) closeSockstat() {
	if ip.sockstat == nil {
		return
	}
	for _, f := range ip.sockstat {
		if f >= 0 {
			unix.Close(f)
		}
	}
	ip.sockstat = nil
}

// prepareNext gives a resident init the next request's cell ahead of it
// (a prepare frame: no body, the cell's group and a socket's end), in
// which the init starts that request's stub (the program's process
// before its execve: cloned into the group, its filter loaded), waiting
// on the socket: the request's exec frame goes to the stub itself, on
// the socket's other end, so that the request pays a hand-off and an
// execve, as with a warm cell, and no wakeup of the init. The socket
// pair is made here once per init, in the daemon's network namespace (it
// counts in none of a cell's), and serves stub after stub: the daemon
// keeps both ends, the init closes its copy once the stub has it, and
// the stub's is close-on-exec, so that between two stubs no process but
// the daemon holds it (a pair per stub cost ~0.4 ms of the daemon's CPU
// per request in the microVM, its making and its freeing). A stub that
// did not take its frame whole has the pair dropped (stubTook). A cell
// not to be had (the pool failing) leaves the init without one: its next
// request brings its cell with its exec frame. An init that cannot start
// a stub reports so and exits, and the next take finds it gone. false:
// the frame could not be sent (the init is gone).
func (r *Runner) prepareNext(ctx context.Context, ip *initProc, prof *cgroup.Profile) bool {
	cell, err := r.cells.Get(ctx, prof)
	if err != nil {
		return true
	}
	if cell.FD() < 0 {
		r.cells.Release(cell)
		return true
	}
	if ip.stubs == nil {
		sv, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			r.cells.Release(cell)
			return true
		}
		ip.stubs = &sv
	}
	if err := ip.send(make([]byte, 4), []int{cell.FD(), ip.stubs[1]}); err != nil {
		r.cells.Release(cell)
		return false
	}
	ip.next = cell
	return true
}

// dropStubs closes ip's stub socket pair, if it has one: its next stub
// gets a new one.
func (ip *initProc) dropStubs() {
	if ip.stubs != nil {
		unix.Close(ip.stubs[0])
		unix.Close(ip.stubs[1])
		ip.stubs = nil
	}
}

// stubTook reads, once the init has reported the end of the process it
// started ahead in the request's cell, what that process wrote on its
// socket (stub, the daemon's end of the init's pair): its byte, if it
// took the exec frame (from then on the program may have run), and the
// errno of a failed execve after it. took is false only when nothing was
// written: the process ended before it took the frame (its group's OOM
// kill, a kill), and nothing of the request ran. reuse is true when the
// pair may serve the next stub: the byte (and errno) read and nothing
// else, the frame having been read whole before the byte was written;
// otherwise some of the frame, and the descriptors sent with it, may
// wait in the socket still, for no stub to take: the caller drops the
// pair (dropStubs).
//
// One read takes it all: the process wrote its byte and errno before it
// ended, which was before the init's report, so both wait in the socket
// already (a stream socket's read goes on over the writes queued).
func stubTook(stub int) (took, reuse bool, errno syscall.Errno) {
	var b [8]byte
	n, _, err := unix.Recvfrom(stub, b[:], unix.MSG_DONTWAIT)
	for errors.Is(err, unix.EINTR) {
		n, _, err = unix.Recvfrom(stub, b[:], unix.MSG_DONTWAIT)
	}
	switch {
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ECONNRESET), err == nil && n == 0:
		return false, false, 0 // nothing written: the frame not taken
	case err != nil:
		return true, false, 0 // not known to be unread: as if it ran
	}
	if n >= 5 {
		errno = syscall.Errno(binary.NativeEndian.Uint32(b[1:5]))
	}
	return true, b[0] == 1 && (n == 1 || n == 5), errno
}

// endNext ends the cell prepared for an ended init's next request (its
// stub died with the init's PID namespace) and releases it.
func (r *Runner) endNext(ip *initProc) {
	if ip.next == nil {
		return
	}
	if err := r.empty(ip.next); err != nil {
		r.log.Error("resident cell's prepared cell did not empty", "cell", ip.next.Path(), "err", err)
	}
	r.cells.Release(ip.next)
	ip.next = nil
}

// forget counts out a resident init taken from its set that will not come
// back (it died, or its program ran as the host's root); the caller ends it.
func (w *warmPool) forget(ip *initProc) {
	w.mu.Lock()
	ip.leaveSet()
	w.mu.Unlock()
}

// back counts ip out of its set's returning ones, if it was one
// (putBackLater), and wakes the takes waiting for one. Called with
// warmPool.mu held.
func (ip *initProc) back() {
	if !ip.returning {
		return
	}
	ip.returning = false
	s := ip.set
	s.returning--
	s.arrived()
}

// leaveSet counts ip out of the set it was taken from, if any. Called
// with warmPool.mu held.
func (ip *initProc) leaveSet() {
	if ip.set != nil {
		ip.set.busy--
		ip.set = nil
	}
}

// unslot gives back the place take kept in s for a resident init the
// request would start, when it started none.
func (w *warmPool) unslot(s *warmSet) {
	w.mu.Lock()
	s.busy--
	w.mu.Unlock()
}

// initOOMKilled reports whether the kernel OOM-killed the resident init
// ip at an ancestor's limit (its tenant's budget, the global one): its
// cell's memory.events count the kill, and no OOM at the cell's own limit
// (the route's, which an init alone never nears).
func initOOMKilled(ip *initProc) bool {
	u, err := ip.cell.Usage()
	return err == nil && u.OOMKilled() && u.OOM == 0
}

// endResident ends the resident init ip, which failed (it died, or
// failed its request), already reaped through its worker: its own cell
// is emptied and released, and its network namespace given back (for
// reuse unless a program ran in it as the host's root).
func (r *Runner) endResident(ip *initProc, hostRootRan bool) {
	ip.hostRootRan = ip.hostRootRan || hostRootRan
	r.warm.ended(EndFailed)
	r.warm.forget(ip)
	if ip.w != nil {
		ip.w.release()
		ip.w = nil
	}
	r.endInitCell(ip)
}
