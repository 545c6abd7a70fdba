package sandbox

import "runtime"

// Process starts are bounded. os.StartProcess holds its thread for the
// whole start, in system calls: clone3 with CLONE_VFORK returns only once
// the child has called execve (for a confined cell's init, after the
// kernel made its namespaces: the mount namespace's copy waits for an RCU
// grace period), then a read of the pipe that tells whether the execve
// succeeded. startNoNewPrivs also locks the goroutine to its thread before
// that. While threads are blocked there, the Go runtime starts others to
// run the remaining goroutines, and it never ends a thread once made
// (go.dev/issue/14592): without a bound, the cells of a burst of requests
// each held a thread while starting, and serve kept the threads for the
// rest of its life (BenchmarkGateSlowReaders). Starts beyond the bound
// wait as parked goroutines, before their thread is locked, so they hold
// no thread. The child's exec needs a CPU, so more starts at once than
// CPUs buy little throughput.

// spawnSlots bounds the process starts running at once.
type spawnSlots chan struct{}

// newSpawnSlots bounds starts to n, or to GOMAXPROCS (at least 2) when n
// is 0 or less.
func newSpawnSlots(n int) spawnSlots {
	if n <= 0 {
		n = max(2, runtime.GOMAXPROCS(0))
	}
	return make(spawnSlots, n)
}

// do runs start when a slot is free and frees the slot when it returns.
func (s spawnSlots) do(start func()) {
	s <- struct{}{}
	defer func() { <-s }()
	start()
}
