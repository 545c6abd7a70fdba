package main

// serve's part in systemd: the sockets it passes (socket activation,
// LISTEN_FDS named by FileDescriptorName=) and the states serve reports to
// it (sd_notify: READY, RELOADING, STOPPING, STATUS, WATCHDOG). Both come
// from github.com/coreos/go-systemd/v22; outside systemd (no LISTEN_FDS,
// no NOTIFY_SOCKET) nothing here does anything.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cellgate/cellgate/policy"
	"github.com/coreos/go-systemd/v22/activation"
	sd "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// Names of the sockets systemd passes (FileDescriptorName= of the socket
// units, LISTEN_FDNAMES).
const (
	fdNamePublic = "public"
	fdNameAdmin  = "admin"
)

// statusInterval is how often serve refreshes STATUS= (sent only when it
// changed).
const statusInterval = time.Second

// listeners are serve's listening sockets: the public ones (the proxy) and
// the admin ones (/metrics, /healthz, /readyz).
type listeners struct {
	public, admin []net.Listener
	// activated says which came from systemd (by name), for the log.
	activated []string
}

// close closes every listener (a start-up that failed after listening).
func (l *listeners) close() {
	for _, ln := range append(l.public, l.admin...) {
		ln.Close()
	}
}

// inheritedFiles takes the sockets systemd passed to this process
// (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES): it makes them close-on-exec
// and unsets the variables, so that no child inherits either. serve calls
// it first, before anything is spawned (the cgroup probe spawns).
func inheritedFiles() []*os.File { return activation.Files(true) }

// openListeners returns the inherited sockets (inheritedFiles) as
// listeners, and listens itself on --listen and --admin for a kind systemd
// did not pass. A passed socket must be named public or admin.
func openListeners(cfg *serveConfig, inherited []*os.File) (*listeners, error) {
	l := &listeners{}
	var errs []error
	for i, f := range inherited {
		name := f.Name()
		ln, err := net.FileListener(f)
		f.Close() // FileListener holds its own duplicate
		if err != nil {
			errs = append(errs, fmt.Errorf("socket-activated fd %d (%s): not a listening stream socket: %w", 3+i, name, err))
			continue
		}
		switch name {
		case fdNamePublic:
			l.public = append(l.public, ln)
		case fdNameAdmin:
			l.admin = append(l.admin, ln)
		default:
			ln.Close()
			errs = append(errs, fmt.Errorf("socket-activated fd %d is named %q in LISTEN_FDNAMES: want %s or %s "+
				"(set FileDescriptorName= in the .socket unit, as deploy/systemd/cellgate.socket does)", 3+i, name, fdNamePublic, fdNameAdmin))
			continue
		}
		l.activated = append(l.activated, name+"="+ln.Addr().String())
	}
	if len(errs) > 0 {
		l.close()
		return nil, errors.Join(errs...)
	}
	listen := func(flagName, addr string) ([]net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", cfg.origin[flagName], err)
		}
		return []net.Listener{ln}, nil
	}
	var err error
	if len(l.public) == 0 {
		if l.public, err = listen("listen", cfg.Listen); err != nil {
			l.close()
			return nil, err
		}
	}
	if len(l.admin) == 0 {
		if l.admin, err = listen("admin", cfg.Admin); err != nil {
			l.close()
			return nil, err
		}
	}
	return l, nil
}

// notifier sends serve's state to systemd through NOTIFY_SOCKET
// (sd_notify). Without NOTIFY_SOCKET every method does nothing. A failed
// send is logged once, never fatal: systemd not hearing READY=1 fails the
// unit by its own timeout.
type notifier struct {
	log      *slog.Logger
	on       bool
	watchdog time.Duration // WATCHDOG_USEC, 0 = no watchdog
	failed   atomic.Bool   // a send failed (logged once)
}

// newNotifier reads NOTIFY_SOCKET and WATCHDOG_USEC/WATCHDOG_PID from the
// environment (the wiring point may; nothing below cmd does).
func newNotifier(log *slog.Logger) *notifier {
	n := &notifier{log: log, on: os.Getenv("NOTIFY_SOCKET") != ""}
	if !n.on {
		return n
	}
	wd, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog: WATCHDOG_USEC or WATCHDOG_PID is invalid; no watchdog pings will be sent", "err", err)
	}
	n.watchdog = wd
	return n
}

// send sends one notification of one or more KEY=value lines.
func (n *notifier) send(lines ...string) {
	if !n.on {
		return
	}
	if _, err := sd.SdNotify(false, strings.Join(lines, "\n")); err != nil && !n.failed.Swap(true) {
		n.log.Warn("sd_notify to NOTIFY_SOCKET failed; systemd does not see this daemon's state", "socket", os.Getenv("NOTIFY_SOCKET"), "err", err)
	}
}

