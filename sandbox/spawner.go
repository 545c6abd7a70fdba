package sandbox

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cellgate/cellgate/confine"
	"golang.org/x/sys/unix"
)

// The init spawner. Started from the daemon, a confined cell's init costs
// a fork of the daemon and an execve of cellgate-init: os.StartProcess
// (with the setns into a network namespace made ahead around it) was 6%
// of all CPU in a profile of serve answering confined requests, a fifth
// of cellgate's own, most of it the execve. So the daemon starts
// cellgate-init once more, as a spawner (confine/spawn.go: argv[1]
// "spawner"), and has it clone each init instead: clone3 straight into
// the cell's cgroup with the plan's namespaces, from a small static
// process, with no execve at all; the child puts its fds in place,
// enters the network namespace made ahead and runs as the init.
//
// The init is cloned with CLONE_PARENT, so the daemon is its parent as
// before: it reaps the init through a pidfd and kills it with the cell;
// only its start moved. An init's parent-death signal is sent when its
// parent *thread* ends, so the spawner is started from a goroutine locked
// to its thread for as long as inits of it may live (the Go runtime ends
// a thread only when a goroutine locked to it returns), and that thread
// starts a new spawner when one has died.
//
// The spawner says hello first; one that does not (an init without the
// mode) counts as one that cannot be started: the daemon then starts
// inits itself, and tries a spawner again after spawnerRetry. Requests are
// answered in order, one datagram each way (SOCK_SEQPACKET); a spawner
// that answers wrongly, or answers nothing for reportTimeout while
// requests wait, is killed, and the requests waiting fail once it has
// exited (once every clone it made has returned). A spawn whose request was sent to a spawner
// that died may have cloned an init the daemon does not know: the caller
// kills the cell and reaps what is its child there (endOrphans). While
// the spawner cannot be started, inits are started as before, from the
// daemon.

// errSpawnerGone: the spawner is not running, or died with the request:
// nothing is known of the init.
var errSpawnerGone = errors.New("the init spawner is gone")

// spawnerRetry is how long after a failed start the daemon starts inits
// itself before it starts a spawner again.
const spawnerRetry = time.Minute

type initSpawner struct {
	log      *slog.Logger
	launcher *confine.Launcher // cellgate-init
	devNull  *os.File
	hasTTY   bool

	stuck  time.Duration          // a spawner that answers nothing this long while requests wait is ended: reportTimeout
	starts chan chan spawnerStart // to the owner thread
	done   chan struct{}          // the owner thread returned

	mu       sync.Mutex
	cur      *spawnerProc
	closed   bool
	failedAt time.Time // the last start that failed
	failErr  error
}

type spawnerStart struct {
	sp  *spawnerProc
	err error
}

// spawnerProc is one running spawner.
type spawnerProc struct {
	proc *os.Process
	conn *net.UnixConn
	raw  syscall.RawConn

	mu      sync.Mutex // orders the requests written with waiting
	waiting []chan spawnAnswer
	dead    bool
	exited  chan struct{} // closed once the process has been reaped

	answered atomic.Int64 // when the last answer came, Unix nanoseconds
	answers  atomic.Int64 // how many requests it answered
}

type spawnAnswer struct {
	pid int
	err error
}

func newInitSpawner(launcher *confine.Launcher, devNull *os.File, hasTTY bool, log *slog.Logger) *initSpawner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &initSpawner{log: log, launcher: launcher, devNull: devNull, hasTTY: hasTTY, stuck: reportTimeout, starts: make(chan chan spawnerStart), done: make(chan struct{})}
	go s.own()
	return s
}

// own is the owner thread: it starts each spawner and waits for it.
func (s *initSpawner) own() {
	runtime.LockOSThread()
	defer close(s.done)
	for reply := range s.starts {
		sp, err := s.launch()
		if err != nil {
			reply <- spawnerStart{nil, err}
			continue
		}
		if err = sp.hello(); err != nil {
			sp.proc.Kill()
		}
		reply <- spawnerStart{sp, err}
		if err == nil {
			go sp.read()
		}
		sp.proc.Wait()
		close(sp.exited)
		sp.conn.Close()
	}
	// No init of a spawner is left: the thread may serve others again.
	runtime.UnlockOSThread()
}

