package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// runReload runs cellgate reload in this process.
func runReload(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	outF, errF := tempFile(t), tempFile(t)
	code := reloadMain(context.Background(), args, stdio{out: outF, err: errF})
	read := func(f *os.File) string {
		b, err := os.ReadFile(f.Name())
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	return code, read(outF), read(errF)
}

func tempFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestReloadCommand: cellgate reload returns once serve has applied the
// policy (the new route answers the very next request, with no wait), and
// fails with serve's reason when the policy is refused, the previous one
// still serving. A plain SIGHUP gives no such guarantee, which made
// `systemctl reload` return before the reload had happened.
func TestReloadCommand(t *testing.T) {
	dir, script, policy := helloPolicy(t)
	ns := newNotifySocket(t, dir)
	pub, pubFile := listenerFile(t)
	_, admFile := listenerFile(t)
	pubURL := "http://" + pub.Addr().String()
	cmd, out := activatedServe(t, policy, ns, "public:admin", nil, pubFile, admFile)
	ns.expect(t, "READY=1")
	pid := strconv.Itoa(cmd.Process.Pid)

	for i := range 5 {
		name := "r" + strconv.Itoa(i)
		writeFile(t, policy, strings.Join([]string{"version: 1", systemdPolicyBody(name, script)}, "\n"))
		code, stdout, stderr := runReload(t, "--pid", pid)
		if code != 0 || !strings.Contains(stdout, "policy reloaded") {
			t.Fatalf("reload %d: exit %d, stdout %q, stderr %q\n%s", i, code, stdout, stderr, out)
		}
		if code, body := get(t, pubURL+"/"+name); code != 200 || body != "hello /"+name+"\n" {
			t.Fatalf("GET /%s right after cellgate reload returned: %d %q, want the new route", name, code, body)
		}
	}

	writeFile(t, policy, "version: 1\nroutes: [{name: x, nonsense: 1}]\n")
	code, stdout, stderr := runReload(t, "--pid", pid)
	if code != exitInvalid || !strings.Contains(stderr, "still serving the previous policy") || !strings.Contains(stderr, "nonsense") {
		t.Errorf("reload of an invalid policy: exit %d, stdout %q, stderr %q; want 1 with the reason", code, stdout, stderr)
	}
	if code, _ := get(t, pubURL+"/r4"); code != 200 {
		t.Errorf("GET /r4 after a refused reload: %d, want the previous policy serving", code)
	}
	stop(t, cmd, ns, out)
}

// TestReloadRefusals: no serve behind the pid, a socket under the name held
// by another process, and bad arguments.
func TestReloadRefusals(t *testing.T) {
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	other := sleeper.Process.Pid

	code, _, stderr := runReload(t, "--pid", strconv.Itoa(other))
	if code != exitInvalid || !strings.Contains(stderr, "no cellgate serve of pid") {
		t.Errorf("no serve: exit %d, stderr %q", code, stderr)
	}

	// This process takes the name of the sleeper's control socket.
	ln, err := net.Listen("unix", controlAddress(other))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("ok policy reloaded\n"))
			c.Close()
		}
	}()
	code, stdout, stderr := runReload(t, "--pid", strconv.Itoa(other))
	if code != exitInvalid || !strings.Contains(stderr, "held by pid "+strconv.Itoa(os.Getpid())) {
		t.Errorf("an impostor's socket: exit %d, stdout %q, stderr %q; want it refused", code, stdout, stderr)
	}

	for _, args := range [][]string{{}, {"--pid", "0"}, {"--pid", "1", "extra"}, {"--pid", "1", "--timeout", "0s"}} {
		if code, _, stderr := runReload(t, args...); code != exitUsage || stderr == "" {
			t.Errorf("reload %q: exit %d, stderr %q; want 2 with the reason", args, code, stderr)
		}
	}
	// A pid that is no number, and a duration without its unit: what is
	// wanted, not flag's bare "parse error".
	if code, _, stderr := runReload(t, "--pid", "abc"); code != exitUsage || !strings.Contains(stderr, "want a whole number") {
		t.Errorf("--pid abc: %d %q, want exit %d saying a number is wanted", code, stderr, exitUsage)
	}
	if code, _, stderr := runReload(t, "--pid", "1", "--timeout", "5"); code != exitUsage || !strings.Contains(stderr, "want a duration with a unit") {
		t.Errorf("reload --timeout 5: exit %d, stderr %q; want 2, saying what a duration is", code, stderr)
	}
}

// TestControlOutlivesConnFailures: a connection the control socket could
// not accept does not end its loop (reloads went by SIGHUP only after
// it): it accepts again after a pause.
func TestControlOutlivesConnFailures(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &failOnce{Listener: inner, err: enospc}
	stop := make(chan struct{})
	c := &controlServer{ln: ln, log: slog.New(slog.DiscardHandler), stop: stop}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.serve()
	}()
	for deadline := time.Now().Add(10 * time.Second); ln.calls.Load() < 2; time.Sleep(time.Millisecond) {
		select {
		case <-done:
			t.Fatal("the control socket's loop ended after a connection's failure")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the control socket did not accept again within 10 s of a connection's failure")
		}
	}
	c.close()
	close(stop)
	<-done
}

