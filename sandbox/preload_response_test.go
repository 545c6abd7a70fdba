package sandbox

import (
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"golang.org/x/sys/unix"
)

// lateFailureApp fails, or not, as its query says, before or once its
// response has started; first it writes a partial line to stderr and to
// stdout (its log too), which the child must not lose as it ends.
const lateFailureApp = `
import sys
def app(environ, start_response):
    q = environ.get("QUERY_STRING", "")
    sys.stderr.write("stderr before the failure")
    print("stdout before the failure", end="")
    if q == "raise-first":
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("db connection lost")
    if q == "write-then-raise":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"row 1\n")
        raise RuntimeError("db connection lost")
    start_response("200 OK", [("Content-Type", "text/plain")])
    def rows():
        yield b"row 1\n"
        if q == "raise-later":
            raise RuntimeError("db connection lost")
        if q == "str-later":
            yield "row 2\n"
        yield b"row 2\n"
    return rows()
`

// An app that fails once its response has started (its headers and a
// first chunk out) ends its child as a crash does, by a signal: a cell's
// exit status, whatever it is, passes the response on as whole, so the
// client would get a complete-looking 200 with the rest of the body
// missing. What was written is out first, and so are the traceback and
// what the app wrote to its stderr and stdout. Failing before anything is
// sent still gets wsgiref's 500, from a child that exits 0.
func TestForkAppFailsAfterHeaders(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, lateFailureApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	const head = "Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n"
	for _, c := range []struct {
		name, query string
		cause       Cause
		out, logged string
	}{
		{"exception after the first chunk", "raise-later", CauseSignal, head + "row 1\n", "RuntimeError: db connection lost"},
		{"str after the first chunk", "str-later", CauseSignal, head + "row 1\n", "AssertionError: write() argument must be a bytes instance"},
		{"exception after write()", "write-then-raise", CauseSignal, head + "row 1\n", "RuntimeError: db connection lost"},
		{"exception before the body", "raise-first", CauseOK,
			"Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 59\r\n\r\nA server error occurred.  Please contact the administrator.",
			"RuntimeError: db connection lost"},
		{"whole body", "", CauseOK, head + "row 1\nrow 2\n", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, out, errOut := forkRunEnv(t, r, p, requestEnv("/x", c.query), "")
			if res.Cause != c.cause || (c.cause == CauseSignal && res.Signal != syscall.SIGSEGV) || out != c.out {
				t.Errorf("cause %s (%v), output %q\nwant cause %s (SIGSEGV for a signal), output %q\nstderr %q", res.Cause, res.Signal, out, c.cause, c.out, errOut)
			}
			for _, want := range []string{"stderr before the failure", "stdout before the failure", c.logged} {
				if !strings.Contains(errOut, want) {
					t.Errorf("stderr %q: want %q in it", errOut, want)
				}
			}
		})
	}
}

// So does a child that is the init of a PID namespace of its own, as each
// one is under a user namespace: the kernel spares such a process every
// signal it sends itself, SIGKILL and abort's SIGABRT included. The
// Runner of these tests starts its preloaders without a user namespace,
// so this one is started directly, in one of its own.
func TestForkAppFailsAfterHeadersInPIDNamespace(t *testing.T) {
	st, out, errOut := runPreloadedOnce(t, lateFailureApp, `{"newpid":true}`, requestEnv("/x", "raise-later"))
	if cause := classify(st, "", cgroup.Usage{}); cause != CauseSignal || !strings.HasSuffix(out, "\r\n\r\nrow 1\n") {
		t.Errorf("%s (%s), output %q; want a signal after the first chunk\nstderr %q", cause, st, out, errOut)
	}
	if !strings.Contains(errOut, "RuntimeError: db connection lost") {
		t.Errorf("stderr %q: want the traceback in it", errOut)
	}
}

// runPreloadedOnce starts a preloader of app (module hello) in a user
// namespace of its own, as root there, with setup as its children's
// set-up, and has it serve one request of env; it returns how the child
// ended and what it wrote to its stdout and stderr. The test process is
// the daemon: the child's parent (CLONE_PARENT), which reaps it.
func runPreloadedOnce(t *testing.T, app, setup string, env []string) (exitStatus, string, string) {
	t.Helper()
	cfg := testPreloaderConfig(t, app)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	sock, theirs := fds[0], os.NewFile(uintptr(fds[1]), "preloader-socket")
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	proc, err := os.StartProcess(cfg.Python, []string{cfg.Python, "-I", "-c", pythonWSGI, cfg.App, cfg.AppDir, setup}, &os.ProcAttr{
		Dir: cfg.AppDir, Env: []string{}, Files: []*os.File{null, os.Stderr, os.Stderr, theirs},
		Sys: &syscall.SysProcAttr{
			Cloneflags:  syscall.CLONE_NEWUSER,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
			Pdeathsig:   syscall.SIGKILL,
		},
	})
	theirs.Close()
	if err != nil {
		unix.Close(sock)
		skipOrFail(t, "no user namespace for the preloader: %v", err)
	}
	t.Cleanup(func() {
		unix.Close(sock) // the end of the stream: the preloader exits
		proc.Wait()
	})
	unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 30})
	buf := make([]byte, maxMessage)
	if n, _, _, _, err := unix.Recvmsg(sock, buf, nil, 0); err != nil {
		t.Fatalf("preloader's first message: %v", err)
	} else if _, err := parseMessage(buf[:n], 0, msgReady); err != nil {
		t.Fatalf("preloader's first message %q: %v", buf[:n], err)
	}

	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	msg, err := spawnMessage(1, -1, env, false, time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Sendmsg(sock, msg, unix.UnixRights(int(null.Fd()), int(outW.Fd()), int(errW.Fd())), nil, 0)
	outW.Close()
	errW.Close()
	if err != nil {
		t.Fatalf("send spawn: %v", err)
	}
	type read struct {
		b   []byte
		err error
	}
	outCh, errCh := make(chan read, 1), make(chan read, 1)
	for _, p := range []struct {
		r  *os.File
		ch chan read
	}{{outR, outCh}, {errR, errCh}} {
		go func() {
			defer p.r.Close()
			b, err := io.ReadAll(p.r)
			p.ch <- read{b, err}
		}()
	}

	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := unix.Recvmsg(sock, buf, oob, 0)
	if err != nil {
		t.Fatalf("answer to the spawn: %v", err)
	}
	got, err := receivedFDs(oob[:oobn])
	if err != nil {
		t.Fatal(err)
	}
	m, err := parseMessage(buf[:n], len(got), msgSpawned, msgError)
	if err != nil || m.Type == msgError {
		closeAll(got)
		t.Fatalf("answer to the spawn %q: %v", buf[:n], err)
	}
	pidfd := got[0]
	defer unix.Close(pidfd)
	var st exitStatus
	for ok := false; !ok; {
		pfd := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 30_000); err != nil && !errors.Is(err, unix.EINTR) {
			t.Fatalf("poll the child's pidfd: %v", err)
		} else if err == nil && pfd[0].Revents == 0 {
			unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
			t.Errorf("the child did not end within 30 s: killed")
		}
		if st, ok, err = waitidNoHang(pidfd); err != nil {
			t.Fatal(err)
		}
	}
	out, errOut := <-outCh, <-errCh
	if out.err != nil || errOut.err != nil {
		t.Fatalf("read the child's output: %v, %v", out.err, errOut.err)
	}
	return st, string(out.b), string(errOut.b)
}

