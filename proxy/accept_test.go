package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// failingListener fails its first Accepts with errs, in turn, then
// accepts as its listener does.
type failingListener struct {
	net.Listener
	errs chan error
}

func (l *failingListener) Accept() (net.Conn, error) {
	select {
	case err := <-l.errs:
		return nil, err
	default:
		return l.Listener.Accept()
	}
}

// acceptErr is an accept error as Go's net package returns it: a
// connection accept4 refused, or one its poller could not register.
func acceptErr(call string, errno syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError(call, errno)}
}

// TestServeOutlivesConnFailures: an accept error of one connection (the
// poller refused to register it: ENOSPC once the user's epoll watches are
// all taken; accept4's ENOBUFS, EPERM) does not end Serve, which backs
// off and answers the next connection; one that says the listener is
// unusable (EBADF) ends it, as before.
func TestServeOutlivesConnFailures(t *testing.T) {
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		io.WriteString(spec.Stdout, "Content-Type: text/plain\n\nok")
		return fakeResult(sandbox.CauseOK), nil
	})
	s, err := New(Config{TempDir: t.TempDir()}, Deps{Runner: runner, Router: staticRouter{&policy.Policy{Routes: []*policy.Route{route("r", "/", "/x")}}}, CellSpec: noCellSpec})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &failingListener{Listener: inner, errs: make(chan error, 4)}
	ln.errs <- acceptErr("epollctl", syscall.ENOSPC)
	ln.errs <- acceptErr("accept4", syscall.ENOBUFS)
	ln.errs <- acceptErr("accept4", syscall.EPERM)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	resp, err := http.Get("http://" + inner.Addr().String() + "/")
	if err != nil {
		t.Fatalf("GET after three failed accepts: %v (Serve: %v)", err, servedErr(served))
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Fatalf("GET after three failed accepts: %d %q", resp.StatusCode, body)
	}
	ln.errs <- acceptErr("accept4", syscall.EBADF)
	// The listener's error surfaces at the next Accept, which a
	// connection wakes.
	if c, err := net.Dial("tcp", inner.Addr().String()); err == nil {
		defer c.Close()
	}
	select {
	case err := <-served:
		if !errors.Is(err, syscall.EBADF) {
			t.Errorf("Serve after EBADF: %v, want the error", err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("Serve still running 10 s after its listener failed with EBADF")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.Shutdown(ctx)
}

// servedErr is Serve's error if it has returned.
func servedErr(served chan error) error {
	select {
	case err := <-served:
		return err
	default:
		return nil
	}
}

// TestListenerGone: which accept errors are the listener's.
func TestListenerGone(t *testing.T) {
	for _, c := range []struct {
		err  error
		gone bool
	}{
		{net.ErrClosed, true},
		{acceptErr("accept4", syscall.EBADF), true},
		{acceptErr("accept4", syscall.EINVAL), true},
		{acceptErr("accept4", syscall.ENOTSOCK), true},
		{acceptErr("accept4", syscall.EOPNOTSUPP), true},
		{acceptErr("epollctl", syscall.ENOSPC), false},
		{acceptErr("epollctl", syscall.ENOMEM), false},
		{acceptErr("accept4", syscall.ENOBUFS), false},
		{acceptErr("accept4", syscall.EPROTO), false},
		{acceptErr("accept4", syscall.EPERM), false},
	} {
		if got := ListenerGone(c.err); got != c.gone {
			t.Errorf("ListenerGone(%v) = %v, want %v", c.err, got, c.gone)
		}
		var ne net.Error
		temporary := errors.As(ConnFailure(c.err), &ne) && ne.Temporary()
		if temporary == c.gone {
			t.Errorf("ConnFailure(%v) temporary: %v, want %v", c.err, temporary, !c.gone)
		}
		if !errors.Is(ConnFailure(c.err), c.err) {
			t.Errorf("ConnFailure(%v) does not wrap it", c.err)
		}
	}
}
