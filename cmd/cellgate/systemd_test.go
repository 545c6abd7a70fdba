package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hangGuard bounds every wait of these tests for something the daemon
// must do; reaching it is a failure, never a measured time.
const hangGuard = 60 * time.Second

// notifySocket is a fake systemd NOTIFY_SOCKET: every datagram the daemon
// sends, as its lines.
type notifySocket struct {
	path string
	got  chan []string
}

func newNotifySocket(t *testing.T, dir string) *notifySocket {
	t.Helper()
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("notify socket: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	n := &notifySocket{path: path, got: make(chan []string, 256)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				close(n.got)
				return
			}
			n.got <- strings.Split(string(buf[:k]), "\n")
		}
	}()
	return n
}

// expect waits for a datagram with the line want (and returns it),
// skipping others; STATUS= and WATCHDOG=1 come at any time.
func (n *notifySocket) expect(t *testing.T, want string) []string {
	t.Helper()
	timeout := time.After(hangGuard)
	for {
		select {
		case lines, ok := <-n.got:
			if !ok {
				t.Fatalf("notify socket closed before %q", want)
			}
			for _, l := range lines {
				if l == want {
					return lines
				}
			}
		case <-timeout:
			t.Fatalf("no %q from the daemon within %s", want, hangGuard)
		}
	}
}

// field returns the value of KEY= in a datagram's lines.
func field(lines []string, key string) string {
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return v
		}
	}
	return ""
}

// activatedServe starts the test binary as `cellgate serve` with the
// listeners passed as systemd passes sockets (fds 3 and up, LISTEN_FDS,
// LISTEN_FDNAMES) and NOTIFY_SOCKET set.
func activatedServe(t *testing.T, policy string, ns *notifySocket, names string, extraEnv []string, files ...*os.File) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "serve", "--policy", policy, "--isolation", "none",
		"--listen", "127.0.0.1:1", "--admin", "127.0.0.1:2", "--access-log", "stderr", "--drain-timeout", "30s")
	cmd.Env = append(os.Environ(), asCellgate+"=1", "NOTIFY_SOCKET="+ns.path,
		"LISTEN_FDS="+strconv.Itoa(len(files)), "LISTEN_FDNAMES="+names)
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.ExtraFiles = files
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, &out
}

// stop sends SIGTERM, expects STOPPING=1 and a clean exit.
func stop(t *testing.T, cmd *exec.Cmd, ns *notifySocket, out *bytes.Buffer) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	lines := ns.expect(t, "STOPPING=1")
	if !strings.HasPrefix(field(lines, "STATUS"), "draining") {
		t.Errorf("STOPPING=1 came with STATUS=%q, want draining...", field(lines, "STATUS"))
	}
	// activatedServe's --drain-timeout 30s, and the teardown.
	if got, want := field(lines, "EXTEND_TIMEOUT_USEC"), strconv.FormatInt((30*time.Second+stopTeardown).Microseconds(), 10); got != want {
		t.Errorf("STOPPING=1 came with EXTEND_TIMEOUT_USEC=%q, want %s (the drain timeout and the teardown)", got, want)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("serve exited: %v\n%s", err, out)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: hangGuard}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func listenerFile(t *testing.T) (net.Listener, *os.File) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); f.Close() })
	return ln, f
}