// headerApp puts what its query decodes to where a user's input may end
// up in a response's head, as its path says: a redirect's Location, the
// status's reason, a header's name, or a header added to the app's list
// once it was given to start_response.
const headerApp = `
from urllib.parse import unquote
def app(environ, start_response):
    path, given = environ["PATH_INFO"], unquote(environ.get("QUERY_STRING", ""))
    if path == "/location":
        start_response("302 Found", [("Location", "/login?next=" + given)])
    elif path == "/status":
        start_response("200 " + given, [("Content-Type", "text/plain")])
    elif path == "/name":
        start_response("200 OK", [(given, "1")])
    elif path == "/later":
        headers = [("Content-Type", "text/plain")]
        start_response("200 OK", headers)
        headers.append(("X-Next", given))
    return [b""]
`

// A status or header value holding a control character but HTAB (a CR or
// LF would end its line of the CGI header block and start one of the
// user's making: a Set-Cookie from a redirect's next), a character
// outside latin-1, or a header name that is not an HTTP token is refused
// before any of the head is written: the response is wsgiref's 500, whole,
// and the log names the header. So is such a header added to the app's
// list after start_response, which the handler's Headers share.
func TestForkResponseHeadChecked(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, headerApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	const refused = "Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 59\r\n\r\n" +
		"A server error occurred.  Please contact the administrator."
	for _, c := range []struct {
		name, path, query string
		out, logged       string
	}{
		{"CR LF in a value", "/location", "%2F%0D%0ASet-Cookie:%20session%3Dattacker", refused, "response header 'Location'"},
		{"LF in a value", "/location", "%2F%0ASet-Cookie:%20session%3Dattacker", refused, "response header 'Location'"},
		{"CR in a value", "/location", "%2F%0DSet-Cookie:%20session%3Dattacker", refused, "response header 'Location'"},
		{"NUL in a value", "/location", "%2F%00", refused, "response header 'Location'"},
		{"ESC in a value", "/location", "%2F%1B", refused, "response header 'Location'"},
		{"DEL in a value", "/location", "%2F%7F", refused, "response header 'Location'"},
		{"a value outside latin-1", "/location", "%E2%82%AC", refused, "response header 'Location'"},
		{"CR LF in the status", "/status", "OK%0D%0ASet-Cookie:%20session%3Dattacker", refused, "the response's status"},
		{"a name with a colon", "/name", "Set-Cookie:%20session%3Dattacker%3B%20X", refused, `response header name 'Set-Cookie: session=attacker; X'`},
		{"a name with CR LF", "/name", "X%0D%0ASet-Cookie:%20session%3Dattacker", refused, `response header name 'X\r\nSet-Cookie: session=attacker'`},
		{"a name with a space", "/name", "X%20Y", refused, "response header name 'X Y'"},
		{"an empty name", "/name", "", refused, "response header name ''"},
		{"a header added after start_response", "/later", "a%0D%0ASet-Cookie:%20session%3Dattacker", refused, "response header 'X-Next'"},
		{"HTAB and latin-1 in a value", "/location", "a%09caf%C3%A9",
			"Status: 302 Found\r\nLocation: /login?next=a\tcaf\xe9\r\nContent-Length: 0\r\n\r\n", ""},
		{"a token of every kind of character", "/name", "X-a.b_c~1!%23$%25%26'*%2B^%60|",
			"Status: 200 OK\r\nX-a.b_c~1!#$%&'*+^`|: 1\r\nContent-Length: 0\r\n\r\n", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, out, errOut := forkRunEnv(t, r, p, requestEnv(c.path, c.query), "")
			if res.Cause != CauseOK || out != c.out {
				t.Errorf("cause %s, output %q\nwant cause ok, output %q\nstderr %q", res.Cause, out, c.out, errOut)
			}
			if !strings.Contains(errOut, c.logged) {
				t.Errorf("stderr %q: want %s named in it", errOut, c.logged)
			}
		})
	}
}