// launch starts a spawner on the owner thread.
func (s *initSpawner) launch() (*spawnerProc, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("the spawner's socket: %w", err)
	}
	child := os.NewFile(uintptr(fds[1]), "init-spawner")
	defer child.Close()
	ours := os.NewFile(uintptr(fds[0]), "init-spawner")
	defer ours.Close()
	c, err := net.FileConn(ours)
	if err != nil {
		return nil, fmt.Errorf("the spawner's socket: %w", err)
	}
	path, attr := s.launcher.Attach(&os.ProcAttr{
		Dir:   "/",
		Env:   []string{}, // nothing of the daemon's: every init is a copy of it
		Files: []*os.File{s.devNull, s.devNull, s.devNull, child},
		Sys:   &syscall.SysProcAttr{Setsid: s.hasTTY, Setpgid: !s.hasTTY, Pdeathsig: syscall.SIGKILL},
	})
	proc, err := startNoNewPrivs(path, []string{confine.InitArg0, confine.SpawnerArg}, attr)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("start %s %s: %w", confine.InitArg0, confine.SpawnerArg, err)
	}
	conn := c.(*net.UnixConn)
	raw, err := conn.SyscallConn()
	if err != nil {
		proc.Kill()
		proc.Wait()
		conn.Close()
		return nil, fmt.Errorf("the spawner's socket: %w", err)
	}
	return &spawnerProc{proc: proc, conn: conn, raw: raw, exited: make(chan struct{})}, nil
}

// hello reads the spawner's first answer, its own pid.
func (sp *spawnerProc) hello() error {
	var buf [64]byte
	sp.conn.SetReadDeadline(time.Now().Add(reportTimeout))
	defer sp.conn.SetReadDeadline(time.Time{})
	n, err := sp.conn.Read(buf[:])
	if err != nil {
		return fmt.Errorf("no hello from %s %s (a %s without the mode?): %w", confine.InitArg0, confine.SpawnerArg, confine.InitArg0, err)
	}
	if pid, err := confine.DecodeSpawned(buf[:n]); err != nil || pid != sp.proc.Pid {
		return fmt.Errorf("%s %s said %q, not hello", confine.InitArg0, confine.SpawnerArg, buf[:n])
	}
	sp.answered.Store(time.Now().UnixNano())
	return nil
}

// get returns the running spawner, starting one if there is none: at
// most once per spawnerRetry after a start failed, or after a spawner
// died before it answered any request (one that cannot clone, e.g. under
// a seccomp profile, and would die at every request).
func (s *initSpawner) get() (*spawnerProc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errSpawnerGone
	}
	if s.cur != nil && !s.cur.isDead() {
		return s.cur, nil
	}
	if s.cur != nil && s.cur.answers.Load() == 0 {
		s.failedAt, s.failErr = time.Now(), errors.New("the last spawner ended before it answered any request")
		s.log.Warn("the init spawner ended before it answered a request; cells' inits are started by the daemon, and a spawner is tried again in a minute")
		s.cur = nil
	}
	if s.failErr != nil && time.Since(s.failedAt) < spawnerRetry {
		return nil, fmt.Errorf("%w: %w", errSpawnerGone, s.failErr)
	}
	reply := make(chan spawnerStart, 1)
	s.starts <- reply
	r := <-reply
	if r.err != nil {
		if s.failErr == nil {
			s.log.Warn("the init spawner cannot be started; cells' inits are started by the daemon, and a spawner is tried again in a minute", "err", r.err)
		}
		s.failedAt, s.failErr = time.Now(), r.err
		return nil, fmt.Errorf("%w: %w", errSpawnerGone, r.err)
	}
	if s.cur != nil {
		s.log.Warn("the init spawner ended; a new one is started")
	}
	s.cur, s.failErr = r.sp, nil
	return r.sp, nil
}