// ready says serve accepts requests (Type=notify: the start job ends).
func (n *notifier) ready(status string) { n.send(sd.SdNotifyReady, "STATUS="+oneLine(status)) }

// reloading says a reload started. MONOTONIC_USEC is the time of the
// request, which systemd >= 253 matches against its own reload request.
func (n *notifier) reloading() {
	var ts unix.Timespec
	usec := int64(0)
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err == nil {
		usec = ts.Nano() / 1000
	}
	n.send(sd.SdNotifyReloading, "MONOTONIC_USEC="+strconv.FormatInt(usec, 10), "STATUS=reloading the policy")
}

// stopping says serve started draining (the stop job runs until it
// exits), and asks for the time it may take: the drain (the longest the
// requests in flight may run) and the teardown after it. systemd only
// ever extends its stop timeout by it (EXTEND_TIMEOUT_USEC=, systemd
// 236), so the unit's TimeoutStopSec= stands where it is longer: a
// --drain-timeout raised in /etc/default/cellgate, or many fork routes,
// are no longer cut off by a SIGKILL mid-drain.
func (n *notifier) stopping(status string, drain, teardown time.Duration) {
	n.send(sd.SdNotifyStopping, "EXTEND_TIMEOUT_USEC="+strconv.FormatInt((drain+teardown).Microseconds(), 10), "STATUS="+oneLine(status))
}

// stopTeardown is the teardown's bound without fork routes: every cell
// killed and every group removed (the tree's sweep is bounded at 10 s),
// the pool's removals, the admin server's close.
const stopTeardown = 15 * time.Second

// teardownBound is the teardown's bound: stopTeardown, and for each fork
// route its preloader's stop and its group's removal, one after another
// (forkStopTimeout each).
func (d *daemon) teardownBound() time.Duration {
	d.forkMu.Lock()
	n := len(d.forks)
	d.forkMu.Unlock()
	return stopTeardown + time.Duration(n)*2*forkStopTimeout
}

// status updates the free-text STATUS= that systemctl status shows.
func (n *notifier) status(status string) { n.send("STATUS=" + oneLine(status)) }

// maxStatus bounds STATUS= (a reload error may list many policy problems;
// the log has them all).
const maxStatus = 400

// oneLine makes s one line of at most maxStatus bytes: a newline would
// start another KEY=value of the notification.
func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", "; ")
	if len(s) > maxStatus {
		s = s[:maxStatus] + "..."
	}
	return s
}

// run refreshes STATUS= from status (when it changed) every
// statusInterval, and pings the watchdog (WATCHDOG=1) at half its
// interval, until stop is closed. status takes admission's lock, so a
// deadlocked admission also stops the pings and systemd restarts the
// daemon.
func (n *notifier) run(stop <-chan struct{}, status func() string) {
	if !n.on {
		return
	}
	every := statusInterval
	if n.watchdog > 0 && n.watchdog/2 < every {
		every = n.watchdog / 2
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	last := ""
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		s := status()
		if n.watchdog > 0 {
			n.send(sd.SdNotifyWatchdog)
		}
		if s != last {
			n.status(s)
			last = s
		}
	}
}

// status is serve's one-line state for STATUS=: serving or draining,
// with the cells in flight and the requests queued over all tenants.
func (d *daemon) status() string {
	inFlight, queued := 0, 0
	for _, t := range d.admission.Stats().Tenants {
		inFlight += t.InFlight
		queued += t.Queued
	}
	state := "serving"
	select {
	case <-d.done:
		state = "draining"
	default:
	}
	return fmt.Sprintf("%s: %d cells in flight, %d requests queued", state, inFlight, queued)
}

// reloadNotified is a SIGHUP or a control-socket reload: the reload
// between RELOADING=1 and READY=1, and its verdict in STATUS=. It returns
// the reload's error, which the log (reload) and the control socket's
// answer give whole. The end of ctx abandons it (reload).
func (d *daemon) reloadNotified(ctx context.Context, n *notifier) error {
	n.reloading()
	verdict := "policy reloaded"
	err := d.reload(ctx)
	if err != nil {
		verdict = reloadFailedStatus(d.cfg.Policy, err)
	}
	n.ready(d.status() + "; " + verdict)
	return err
}

// reloadFailedStatus is a failed reload's verdict for STATUS=, which any
// local user reads (systemctl status): what failed and where the reason
// is, never the reason itself, since a policy's errors quote its values
// (an env value holding a password) from a file only root may read.
func reloadFailedStatus(path string, err error) string {
	what := "could not be applied"
	if errors.Is(err, policy.ErrInvalid) {
		what = "is invalid"
	}
	return "reload failed, still serving the previous policy: " + path + " " + what +
		"; the reason is in the journal (or run cellgate check " + path + ")"
}
