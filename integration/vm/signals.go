package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Signals reach the guest's program over a second serial port: qemu
// serves it on a Unix socket on the host (ControlSocket), the guest's
// /init reads it as /dev/ttyS1 (GuestControlTTY) and signals the program.
// So `make run`'s Ctrl-C becomes cellgate's drain, and SIGHUP its reload,
// instead of the VM being killed under it.
const (
	GuestControlTTY = "/dev/ttyS1"
	controlPrefix   = "vmrun-signal "
)

// ForwardedSignals are the signals the runner passes to the guest's
// program once the guest lives. A second SIGINT or SIGTERM kills the VM.
var ForwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}

// controlLine is what the host writes to forward sig.
func controlLine(sig syscall.Signal) string {
	return controlPrefix + strconv.Itoa(int(sig)) + "\n"
}

// parseControlLine reads a signal number back from a control line.
func parseControlLine(l string) (syscall.Signal, error) {
	rest, ok := strings.CutPrefix(strings.TrimRight(l, "\r\n"), controlPrefix)
	if !ok {
		return 0, fmt.Errorf("control line %q: no %q prefix", l, controlPrefix)
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n <= 0 || n >= 65 {
		return 0, fmt.Errorf("control line %q: not a signal number", l)
	}
	return syscall.Signal(n), nil
}

// dialControl connects to qemu's control socket, which qemu creates
// shortly after it starts.
func dialControl(path string, within time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(within)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("connect to qemu's control socket %s: %w", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// forwardSignals is the guest side: it reads control lines from r and
// sends each signal to pid, until r ends.
func forwardSignals(r io.Reader, pid int, log io.Writer) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		sig, err := parseControlLine(sc.Text())
		if err != nil {
			continue // line noise on the serial port
		}
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			fmt.Fprintf(log, "vmrun guest: forward %v to pid %d: %v\n", sig, pid, err)
		}
	}
}

// interruptError is why the runner killed the VM on a signal.
type interruptError struct {
	sig os.Signal
	why string
}

func (e *interruptError) Error() string { return fmt.Sprintf("%v%s", e.sig, e.why) }

// forwardToGuest is the host side: it passes each signal to the guest's
// program through qemu's control socket once the guest lives, and kills
// the VM on a signal before that, on a second SIGINT or SIGTERM, or when
// the control socket fails. It returns when the VM ends.
func forwardToGuest(ctx context.Context, killVM context.CancelCauseFunc, control string, guest *StatusFilter, sigs <-chan os.Signal, log io.Writer) {
	var conn net.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	stopping := false
	for {
		var sig os.Signal
		select {
		case <-ctx.Done():
			return
		case sig = <-sigs:
		}
		s, ok := sig.(syscall.Signal)
		switch {
		case !ok:
			killVM(&interruptError{sig, ""})
			return
		case !guest.SawLife():
			killVM(&interruptError{sig, " before the guest started"})
			return
		case stopping && s != syscall.SIGHUP:
			killVM(&interruptError{sig, " a second time"})
			return
		}
		if conn == nil {
			c, err := dialControl(control, 5*time.Second)
			if err != nil {
				killVM(&interruptError{sig, ": " + err.Error()})
				return
			}
			conn = c
		}
		if s == syscall.SIGHUP {
			fmt.Fprintf(log, "vmrun: passing %v to the guest's program\n", sig)
		} else {
			stopping = true
			fmt.Fprintf(log, "vmrun: passing %v to the guest's program; send it again to kill the VM\n", sig)
		}
		if _, err := io.WriteString(conn, controlLine(s)); err != nil {
			killVM(&interruptError{sig, ": write to the control socket: " + err.Error()})
			return
		}
	}
}
