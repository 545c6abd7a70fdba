package sandbox

import (
	"context"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestSpawnSlotsBound(t *testing.T) {
	for _, tc := range []struct {
		name    string
		n, want int
	}{
		{"given", 3, 3},
		{"one", 1, 1},
		{"default", 0, max(2, runtime.GOMAXPROCS(0))},
		{"negative", -1, max(2, runtime.GOMAXPROCS(0))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSpawnSlots(tc.n)
			if cap(s) != tc.want {
				t.Fatalf("newSpawnSlots(%d) has %d slots, want %d", tc.n, cap(s), tc.want)
			}
			// Every caller arrives and stays inside until all have
			// arrived, so without the bound all would be inside at once.
			callers := 4 * tc.want
			var arrived, inside, most atomic.Int32
			release := make(chan struct{})
			var wg sync.WaitGroup
			for range callers {
				wg.Go(func() {
					arrived.Add(1)
					s.do(func() {
						n := inside.Add(1)
						for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
						}
						<-release
						inside.Add(-1)
					})
				})
			}
			for arrived.Load() < int32(callers) || inside.Load() < int32(tc.want) {
				runtime.Gosched()
			}
			close(release)
			wg.Wait()
			if got := most.Load(); got != int32(tc.want) {
				t.Errorf("%d callers: at most %d inside at once, want %d", callers, got, tc.want)
			}
			if len(s) != 0 {
				t.Errorf("%d slots still taken after every caller returned", len(s))
			}
		})
	}
}

// A worker is started only in a free spawn slot.
func TestRunWaitsForSpawnSlot(t *testing.T) {
	sh := "/bin/true"
	if _, err := os.Stat(sh); err != nil {
		t.Skipf("no %s: %v", sh, err)
	}
	r := newTestRunner(t, &fakeCells{})
	for range cap(r.spawns) {
		r.spawns <- struct{}{}
	}
	done := make(chan error, 1)
	go func() {
		_, err := r.Run(context.Background(), Spec{Path: sh, Args: []string{"true"}})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Run returned (%v) while every spawn slot was taken", err)
	case <-time.After(500 * time.Millisecond):
	}
	for range cap(r.spawns) {
		<-r.spawns
	}
	if err := <-done; err != nil {
		t.Fatalf("Run after the slots were freed: %v", err)
	}
}
