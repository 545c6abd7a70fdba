package integration

import (
	"io"
	"net"
	"testing"
	"time"
)

// Issue 9, end to end: the front end against hostile clients.

// TestGateSlowReaderCut: a client that reads the first megabyte of a large
// response and then takes nothing more is cut off once it has made no
// progress for --write-timeout: its access-log record says slow_reader, the
// spool file that held its response is freed (cellgate_spool_bytes back to
// zero), and the server closes its connection (cellgate_connections_open
// back to zero) while the client still reads nothing. The waits are
// bounds, not timings.
func TestGateSlowReaderCut(t *testing.T) {
	g := startGate(t, gateOptions{policy: gatePolicy,
		args: []string{"--write-timeout", "2s", "--write-rate-grace", "1s", "--write-min-rate", "64Ki"}})
	c, err := rawConn(t.Context(), g.hostPort(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096) // keep the kernel from taking the response for us
	}
	if _, err := io.WriteString(c, "GET /big?ms=0&bytes=16777216 HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.CopyN(io.Discard, c, 1<<20); err != nil {
		t.Fatalf("read the first MiB of the response: %v", err)
	}
	// Stall: read nothing until the front has given up on the client.
	recs := g.waitRecords("big", 1, 120*time.Second)
	if got := recs[0].Outcome; got != "slow_reader" || recs[0].Status != 200 {
		t.Fatalf("record of the stalled reader: status %d outcome %q, want 200 slow_reader", recs[0].Status, got)
	}
	deadline := time.Now().Add(30 * time.Second)
	for metric(g.metrics(), "cellgate_spool_bytes", map[string]string{"where": "disk"}) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("spool files still hold %v bytes 30s after the reader was cut off",
				metric(g.metrics(), "cellgate_spool_bytes", map[string]string{"where": "disk"}))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The server has closed its end, although the client reads nothing.
	for metric(g.metrics(), "cellgate_connections_open", nil) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("cellgate_connections_open = %v 30s after the reader was cut off, want 0",
				metric(g.metrics(), "cellgate_connections_open", nil))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
