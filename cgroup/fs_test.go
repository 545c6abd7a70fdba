package cgroup

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// blockingOps counts its callers and keeps each inside until release is
// closed.
type blockingOps struct {
	inside, most atomic.Int32
	release      chan struct{}
}

func (b *blockingOps) enter() error {
	n := b.inside.Add(1)
	for m := b.most.Load(); n > m && !b.most.CompareAndSwap(m, n); m = b.most.Load() {
	}
	<-b.release
	b.inside.Add(-1)
	return nil
}

func (b *blockingOps) mkdir(string) error { return b.enter() }
func (b *blockingOps) rmdir(string) error { return b.enter() }

func TestBoundedOps(t *testing.T) {
	want := max(2, runtime.GOMAXPROCS(0))
	for _, op := range []string{"mkdir", "rmdir", "both"} {
		t.Run(op, func(t *testing.T) {
			inner := &blockingOps{release: make(chan struct{})}
			ops := newBoundedOps(inner)
			callers := 4 * want
			var arrived atomic.Int32
			var wg sync.WaitGroup
			for i := range callers {
				wg.Go(func() {
					arrived.Add(1)
					if op == "mkdir" || op == "both" && i%2 == 0 {
						ops.mkdir("x")
					} else {
						ops.rmdir("x")
					}
				})
			}
			// Every caller has arrived and the slots are full, so without
			// the bound all would be inside at once.
			for arrived.Load() < int32(callers) || inner.inside.Load() < int32(want) {
				runtime.Gosched()
			}
			close(inner.release)
			wg.Wait()
			if got := inner.most.Load(); got != int32(want) {
				t.Errorf("%d callers: at most %d inside cgroupfs at once, want %d", callers, got, want)
			}
		})
	}
}

// Open bounds whichever directory operations it is given.
func TestOpenBoundsDirOps(t *testing.T) {
	fs := &fakeFS{}
	tr := mustOpenFake(t, fs, fakeRoot(t, "memory", "cpu", "pids"), nil)
	b, ok := tr.ops.(boundedOps)
	if !ok || b.dirOps != dirOps(fs) {
		t.Fatalf("the tree's directory operations are %T, want the given ones bounded", tr.ops)
	}
}
