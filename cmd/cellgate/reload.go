package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cellgate/cellgate/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// The control socket: serve listens on a Unix socket in the abstract
// namespace named after its pid, and `cellgate reload --pid PID` asks it
// for a reload there and waits for the verdict. A SIGHUP reloads too, but
// says nothing back: under systemd 252 (Debian 12), which has no
// Type=notify-reload, `systemctl reload` ends when ExecReload's command
// exits, so with `kill -HUP` it returned before the daemon had even seen
// the signal and a request sent right after it met the old policy.
//
// One request per connection, a line each way:
//
//	client: reload\n
//	serve:  ok <verdict>\n  or  failed <verdict>\n
//
// serve answers only a peer of uid 0 or of its own uid (SO_PEERCRED), and
// the client talks only to a socket whose owner is the pid it was given,
// so no other process can take the name and answer for serve.

// controlAddress is serve's control socket: abstract (the leading @),
// needing no directory, gone with the process, one per network namespace.
func controlAddress(pid int) string { return "@cellgate/" + strconv.Itoa(pid) + "/control" }

// controlLine bounds a request line; controlReadTimeout bounds how long a
// client may take to send it (the connections are answered one by one).
const (
	controlLine        = 64
	controlReadTimeout = 5 * time.Second
)

// controlRefusedLogEvery spaces out the log lines of the connections the
// control socket refuses: any local uid (and a network: host route's
// cell) can connect, and a line for each would let a flood of them fill
// journald's rate limit for the unit, which then drops serve's other
// lines, the access log among them when it goes to the journal.
const controlRefusedLogEvery = time.Minute

// controlServer is serve's control socket.
type controlServer struct {
	ln   net.Listener
	log  *slog.Logger
	reqs *reloadRequests
	stop <-chan struct{}
	// done is closed when serve starts shutting down: its loop runs no
	// reload any more, and a request is answered at once.
	done <-chan struct{}
	// refused counts the connections refused (a peer of another uid, or
	// one whose uid could not be read): cellgate_control_refused_total.
	refused prometheus.Counter
	// lastRefusedLog is when a refusal was last logged; unlogged counts
	// those refused since. Connections are answered one at a time.
	lastRefusedLog time.Time
	unlogged       int
}

// newControlRefused is cellgate_control_refused_total.
func newControlRefused() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "cellgate", Name: "control_refused_total",
		Help: "Connections to the control socket refused: a peer of another uid than 0 and serve's, or one whose uid could not be read."})
}

// listenControl opens serve's control socket; refused counts the
// connections it refuses, done is closed when serve starts shutting down
// (daemon.done). A failure is not fatal (SIGHUP still reloads); it is
// logged by the caller.
func listenControl(log *slog.Logger, reqs *reloadRequests, refused prometheus.Counter, done, stop <-chan struct{}) (*controlServer, error) {
	addr := controlAddress(os.Getpid())
	ln, err := net.Listen("unix", addr)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", addr, err)
	}
	return &controlServer{ln: ln, log: log, reqs: reqs, stop: stop, done: done, refused: refused}, nil
}

// serve answers the connections one at a time until the listener closes.
// A connection that could not be accepted (proxy.ListenerGone says which
// errors are not the listener's) is logged and the next one awaited after
// a pause, 5 ms doubling up to 1 s, as net/http does.
func (c *controlServer) serve() {
	var pause time.Duration
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			if proxy.ListenerGone(err) {
				if !errors.Is(err, net.ErrClosed) {
					c.log.Warn("control socket: accept failed; reloads go by SIGHUP only", "err", err)
				}
				return
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			c.log.Warn("control socket: a connection could not be accepted; retrying", "err", err, "retry_in", pause)
			select {
			case <-time.After(pause):
				continue
			case <-c.stop:
				return
			}
		}
		pause = 0
		c.answer(conn.(*net.UnixConn))
	}
}

func (c *controlServer) close() { _ = c.ln.Close() }

// answer serves one connection: a permitted peer's reload request.
func (c *controlServer) answer(conn *net.UnixConn) {
	defer conn.Close()
	cred, err := peerCred(conn)
	if err != nil {
		c.refuse("control socket: cannot tell who connected; refused", "err", err)
		return
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		c.refuse("control socket: refused a peer of another uid", "uid", cred.Uid, "pid", cred.Pid)
		fmt.Fprintf(conn, "failed only uid 0 or %d may reload this daemon\n", os.Geteuid())
		return
	}
	_ = conn.SetReadDeadline(time.Now().Add(controlReadTimeout))
	line, err := bufio.NewReaderSize(io.LimitReader(conn, controlLine), controlLine).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "reload" {
		fmt.Fprintf(conn, "failed unknown request %q (want \"reload\")\n", strings.TrimSpace(line))
		return
	}
	const shuttingDown = "failed the daemon is shutting down: it runs no reload any more"
	select {
	case <-c.done:
		fmt.Fprintln(conn, shuttingDown)
		return
	default:
	}
	reply := c.reqs.ask()
	var verdict error
	select {
	case verdict = <-reply:
	case <-c.done: // the loop has ended: no verdict comes
		fmt.Fprintln(conn, shuttingDown)
		return
	case <-c.stop:
		fmt.Fprintln(conn, shuttingDown)
		return
	}
	c.log.Info("control socket: reload asked", "pid", cred.Pid, "ok", verdict == nil)
	if verdict != nil {
		fmt.Fprintf(conn, "failed reload failed, still serving the previous policy: %s\n", oneLine(verdict.Error()))
		return
	}
	fmt.Fprintln(conn, "ok policy reloaded")
}

