package proxy

import (
	"sync"
	"time"
)

// headPacer paces the reads of request heads that trickle in (a
// slowloris): after headFreeReads reads that left a connection's first
// head incomplete, headListener reads it again only at the pacer's next
// tick. A slowloris is otherwise read as fast as it sends: one byte, one
// wake-up from the netpoller, one read that returns it and one that finds
// nothing more. BenchmarkGateSlowloris's CPU profile of serve under 5,000
// lorises was half that: the reads and the scheduler's wake-ups. Paced,
// the byte or bytes that came since the last tick are waiting when the
// connection is read, so one read takes them, and every paced connection
// is woken by the same tick, not by its own event.
//
// A client whose head comes within a tick, or in a few reads (a lost
// segment resent), is never paced; one that is paced may have its head
// taken up to one tick later than it completed. The tick's timer runs only while some
// connection waits for it.
type headPacer struct {
	every time.Duration

	mu   sync.Mutex
	next chan struct{} // closed at the next tick; nil when none is set
}

// headFreeReads is how many reads of a first head are not paced.
const headFreeReads = 4

// headPace is the tick of the paced reads, and how long a first head is
// awaited before its reads are paced.
const headPace = time.Second

// wait blocks until the next tick.
func (p *headPacer) wait() {
	p.mu.Lock()
	if p.next == nil {
		next := make(chan struct{})
		p.next = next
		time.AfterFunc(p.every, func() {
			p.mu.Lock()
			p.next = nil
			p.mu.Unlock()
			close(next)
		})
	}
	next := p.next
	p.mu.Unlock()
	<-next
}