// TestServeUnderSystemd plays systemd around serve: the public and admin
// sockets are passed by name (socket activation), and the daemon reports
// READY=1 when it serves, RELOADING=1 with MONOTONIC_USEC then READY=1
// around each SIGHUP (with the verdict in STATUS=), STOPPING=1 on SIGTERM,
// and WATCHDOG=1 when WATCHDOG_USEC asks for it. Then it restarts the
// daemon on the same sockets, as systemd does with cellgate.socket: a
// request sent while no daemon runs waits in the socket's backlog and is
// answered by the next one.
func TestServeUnderSystemd(t *testing.T) {
	dir, script, policy := helloPolicy(t)
	ns := newNotifySocket(t, dir)
	pub, pubFile := listenerFile(t)
	adm, admFile := listenerFile(t)
	pubURL, admURL := "http://"+pub.Addr().String(), "http://"+adm.Addr().String()

	cmd, out := activatedServe(t, policy, ns, "public:admin", nil, pubFile, admFile)
	if lines := ns.expect(t, "READY=1"); !strings.HasPrefix(field(lines, "STATUS"), "serving: 0 cells in flight") {
		t.Errorf("READY=1 came with STATUS=%q", field(lines, "STATUS"))
	}
	if code, body := get(t, pubURL+"/hello"); code != 200 || body != "hello /hello\n" {
		t.Fatalf("GET /hello on the activated public socket: %d %q\n%s", code, body, out)
	}
	if code, body := get(t, admURL+"/readyz"); code != 200 {
		t.Fatalf("GET /readyz on the activated admin socket: %d %q", code, body)
	}

	// An invalid policy: RELOADING=1, then READY=1 saying it was refused.
	writeFile(t, policy, "version: 1\nroutes: [{name: x, nonsense: 1}]\n")
	reloadAndExpect(t, cmd, ns, "reload failed, still serving the previous policy")
	if code, _ := get(t, pubURL+"/hello"); code != 200 {
		t.Fatalf("GET /hello after a refused reload: %d", code)
	}
	// A valid one: the new route serves.
	writeFile(t, policy, strings.Join([]string{"version: 1", systemdPolicyBody("hi", script)}, "\n"))
	reloadAndExpect(t, cmd, ns, "policy reloaded")
	if code, body := get(t, pubURL+"/hi"); code != 200 || body != "hello /hi\n" {
		t.Fatalf("GET /hi after the reload: %d %q", code, body)
	}
	stop(t, cmd, ns, out)

	// No daemon now, but the sockets stay open: this request waits.
	answered := make(chan string, 1)
	go func() {
		resp, err := (&http.Client{Timeout: hangGuard}).Get(pubURL + "/hi")
		if err != nil {
			answered <- err.Error()
			return
		}
		resp.Body.Close()
		answered <- resp.Status
	}()
	cmd, out = activatedServe(t, policy, ns, "public:admin", []string{"WATCHDOG_USEC=100000"}, pubFile, admFile)
	ns.expect(t, "READY=1")
	if got := <-answered; got != "200 OK" {
		t.Fatalf("request sent between two daemons on the same sockets: %s\n%s", got, out)
	}
	ns.expect(t, "WATCHDOG=1")
	stop(t, cmd, ns, out)
}

// helloPolicy writes a hello script into a new directory and a policy
// serving it at /hello.
func helloPolicy(t *testing.T) (dir, script, policy string) {
	t.Helper()
	dir = t.TempDir()
	script = filepath.Join(dir, "hello.sh")
	writeFile(t, script, "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nhello %s\\n' \"$SCRIPT_NAME\"\n")
	if err := os.Chmod(script, 0o755); err != nil {
		t.Fatal(err)
	}
	policy = filepath.Join(dir, "policy.yaml")
	writeFile(t, policy, strings.Join([]string{"version: 1", systemdPolicyBody("hello", script)}, "\n"))
	return dir, script, policy
}

// systemdPolicyBody is a policy (without its version line) whose one
// route serves /name with script.
func systemdPolicyBody(name, script string) string {
	return "tenants:\n  - {name: web, memory: 256Mi, queue: 10, queue_timeout: 60s}\nroutes:\n" +
		"  - {name: " + name + ", match: {path: /" + name + "}, tenant: web, program: " + script + "}\n"
}

var monotonicUsec = regexp.MustCompile(`^[1-9][0-9]*$`)

// reloadAndExpect sends SIGHUP and expects RELOADING=1 with
// MONOTONIC_USEC, then READY=1 whose STATUS= has verdict.
func reloadAndExpect(t *testing.T, cmd *exec.Cmd, ns *notifySocket, verdict string) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	lines := ns.expect(t, "RELOADING=1")
	if v := field(lines, "MONOTONIC_USEC"); !monotonicUsec.MatchString(v) {
		t.Errorf("RELOADING=1 came with MONOTONIC_USEC=%q, want microseconds of CLOCK_MONOTONIC", v)
	}
	lines = ns.expect(t, "READY=1")
	if s := field(lines, "STATUS"); !strings.Contains(s, verdict) {
		t.Errorf("READY=1 after the reload came with STATUS=%q, want it to say %q", s, verdict)
	}
}