// lockedBuffer is a bytes.Buffer a logger may write to from any goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testControl is a control socket serving on an address of the test's
// own, logging to the returned buffer.
func testControl(t *testing.T, reqs *reloadRequests, done <-chan struct{}) (*controlServer, string, *lockedBuffer) {
	t.Helper()
	addr := "@cellgate-test/" + strconv.Itoa(os.Getpid()) + "/" + t.Name()
	ln, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	logged := &lockedBuffer{}
	stop := make(chan struct{})
	c := &controlServer{ln: ln, log: slog.New(slog.NewTextHandler(logged, nil)), reqs: reqs, stop: stop, done: done, refused: newControlRefused()}
	served := make(chan struct{})
	go func() {
		defer close(served)
		c.serve()
	}()
	t.Cleanup(func() {
		c.close()
		close(stop)
		<-served
	})
	return c, addr, logged
}

// askAt sends a reload request to the control socket at addr and returns
// the answer line. A refused peer's request may meet a connection closed
// already (EPIPE); the answer is read all the same.
func askAt(addr string) (string, error) {
	conn, err := net.Dial("unix", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(hangGuard))
	io.WriteString(conn, "reload\n")
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

// TestControlRefusalsThrottled: the connections of a peer of another uid
// are each refused and counted in cellgate_control_refused_total, and
// logged once a minute at most. Each was logged: any local user could
// fill journald's rate limit for the unit, and the access log (the same
// stream) was dropped with it.
func TestControlRefusalsThrottled(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a peer of another uid needs root to take that uid")
	}
	c, addr, logged := testControl(t, newReloadRequests(), nil)
	const n = 20
	answers := make([]string, n)
	errs := make([]error, n)
	// A thread of its own, whose effective uid only is nobody's (the
	// real and saved uids stay 0): its connections' SO_PEERCRED says
	// 65534. It is not given back to the runtime.
	ran := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if _, _, errno := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), 65534, ^uintptr(0)); errno != 0 {
			ran <- errno
			return
		}
		for i := range n {
			answers[i], errs[i] = askAt(addr)
		}
		ran <- nil
	}()
	if err := <-ran; err != nil {
		t.Fatalf("setresuid: %v", err)
	}
	for i := range n {
		if want := "failed only uid 0 or 0 may reload this daemon"; errs[i] != nil || answers[i] != want {
			t.Fatalf("connection %d of uid 65534: %q, %v; want %q", i, answers[i], errs[i], want)
		}
	}
	if got := testutil.ToFloat64(c.refused); got != n {
		t.Errorf("cellgate_control_refused_total = %v, want %d", got, n)
	}
	if lines := strings.Count(logged.String(), "refused a peer of another uid"); lines != 1 {
		t.Errorf("%d log lines for %d refused connections in a row, want 1:\n%s", lines, n, logged.String())
	}
}

// TestControlDuringShutdown: a reload asked for once serve has started
// shutting down, or waiting for one when it starts, is answered at once
// that the daemon is shutting down. It waited for serve to return, after
// the drain: cellgate reload (systemctl reload) hung for the whole drain.
func TestControlDuringShutdown(t *testing.T) {
	reqs := newReloadRequests() // no loop takes them: it has ended
	done := make(chan struct{})
	_, addr, _ := testControl(t, reqs, done)
	type answer struct {
		line string
		err  error
	}
	waiting := make(chan answer, 1)
	go func() {
		line, err := askAt(addr)
		waiting <- answer{line, err}
	}()
	select {
	case <-reqs.pending: // asked: it waits for a verdict
	case <-time.After(hangGuard):
		t.Fatal("the control socket asked for no reload")
	}
	close(done)
	const want = "failed the daemon is shutting down: it runs no reload any more"
	if a := <-waiting; a.err != nil || a.line != want {
		t.Errorf("a request waiting when the shutdown started: %q, %v; want %q", a.line, a.err, want)
	}
	if line, err := askAt(addr); err != nil || line != want {
		t.Errorf("a request during the shutdown: %q, %v; want %q", line, err, want)
	}
}

// TestReloadRefusalBeforeRequest: serve answers a peer it refuses and
// closes the connection at once, maybe before the client has written its
// request; the client's write then fails (EPIPE), and it reported "broken
// pipe" rather than the refusal waiting to be read.
func TestReloadRefusalBeforeRequest(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	const refusal = "failed only uid 0 or 1000 may reload this daemon"
	if _, err := syscall.Write(fds[1], []byte(refusal+"\n")); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fds[1])
	f := os.NewFile(uintptr(fds[0]), "control")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("a write to the closed peer: %v, want EPIPE (the case under test)", err)
	}
	line, err := exchangeReload(c.(*net.UnixConn), "@control", 1)
	if err != nil || line != refusal {
		t.Errorf("exchangeReload = %q, %v; want the refusal %q", line, err, refusal)
	}
}