// refuse counts a refused connection and logs it (msg, with the peer's
// attrs), at most once per controlRefusedLogEvery: the line says how many
// were refused since the last one.
func (c *controlServer) refuse(msg string, attrs ...any) {
	c.refused.Inc()
	c.unlogged++
	now := time.Now()
	if !c.lastRefusedLog.IsZero() && now.Sub(c.lastRefusedLog) < controlRefusedLogEvery {
		return
	}
	c.log.Warn(msg+" (logged at most once a minute; cellgate_control_refused_total counts every one)",
		append(attrs, "refused_since_last_line", c.unlogged)...)
	c.lastRefusedLog, c.unlogged = now, 0
}

// peerCred is the other end's pid, uid and gid (at connect or listen).
func peerCred(conn *net.UnixConn) (*unix.Ucred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

const reloadUsage = `usage: cellgate reload --pid PID [--timeout DURATION]

Asks the cellgate serve of process PID to reload its policy and waits until
it has: the new policy serves the next request (exit 0), or it was refused
and the previous one still serves (exit 1, with the reason). It talks to
serve's control socket, a Unix socket in the abstract namespace, so it must
run in serve's network namespace, as root or serve's own user. Under
systemd: ExecReload=cellgate reload --pid $MAINPID. (kill -HUP PID reloads
too, without waiting or a verdict.) 2 is bad arguments.
`

// defaultReloadWait is how long reload waits for serve's verdict unless
// --timeout says otherwise: a reload imports each new fork route's app,
// for up to a minute each (sandbox.DefaultPreloadStart).
const defaultReloadWait = 5 * time.Minute

func reloadMain(ctx context.Context, args []string, std stdio) int {
	fs := flag.NewFlagSet("cellgate reload", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var pid int
	fs.Var((*intFlag)(&pid), "pid", "") // its errors say a number is wanted
	timeout := defaultReloadWait
	fs.Var((*durationFlag)(&timeout), "timeout", "") // its errors say what a duration is
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(std.out, reloadUsage)
			return exitOK
		}
		fmt.Fprintf(std.err, "cellgate reload: %v\n%s", err, reloadUsage)
		return exitUsage
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(std.err, "cellgate reload: unexpected argument %q\n%s", fs.Arg(0), reloadUsage)
		return exitUsage
	case pid <= 0:
		fmt.Fprintf(std.err, "cellgate reload: --pid %d: want the pid of cellgate serve (under systemd: --pid $MAINPID)\n", pid)
		return exitUsage
	case timeout <= 0:
		fmt.Fprintf(std.err, "cellgate reload: --timeout %s: want a positive duration\n", timeout)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	verdict, err := askReload(ctx, pid)
	if err != nil {
		fmt.Fprintf(std.err, "cellgate reload: %v\n", err)
		return exitInvalid
	}
	if rest, ok := strings.CutPrefix(verdict, "ok "); ok {
		fmt.Fprintln(std.out, rest)
		return exitOK
	}
	fmt.Fprintf(std.err, "cellgate reload: pid %d: %s\n", pid, strings.TrimPrefix(verdict, "failed "))
	return exitInvalid
}

// askReload sends the reload request to pid's control socket and returns
// serve's answer line ("ok ..." or "failed ...").
func askReload(ctx context.Context, pid int) (string, error) {
	addr := controlAddress(pid)
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", addr)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("no cellgate serve of pid %d listens on %s (fix: give serve's pid, such as systemctl show -p MainPID --value cellgate prints; "+
				"only for a serve of another network namespace, whose socket is not seen here, kill -HUP %d reloads it without waiting)", pid, addr, pid)
		}
		return "", fmt.Errorf("connect to %s: %w", addr, err)
	}
	conn := c.(*net.UnixConn)
	defer conn.Close()
	cred, err := peerCred(conn)
	if err != nil {
		return "", fmt.Errorf("%s: cannot tell who listens: %w", addr, err)
	}
	if int(cred.Pid) != pid {
		return "", fmt.Errorf("%s is held by pid %d, not by %d: not asking it", addr, cred.Pid, pid)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	return exchangeReload(conn, addr, pid)
}

// exchangeReload sends the request on conn and reads the answer line. A
// peer serve refuses is answered and closed at once, maybe before the
// request is written, which then fails (EPIPE): the refusal is still
// there to read, and it, not the broken pipe, is the answer.
func exchangeReload(conn *net.UnixConn, addr string, pid int) (string, error) {
	_, werr := io.WriteString(conn, "reload\n")
	line, err := bufio.NewReaderSize(io.LimitReader(conn, 4096), 4096).ReadString('\n')
	if werr != nil && err != nil {
		return "", fmt.Errorf("%s: %w", addr, werr)
	}
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return "", fmt.Errorf("pid %d did not finish the reload in time (--timeout); it may still apply it", pid)
		}
		return "", fmt.Errorf("pid %d ended the connection without a verdict: %w", pid, err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}
