package sandbox

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/bits"
	"sync"
)

// UIDRange is the block of uids the Runner hands out, one per cell in
// flight: [First, First+Count).
//
// Why one uid per cell: the kernel lets a process signal (kill(2), including
// kill(-1, ...)), ptrace, or read /proc/PID/environ of another process only
// when their uids match (or it has CAP_KILL / CAP_SYS_PTRACE). Distinct uids
// therefore fence cells off from each other and from the root daemon without
// a PID namespace. A uid returns to the free set only once its cell is empty,
// so no process of an earlier cell can still run under it. uids are handed out
// round-robin, so a uid is reused as late as possible (files a worker left in
// a world-writable directory stay owned by a uid nobody runs under for as
// long as possible).
//
// The range must belong to cellgate alone: no account in /etc/passwd, no
// /etc/subuid block of a user, no container's id map may overlap it.
type UIDRange struct {
	First uint32
	Count uint32
}

// DefaultUIDRange is 2,000,000,000-2,000,065,535: one 65536-uid block above
// every range that Debian's useradd (/etc/subuid blocks counted up from
// 100000), systemd (dynamic users 61184-65519, nspawn's container blocks
// 524288-1879048191) and the nobody uid (65534) use, and below 2^31 so
// that no tool sees it as a negative number.
var DefaultUIDRange = UIDRange{First: 2_000_000_000, Count: 65536}

// DefaultGID is the shared group every cell's uid runs with, so that the
// application's files can be made readable to all cells (chgrp, mode 0640)
// without being readable to the world. It is the range's first uid number
// used as a gid; configure it to a real group of the host as needed.
const DefaultGID = 2_000_000_000

// Validate checks that the range is usable for unprivileged workers.
func (r UIDRange) Validate() error {
	switch {
	case r.Count == 0:
		return fmt.Errorf("uid range %s: empty", r)
	case r.First == 0:
		return fmt.Errorf("uid range %s: includes root (uid 0)", r)
	case uint64(r.First)+uint64(r.Count)-1 > math.MaxInt32:
		return fmt.Errorf("uid range %s: goes past %d (uids above it read as negative in many tools)", r, math.MaxInt32)
	case r.First <= 65534 && 65534 < r.First+r.Count:
		return fmt.Errorf("uid range %s: includes nobody (65534), which other services run as", r)
	}
	return nil
}

// String formats the range as "first-last".
func (r UIDRange) String() string {
	if r.Count == 0 {
		return fmt.Sprintf("%d-(empty)", r.First)
	}
	return fmt.Sprintf("%d-%d", r.First, uint64(r.First)+uint64(r.Count)-1)
}

// uidPool hands out the uids of a range, round-robin, at most once each
// until released.
type uidPool struct {
	mu    sync.Mutex
	r     UIDRange
	used  []uint64 // bit i set: uid r.First+i is in use
	next  uint32   // index where the next search starts
	inUse uint32
}

func newUIDPool(r UIDRange) *uidPool {
	return &uidPool{r: r, used: make([]uint64, (uint64(r.Count)+63)/64)}
}

// acquire returns a uid no cell in flight has, or ErrNoUID.
func (p *uidPool) acquire() (uint32, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	u, err := p.take(p.next)
	if err == nil {
		p.next = u - p.r.First + 1
		if p.next == p.r.Count {
			p.next = 0
		}
	}
	return u, err
}

// acquireNear returns the free uid at index i of the range, or the first
// free one after it (wrapping), leaving the round-robin position alone.
func (p *uidPool) acquireNear(i uint32) (uint32, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.take(i % p.r.Count)
}

// take marks the first free uid at or after index i (wrapping) in use.
func (p *uidPool) take(i uint32) (uint32, error) {
	if p.inUse == p.r.Count {
		return 0, fmt.Errorf("acquire uid from %s: all %d in use: %w", p.r, p.r.Count, ErrNoUID)
	}
	for {
		w := i / 64
		// Free bits of this word at or after i.
		free := ^p.used[w] &^ (1<<(i%64) - 1)
		if end := p.r.Count - w*64; end < 64 {
			free &= 1<<end - 1
		}
		if free != 0 {
			i = w*64 + uint32(bits.TrailingZeros64(free))
			break
		}
		i = (w + 1) * 64
		if i >= p.r.Count {
			i = 0
		}
	}
	p.used[i/64] |= 1 << (i % 64)
	p.inUse++
	return p.r.First + i, nil
}

// release returns uid to the free set. Call it only when no process runs
// under uid any more (its cell is empty).
func (p *uidPool) release(uid uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if uid < p.r.First || uid-p.r.First >= p.r.Count {
		panic(fmt.Sprintf("sandbox: release of uid %d outside range %s", uid, p.r))
	}
	i := uid - p.r.First
	if p.used[i/64]&(1<<(i%64)) == 0 {
		panic(fmt.Sprintf("sandbox: double release of uid %d", uid))
	}
	p.used[i/64] &^= 1 << (i % 64)
	p.inUse--
}

// inFlight returns how many uids are handed out.
func (p *uidPool) inFlight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return int(p.inUse)
}

// ReserveUIDFor takes one uid of the Runner's range out of circulation
// for good, chosen from key: the uid key hashes to (FNV-1a, modulo the
// range), or the next free one where a cell holds it. So a key is given
// the same uid from one start of the daemon to the next, its files
// staying its own, unless another key hashes to it or a cell holds it
// when it is asked for: root of a route's user namespace (serve's
// rootMap), by route name.
func (r *Runner) ReserveUIDFor(key string) (uint32, error) {
	if r.uids == nil {
		return 0, fmt.Errorf("sandbox: reserve a uid for %q: the Runner runs workers as itself (no uid range)", key)
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	u, err := r.uids.acquireNear(h.Sum32())
	if err != nil {
		return 0, fmt.Errorf("reserve a uid for %q: %w", key, err)
	}
	return u, nil
}

// ReserveUIDs takes n uids of the Runner's range out of circulation until
// release is called: a preloader's own uid and its children's (mapped
// into its user namespace), held for the preloader's life. Call release
// only once the preloader and every process of its route group are gone.
func (r *Runner) ReserveUIDs(n int) (uids []uint32, release func(), err error) {
	if r.uids == nil {
		return nil, nil, fmt.Errorf("sandbox: reserve %d uids: the Runner runs workers as itself (no uid range)", n)
	}
	for range n {
		u, err := r.uids.acquire()
		if err != nil {
			for _, u := range uids {
				r.uids.release(u)
			}
			return nil, nil, fmt.Errorf("reserve %d uids for a preloader: %w", n, err)
		}
		uids = append(uids, u)
	}
	return uids, func() {
		for _, u := range uids {
			r.uids.release(u)
		}
	}, nil
}