// spawn has the spawner clone an init with flags (CLONE_NEW*) and opts
// (confine.SpawnCgroup, ...), handing it fds in the protocol's order, and
// returns its pid. An error wrapping errSpawnerGone: nothing was sent
// (sent false), or the spawner died with the request (sent true: an init
// may have been cloned).
func (s *initSpawner) spawn(opts uint32, flags uintptr, fds []int) (pid int, sent bool, err error) {
	sp, err := s.get()
	if err != nil {
		return 0, false, err
	}
	ch := make(chan spawnAnswer, 1)
	sp.mu.Lock()
	if sp.dead {
		sp.mu.Unlock()
		return 0, false, errSpawnerGone
	}
	// Never blocks (the lock is held): a full socket, a spawner that
	// stopped reading, sends nothing, and the daemon starts the init.
	var serr error
	if err := sp.raw.Write(func(fd uintptr) bool {
		serr = unix.Sendmsg(int(fd), confine.EncodeSpawn(opts, uint64(flags)), unix.UnixRights(fds...), nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return true
	}); err != nil && serr == nil {
		serr = err
	}
	if errors.Is(serr, unix.EAGAIN) {
		sp.mu.Unlock()
		return 0, false, fmt.Errorf("%w: its queue is full", errSpawnerGone)
	}
	if serr != nil {
		// A datagram that could not be sent was not delivered: nothing
		// was cloned. The next request starts a new spawner.
		sp.dead = true
		sp.mu.Unlock()
		sp.end()
		return 0, false, fmt.Errorf("%w: send: %w", errSpawnerGone, serr)
	}
	sp.waiting = append(sp.waiting, ch)
	sp.mu.Unlock()
	t := time.NewTimer(s.stuck)
	defer t.Stop()
	for {
		select {
		case a := <-ch:
			return a.pid, true, a.err
		case <-t.C:
		}
		// Requests wait their turn: only a spawner that answered none
		// for reportTimeout is stuck.
		idle := time.Since(time.Unix(0, sp.answered.Load()))
		if idle < s.stuck {
			t.Reset(s.stuck - idle)
			continue
		}
		sp.end()
		a := <-ch // the end of the spawner fails every request waiting
		return a.pid, true, a.err
	}
}

// read delivers the answers in order; at the end of the socket, or at an
// answer that is not one, it ends the spawner and fails what waits.
func (sp *spawnerProc) read() {
	var buf [64]byte
	for {
		n, err := sp.conn.Read(buf[:])
		var a spawnAnswer
		if err == nil {
			a.pid, a.err = confine.DecodeSpawned(buf[:n])
			if a.err != nil && n != confine.SpawnAnswerSize {
				err = a.err
			}
		}
		sp.mu.Lock()
		if err != nil || len(sp.waiting) == 0 {
			sp.dead = true
			sp.mu.Unlock()
			// Once the spawner has exited, no clone of it is still under
			// way: what waits is failed, and a caller that reaps the
			// cell's orphans finds them all.
			sp.proc.Kill()
			<-sp.exited // the owner closes the socket then
			sp.mu.Lock()
			waiting := sp.waiting
			sp.waiting = nil
			sp.mu.Unlock()
			for _, ch := range waiting {
				ch <- spawnAnswer{err: fmt.Errorf("%w: %v", errSpawnerGone, err)}
			}
			return
		}
		ch := sp.waiting[0]
		sp.waiting = sp.waiting[1:]
		sp.mu.Unlock()
		sp.answered.Store(time.Now().UnixNano())
		sp.answers.Add(1)
		ch <- a
	}
}

func (sp *spawnerProc) isDead() bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.dead
}

// end kills the spawner; its reader then fails every request waiting.
func (sp *spawnerProc) end() {
	sp.proc.Kill()
	sp.conn.CloseRead()
}

// close ends the spawner (at the end of its socket, or killed if it has
// not exited within reportTimeout) and the owner thread. No init may be
// starting.
func (s *initSpawner) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	cur := s.cur
	if cur != nil {
		cur.conn.CloseWrite()
	}
	close(s.starts)
	s.mu.Unlock()
	select {
	case <-s.done:
	case <-time.After(reportTimeout):
		if cur != nil {
			cur.proc.Kill()
		}
		<-s.done
	}
}
