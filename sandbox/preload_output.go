package sandbox

import (
	"bufio"
	"bytes"
	"errors"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// A preloader's own output: what the app prints at import, the preloader's
// messages, and a child's output before it has put the request's stderr on
// its fds 1 and 2. The preloader runs the tenant's code, so its fds 1 and 2
// are the write end of a pipe of its own, never a descriptor of the
// daemon's: with the daemon's stderr it could write raw lines shaped like
// the daemon's records (or journald's <N> prefixes), without limit, and,
// were that stderr a regular file, ftruncate the daemon's log. cellgate
// reads the pipe and logs each line as a record of its own (route, the
// preloader's pid, source=preloader), the line a quoted attribute.
//
// Bounds, per preloader instance: a line is cut at outputLineMax bytes
// (the record says truncated, the rest of the line is discarded as it is
// read); outputBurst lines at once, then outputRate a second; at most
// outputQueue lines wait for the logger. A line over a bound is dropped
// and counted, and the count is logged every outputNoteEvery and when the
// output ends. The pipe is always read at once: the preloader never waits
// on cellgate's log. A preloader blocked on a full pipe would stop
// answering spawns, so that a slow log (journald throttling, a full disk)
// would become the route's outage; its output is worth less than that.

const (
	// outputLineMax is the longest line logged (proxy's default
	// StderrLimit, what a request's stderr keeps).
	outputLineMax = 4 << 10
	// outputBurst lines are logged at once, then outputRate a second:
	// at most 400 KiB at once and 40 KiB a second per preloader.
	outputBurst = 100
	outputRate  = 10
	// outputQueue lines at most wait for the logger (a slow log).
	outputQueue = 64
	// outputNoteEvery is how often a count of dropped lines is logged
	// while lines are being dropped.
	outputNoteEvery = 10 * time.Second
	// outputGrace is how long the pipe is still read after the preloader
	// has been reaped, for the lines of its last moments. A process that
	// still holds the pipe then (one the app left behind holding a copy)
	// is not waited for: the read end is closed and its writes fail.
	outputGrace = 2 * time.Second
)

// preloadOutput reads one preloader instance's pipe and logs its lines.
type preloadOutput struct {
	r       *os.File
	log     *slog.Logger
	queue   chan outputLine
	dropped atomic.Int64
	// done is closed once the pipe has been read to its end (every
	// holder of the write end gone, or outputGrace after exited) and
	// every line logged.
	done chan struct{}
}

type outputLine struct {
	text string
	cut  bool
}

// readOutput logs what is written to r, the read end of a preloader's
// output pipe, on log (which carries the route and the preloader's pid).
// It owns r.
func readOutput(r *os.File, log *slog.Logger) *preloadOutput {
	o := &preloadOutput{r: r, log: log.With("source", "preloader"), queue: make(chan outputLine, outputQueue), done: make(chan struct{})}
	go o.read()
	go o.write()
	return o
}

// exited says the preloader has been reaped: what is left in the pipe is
// read for up to outputGrace more.
func (o *preloadOutput) exited() {
	o.r.SetReadDeadline(time.Now().Add(outputGrace)) // an error: read has ended
}

// read splits the pipe into lines, cuts and rations them, until the end
// of the stream or the deadline exited set.
func (o *preloadOutput) read() {
	defer close(o.queue)
	defer o.r.Close()
	br := bufio.NewReaderSize(o.r, outputLineMax)
	budget := lineBudget{tokens: outputBurst, last: time.Now()}
	tail := false // discarding the rest of a cut line
	for {
		line, err := br.ReadSlice('\n')
		full := errors.Is(err, bufio.ErrBufferFull)
		switch {
		case tail:
			tail = full
		case len(line) > 0:
			tail = full
			if !budget.take(time.Now()) {
				o.dropped.Add(1)
				break
			}
			select {
			case o.queue <- outputLine{text: string(bytes.TrimSuffix(line, []byte("\n"))), cut: full}:
			default: // the logger is behind
				o.dropped.Add(1)
			}
		}
		if err != nil && !full {
			return
		}
	}
}

// write logs the queued lines, and the count of those dropped.
func (o *preloadOutput) write() {
	defer close(o.done)
	tick := time.NewTicker(outputNoteEvery)
	defer tick.Stop()
	for {
		select {
		case l, ok := <-o.queue:
			if !ok {
				o.noteDropped()
				return
			}
			if l.cut {
				o.log.Info("preloader output", "output", l.text, "truncated", true, "max_line", outputLineMax)
			} else {
				o.log.Info("preloader output", "output", l.text)
			}
		case <-tick.C:
			o.noteDropped()
		}
	}
}

func (o *preloadOutput) noteDropped() {
	if n := o.dropped.Swap(0); n > 0 {
		o.log.Warn("preloader output over its limit: lines dropped", "dropped_lines", n,
			"burst", outputBurst, "lines_per_second", outputRate)
	}
}

// lineBudget is a token bucket of lines: outputBurst at most, refilled at
// outputRate a second.
type lineBudget struct {
	tokens float64
	last   time.Time
}

func (b *lineBudget) take(now time.Time) bool {
	b.tokens = min(outputBurst, b.tokens+now.Sub(b.last).Seconds()*outputRate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
