package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// smallSendBuffer is a listener whose connections have a small send
// buffer, so that a client that reads nothing fills it at once.
type smallSendBuffer struct{ net.Listener }

func (l smallSendBuffer) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(*net.TCPConn).SetWriteBuffer(2048)
	}
	return c, err
}

// smallReceiveBuffer dials with a small receive buffer.
var smallReceiveBuffer = net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
	return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024) })
}}

// released waits (a hang guard, not a timing) until s has no handler in
// flight and no connection open.
func released(t *testing.T, s *Server, what string) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); len(s.InFlight()) > 0 || s.ConnStats().Open > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%s: %d handlers in flight and %d connections open 20 s on (write timeout 300ms)", what, len(s.InFlight()), s.ConnStats().Open)
		}
	}
}

// TestWriteStallExpectContinue: a client that pipelines requests with
// "Expect: 100-continue" and reads nothing is cut off at the write
// timeout. Before, net/http's 100 Continue was written under no deadline
// (the handler had cleared the last response's): the write blocked for
// good, and the handler and its connection with it.
func TestWriteStallExpectContinue(t *testing.T) {
	s, err := New(Config{TempDir: t.TempDir(), WriteTimeout: 300 * time.Millisecond, WriteRateGrace: time.Nanosecond, MaxConnsPerIP: -1},
		Deps{Runner: cgiOutput("Status: 204\n\n", sandbox.CauseOK), Router: staticRouter{&policy.Policy{Routes: []*policy.Route{route("all", "/", "/x")}}},
			CellSpec: noCellSpec})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(smallSendBuffer{ln})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	c, err := smallReceiveBuffer.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := []byte("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx")
	for range 2000 {
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write(req); err != nil {
			break // the server stopped reading: its writes are blocked, or it cut the connection
		}
	}
	released(t, s, "a pipeline of Expect: 100-continue requests, nothing read")
}

// TestWriteStallHTTP2: an HTTP/2 client that opens its flow-control
// windows and then stops reading the TCP connection is cut off at the
// write timeout, and its streams' handlers and spools are released.
// Before, HTTP/2's frame writer had no deadline: it blocked for good, and
// so did every stream of the connection (a stream's deadline resets it by
// a frame of the same writer), each holding its spool.
func TestWriteStallHTTP2(t *testing.T) {
	certFile, keyFile, _ := writeCert(t)
	big := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		io.WriteString(spec.Stdout, "Content-Type: application/octet-stream\n\n")
		buf := make([]byte, 1<<20)
		for range 8 {
			if _, err := spec.Stdout.Write(buf); err != nil {
				return sandbox.Result{}, err
			}
		}
		return fakeResult(sandbox.CauseOK), nil
	})
	ts := startServer(t, Config{TLSCertFile: certFile, TLSKeyFile: keyFile,
		WriteMinRate: 64 << 10, WriteTimeout: 300 * time.Millisecond, WriteRateGrace: time.Millisecond, IdleTimeout: 2 * time.Second},
		Deps{Runner: big}, route("all", "/", "/x"))
	c, err := tls.DialWithDialer(&smallReceiveBuffer, "tcp", ts.Addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	fr.WriteWindowUpdate(0, 1<<31-1-65535)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i := range uint32(20) {
		hb.Reset()
		enc.WriteField(hpack.HeaderField{Name: ":method", Value: "GET"})
		enc.WriteField(hpack.HeaderField{Name: ":scheme", Value: "https"})
		enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "x"})
		enc.WriteField(hpack.HeaderField{Name: ":path", Value: "/"})
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1 + 2*i, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			break
		}
	}
	// Reads nothing more.
	released(t, ts.Server, "an HTTP/2 client that stopped reading")
	if st := ts.SpoolStats(); st.Memory != 0 || st.Disk != 0 {
		t.Errorf("spools hold %d bytes in memory and %d on disk after every stream ended", st.Memory, st.Disk)
	}
}
