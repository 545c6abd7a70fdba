package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cellgate/cellgate/confine"
)

// stuckSpawner says hello as a spawner does (its pid, errno 0: one
// message of 8 bytes on the SOCK_SEQPACKET socket), then never reads a
// request. dd writes the hello in one write: bash's printf flushes at
// each newline byte, and a pid whose second byte is 10 (2560-2815) was
// sent as two messages, which the daemon rightly took for no hello.
const stuckSpawner = `#!/bin/bash
pid=$$
printf -v hello '\\x%02x\\x%02x\\x%02x\\x%02x\\x00\\x00\\x00\\x00' $((pid & 255)) $(((pid >> 8) & 255)) $(((pid >> 16) & 255)) $(((pid >> 24) & 255))
printf "$hello" | dd bs=8 count=1 iflag=fullblock status=none >&3
exec sleep 600
`

// TestSpawnerStuck: requests sent to a spawner that stopped answering
// fail within the bound, as sent (an init may have been cloned), and
// none blocks; a spawner that answered no request before it ended is not
// started again at once (the daemon starts inits meanwhile); close
// returns.
func TestSpawnerStuck(t *testing.T) {
	if _, err := os.Stat("/bin/bash"); err != nil {
		t.Skip("no /bin/bash for the fake spawner")
	}
	path := filepath.Join(t.TempDir(), "spawner")
	if err := os.WriteFile(path, []byte(stuckSpawner), 0o755); err != nil {
		t.Fatal(err)
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	l, err := confine.OpenLauncher(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := newInitSpawner(l, devNull, false, nil)
	s.stuck = 500 * time.Millisecond
	var wg sync.WaitGroup
	errs := make([]error, 20)
	sent := make([]bool, 20)
	for i := range errs {
		wg.Go(func() { _, sent[i], errs[i] = s.spawn(0, 0, []int{int(devNull.Fd())}) })
	}
	// A hang guard, not a timing: that none blocked behind another is
	// that all were sent (to the one spawner, before it was ended: a
	// request after that is not sent, below).
	answered := make(chan struct{})
	go func() { wg.Wait(); close(answered) }()
	select {
	case <-answered:
	case <-time.After(time.Minute):
		t.Fatal("the requests to a stuck spawner did not return within a minute")
	}
	for i, err := range errs {
		if !errors.Is(err, errSpawnerGone) || !sent[i] {
			t.Errorf("request %d to a stuck spawner: sent %v, %v; want sent and errSpawnerGone", i, sent[i], err)
		}
	}
	// It never answered: no new spawner for a while, nothing sent.
	if _, sent, err := s.spawn(0, 0, []int{int(devNull.Fd())}); !errors.Is(err, errSpawnerGone) || sent {
		t.Errorf("a request after a spawner that never answered: sent %v, %v; want not sent, errSpawnerGone", sent, err)
	}
	done := make(chan struct{})
	go func() { s.close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("close did not return")
	}
}