// TestOpenListeners: inherited sockets are taken by name, a kind not
// passed is listened on from its flag, and a socket of another name or
// one that is not a listener is refused with the fix.
func TestOpenListeners(t *testing.T) {
	cfg := &serveConfig{Listen: "127.0.0.1:0", Admin: "127.0.0.1:0",
		origin: map[string]string{"listen": "--listen=127.0.0.1:0", "admin": "--admin=127.0.0.1:0"}}
	named := func(t *testing.T, f *os.File, name string) *os.File {
		t.Helper()
		fd, err := syscall.Dup(int(f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		return os.NewFile(uintptr(fd), name)
	}
	t.Run("public passed, admin listened on", func(t *testing.T) {
		pub, f := listenerFile(t)
		l, err := openListeners(cfg, []*os.File{named(t, f, "public")})
		if err != nil {
			t.Fatal(err)
		}
		defer l.close()
		if len(l.public) != 1 || l.public[0].Addr().String() != pub.Addr().String() {
			t.Errorf("public = %v, want the passed socket %s", l.public, pub.Addr())
		}
		if len(l.admin) != 1 || l.admin[0].Addr().String() == pub.Addr().String() {
			t.Errorf("admin = %v, want a socket of its own from --admin", l.admin)
		}
	})
	t.Run("nothing passed", func(t *testing.T) {
		l, err := openListeners(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.close()
		if len(l.public) != 1 || len(l.admin) != 1 || len(l.activated) != 0 {
			t.Errorf("public %v admin %v activated %v, want one of each from the flags, none activated", l.public, l.admin, l.activated)
		}
	})
	t.Run("unknown name", func(t *testing.T) {
		_, f := listenerFile(t)
		_, err := openListeners(cfg, []*os.File{named(t, f, "cellgate.socket")})
		if err == nil || !strings.Contains(err.Error(), `"cellgate.socket"`) || !strings.Contains(err.Error(), "FileDescriptorName=") {
			t.Errorf("err = %v, want it to name the socket and FileDescriptorName=", err)
		}
	})
	t.Run("not a listener", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		_, err = openListeners(cfg, []*os.File{named(t, r, "public")})
		r.Close()
		if err == nil || !strings.Contains(err.Error(), "not a listening stream socket") {
			t.Errorf("err = %v, want not a listening stream socket", err)
		}
	})
}

// TestNotifierOff: without NOTIFY_SOCKET nothing is sent and nothing
// fails.
func TestNotifierOff(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := newNotifier(slog.New(slog.DiscardHandler))
	n.ready("x")
	n.reloading()
	n.stopping("x", time.Second, time.Second)
	stop := make(chan struct{})
	close(stop)
	n.run(stop, func() string { return "" })
	if n.failed.Load() {
		t.Error("a send failed without NOTIFY_SOCKET")
	}
}

// TestOneLine: a multi-line reload error cannot inject another KEY=value
// into a notification, and STATUS= stays bounded.
func TestOneLine(t *testing.T) {
	if got := oneLine("a\nREADY=1"); strings.Contains(got, "\n") {
		t.Errorf("oneLine kept a newline: %q", got)
	}
	if got := oneLine(strings.Repeat("x", 10*maxStatus)); len(got) > maxStatus+3 {
		t.Errorf("oneLine of %d bytes is %d bytes, want at most %d", 10*maxStatus, len(got), maxStatus+3)
	}
}

// TestReloadStatusHidesPolicyValues: a refused reload's STATUS=, which any
// local user reads with systemctl status, says that the reload failed and
// where the reason is, without the reason, which quotes the policy's
// values (an env value holding a password); the log and the control
// socket's answer (the returned error) keep it whole. STATUS= had the
// whole error before.
func TestReloadStatusHidesPolicyValues(t *testing.T) {
	const secret = "hunter2-s3cret"
	d, path := testDaemon(t, reloadPolicyA)
	var logged bytes.Buffer
	d.log = slog.New(slog.NewTextHandler(&logged, nil))
	ns := newNotifySocket(t, t.TempDir())
	t.Setenv("NOTIFY_SOCKET", ns.path)
	n := newNotifier(d.log)

	writeFile(t, path, "version: 1\nroutes:\n  - {name: hello, match: {path: /hello}, program: /bin/true, env: {DB_PASSWORD: \""+secret+"\\0\"}}\n")
	err := d.reloadNotified(context.Background(), n)
	if err == nil || !strings.Contains(err.Error(), secret) {
		t.Fatalf("reload of an invalid policy: %v, want the problem with its value (the control socket's answer)", err)
	}
	if !strings.Contains(logged.String(), secret) {
		t.Errorf("the log lacks the problem's value: %s", logged.String())
	}
	status := field(ns.expect(t, "READY=1"), "STATUS")
	want := "reload failed, still serving the previous policy: " + path + " is invalid; the reason is in the journal (or run cellgate check " + path + ")"
	if strings.Contains(status, secret) || !strings.HasSuffix(status, want) {
		t.Errorf("STATUS=%q, want it to end in %q and not to quote the policy", status, want)
	}
}
