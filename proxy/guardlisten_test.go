package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// newTestHeadListener is a plain headListener on loopback, closed at the
// end of the test, with the guard the Server puts in front of net/http.
func newTestHeadListener(t *testing.T, timeout time.Duration) *headListener {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	guard := func(c net.Conn) *guardConn {
		return newGuardConn(c, 16<<10, 0, func(ferr *frameError) []byte { return rejection("token", ferr) })
	}
	l := newHeadListener(inner, timeout, prepareHead(guard))
	t.Cleanup(func() { l.Close() })
	return l
}

// acceptOne accepts a connection in the background.
func acceptOne(l net.Listener) <-chan net.Conn {
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	return ch
}

// TestHeadListenerHandsOnCompleteHeads: a connection whose head never
// completes (it ends first, or is still trickling in) is never accepted;
// the one that sends a whole head is, and the server reads that head, and
// the body behind it, from it intact.
func TestHeadListenerHandsOnCompleteHeads(t *testing.T) {
	l := newTestHeadListener(t, time.Minute)
	accepted := acceptOne(l)

	ended := dialFrom(t, "127.0.0.1", l.Addr().String())
	io.WriteString(ended, "GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
	ended.Close()
	trickling := dialFrom(t, "127.0.0.1", l.Addr().String())
	io.WriteString(trickling, "GET /slow HTTP/1.1\r\nHost: x\r\nX-A: ")

	good := dialFrom(t, "127.0.0.1", l.Addr().String())
	// The head in two pieces: it is held until whole.
	io.WriteString(good, "POST /good HTTP/1.1\r\nHost: x\r\n")
	io.WriteString(good, "Content-Length: 5\r\n\r\nhello")

	var c net.Conn
	select {
	case c = <-accepted:
	case <-time.After(30 * time.Second):
		t.Fatal("the connection with a whole head was not accepted in 30s")
	}
	if c == nil {
		t.Fatal("Accept failed")
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		t.Fatalf("read the accepted connection's request: %v", err)
	}
	body, err := io.ReadAll(req.Body)
	if req.URL.Path != "/good" || string(body) != "hello" || err != nil {
		t.Fatalf("accepted connection's request: %s %q (%v), want the whole head of /good and its body", req.URL.Path, body, err)
	}
}

// TestHeadListenerCloseEndsWaiting: a connection still waiting for its
// head is closed when the listener closes, and Accept returns
// net.ErrClosed.
func TestHeadListenerCloseEndsWaiting(t *testing.T) {
	l := newTestHeadListener(t, time.Minute)
	accepted := acceptOne(l)
	c := dialFrom(t, "127.0.0.1", l.Addr().String())
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
	// Wait until the listener holds it, then close the listener.
	for {
		l.mu.Lock()
		n := len(l.pending)
		l.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	l.Close()
	if got, ok := <-accepted; ok {
		t.Fatalf("Accept returned %v after Close, want net.ErrClosed", got.RemoteAddr())
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	// EOF, or a reset: the server closed with the head unread.
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read from the waiting connection after the listener closed: %v, want EOF or a reset", err)
	}
}

// TestHeadListenerTimeout: a connection whose head does not complete
// within the timeout is closed, unanswered.
func TestHeadListenerTimeout(t *testing.T) {
	l := newTestHeadListener(t, 100*time.Millisecond)
	acceptOne(l)
	c := dialFrom(t, "127.0.0.1", l.Addr().String())
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read from a connection past its head timeout: %d bytes, %v; want EOF", n, err)
	}
}

// TestHeadListenerRefusedHead: a refused head is handed on at once, as the
// rejection request, and nothing the client sent after it.
func TestHeadListenerRefusedHead(t *testing.T) {
	l := newTestHeadListener(t, time.Minute)
	accepted := acceptOne(l)
	c := dialFrom(t, "127.0.0.1", l.Addr().String())
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX: y\r\n Transfer-Encoding: chunked\r\n")
	s := <-accepted
	if s == nil {
		t.Fatal("Accept failed")
	}
	defer s.Close()
	s.SetReadDeadline(time.Now().Add(30 * time.Second))
	all, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(all)))
	if err != nil {
		t.Fatalf("read the rejection request: %v", err)
	}
	if _, _, ok := rejectedHead("token", req); !ok {
		t.Fatalf("accepted connection carried %q, want the rejection request", all)
	}
}
