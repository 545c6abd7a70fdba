package proxy

import (
	"io"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

// TestAwaitHeadPaced (paced from the start): a first head read in a few
// pieces, or a large one read in many reads that each fill the buffer, is
// never paced; one that trickles in a byte at a time is paced before every
// read after the first headFreeReads; either way the whole head, and
// nothing of the next one, is handed on.
func TestAwaitHeadPaced(t *testing.T) {
	head := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	next := "GET /next HTTP/1.1\r\n"
	large := "GET / HTTP/1.1\r\nHost: x\r\nCookie: " + strings.Repeat("c", 12<<10) + "\r\n\r\n"
	for _, tc := range []struct {
		name      string
		head      string
		r         io.Reader
		wantPaces int
	}{
		{"large", large, strings.NewReader(large + next), 0},
		{"whole", head, strings.NewReader(head + next), 0},
		{"in three pieces", head, io.MultiReader(strings.NewReader(head[:5]), strings.NewReader(head[5:20]), strings.NewReader(head[20:]+next)), 0},
		{"a byte at a time", head, iotest.OneByteReader(strings.NewReader(head + next)), len(head) - headFreeReads},
		{"a large one a byte at a time", large, iotest.OneByteReader(strings.NewReader(large + next)), len(large) - headFreeReads},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuardConn(readerConn{r: tc.r}, 16<<10, func(*frameError) []byte { return nil })
			paces := 0
			if err := g.awaitHead(func() { paces++ }, 0); err != nil {
				t.Fatal(err)
			}
			if paces != tc.wantPaces {
				t.Errorf("paced %d times, want %d", paces, tc.wantPaces)
			}
			got := make([]byte, len(tc.head))
			if _, err := io.ReadFull(g, got); err != nil || string(got) != tc.head {
				t.Fatalf("handed on %d bytes (%v), want the head's %d", len(got), err, len(tc.head))
			}
		})
	}
}

// TestHeadPacer: everyone waiting is released by the same tick, and no
// timer is left set once the tick has come.
func TestHeadPacer(t *testing.T) {
	p := &headPacer{every: 10 * time.Millisecond}
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(p.wait)
	}
	wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.next != nil {
		t.Fatal("a tick is still set after every waiter was released")
	}
}
