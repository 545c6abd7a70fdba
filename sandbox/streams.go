package sandbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// streams connects a Spec's stdin, stdout and stderr to the worker. An
// *os.File (or nil: /dev/null) is handed to the worker as it is; any other
// Reader or Writer goes through a pipe and a copying goroutine
// (workerPipe: the worker's end blocking). All fds the parent opens here
// are close-on-exec, so the worker sees only the three it is given, as its
// fds 0, 1 and 2.
type streams struct {
	child      [3]*os.File // fds 0, 1 and 2 of the worker
	childEnds  []*os.File  // pipe ends the parent closes once the worker started
	parentEnds []io.Closer // pipe ends the copiers use; closed after the copy
	outputs    []*OutputReader
	copiers    int
	ended      int // copiers whose end was received from done (wait, abort)
	done       chan error
}

// newStreams prepares the worker's standard streams. devNull is an open
// read-write /dev/null.
func newStreams(spec *Spec, devNull *os.File) (*streams, error) {
	s := &streams{done: make(chan error, 3)}
	fail := func(err error) (*streams, error) {
		s.closeAll()
		return nil, err
	}
	switch in := spec.Stdin.(type) {
	case nil:
		s.child[0] = devNull
	case *os.File:
		s.child[0] = in
	default:
		pr, pw, _, err := workerPipe(true)
		if err != nil {
			return fail(fmt.Errorf("stdin pipe: %w", err))
		}
		s.child[0] = pr
		s.childEnds = append(s.childEnds, pr)
		s.parentEnds = append(s.parentEnds, pw)
		s.copiers++
		go func() {
			_, err := io.Copy(pw, in)
			pw.Close()
			// A worker that does not read all of its input is not an error
			// (EPIPE); neither is the parent closing the pipe at the end.
			if errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrClosed) {
				err = nil
			}
			if err != nil {
				err = fmt.Errorf("copy stdin: %w", err)
			}
			s.done <- err
		}()
	}
	if spec.Stdout != nil && sameWriter(spec.Stdout, spec.Stderr) {
		f, err := s.output("stdout+stderr", spec.Stdout, devNull)
		if err != nil {
			return fail(err)
		}
		s.child[1], s.child[2] = f, f
		return s, nil
	}
	var err error
	if s.child[1], err = s.output("stdout", spec.Stdout, devNull); err != nil {
		return fail(err)
	}
	if s.child[2], err = s.output("stderr", spec.Stderr, devNull); err != nil {
		return fail(err)
	}
	return s, nil
}

// output returns the worker's end for w.
func (s *streams) output(name string, w io.Writer, devNull *os.File) (*os.File, error) {
	switch w := w.(type) {
	case nil:
		return devNull, nil
	case *os.File:
		return w, nil
	}
	pr, pw, err := OutputPipe()
	if err != nil {
		return nil, fmt.Errorf("%s pipe: %w", name, err)
	}
	s.childEnds = append(s.childEnds, pw)
	s.parentEnds = append(s.parentEnds, pr)
	s.outputs = append(s.outputs, pr)
	s.copiers++
	go func() {
		_, err := io.Copy(w, pr)
		pr.Close()
		if err != nil {
			err = fmt.Errorf("copy %s: %w", name, err)
		}
		s.done <- err
	}()
	return pw, nil
}

// started closes the parent's copies of the worker's pipe ends, so that the
// copiers see EOF once every process of the cell has exited.
func (s *streams) started() {
	for _, f := range s.childEnds {
		f.Close()
	}
	s.childEnds = nil
}

// wait waits for the copiers, at most grace. Call it once the cell is empty:
// then no worker (or daemon it left) can write any more, and the output
// copies end as soon as what the pipes hold is drained, even while a copy
// of a write end is still held elsewhere (outpipe.go). When they do not
// (a Writer that blocks), wait closes the parent's pipe ends, which ends any
// copy blocked on the pipe, and reports ErrStreams. A copier blocked inside
// the caller's own Reader or Writer cannot be interrupted; it ends when that
// call returns.
func (s *streams) wait(grace time.Duration) error {
	if s.copiers == 0 {
		return nil
	}
	for _, o := range s.outputs {
		o.WritersGone()
	}
	errs, left := s.collect(grace)
	if left > 0 {
		for _, f := range s.parentEnds {
			f.Close()
		}
		return fmt.Errorf("%w: %d of %d copies unfinished %s after the cell emptied", ErrStreams, left, s.copiers, grace)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrStreams, err)
	}
	return nil
}

// closeAll closes every pipe end; for a failed start.
func (s *streams) closeAll() {
	s.started()
	for _, f := range s.parentEnds {
		f.Close()
	}
}

// collect receives the ends of the copiers not yet received (by an
// earlier collect), for at most grace, and returns their errors and how
// many had not ended by then.
func (s *streams) collect(grace time.Duration) (errs []error, left int) {
	if s.ended == s.copiers {
		return nil, 0
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	for s.ended < s.copiers {
		select {
		case err := <-s.done:
			s.ended++
			errs = append(errs, err)
		case <-timer.C:
			return errs, s.copiers - s.ended
		}
	}
	return errs, 0
}

// abort is closeAll for a start that failed (with failed) before anything
// of the request ran, which may be run again (runOnceMore): the retry
// rewinds the stdin and hands the same Reader and Writers to copiers of
// its own, so abort waits, at most grace, for every copier of this
// attempt to end: the stdin's no longer moves the Reader's offset, and an
// output's no longer calls into its Writer (a bytes.Buffer's ReadFrom
// changes the buffer even when the pipe gives nothing). Closing the pipes
// ends a copy blocked on them; one blocked in the caller's Reader or
// Writer ends when that call returns. It returns failed, marked
// errCopiersLeft when a copier had not ended by then: the request must
// not run again. The copiers' own errors are those of pipes closed under
// them.
func (s *streams) abort(failed error, grace time.Duration) error {
	s.closeAll()
	if _, left := s.collect(grace); left > 0 {
		return fmt.Errorf("%w (%w)", failed, errCopiersLeft)
	}
	return failed
}

// errCopiersLeft marks a failed start whose stream copiers had not all
// ended (streams.abort): the request is not run again, since a second
// attempt's copiers would share the request's Reader and Writers with
// them.
var errCopiersLeft = errors.New("the request's stream copies had not ended: not run again")

// sameWriter reports whether a and b are the same Writer, without panicking
// on writers of uncomparable types (as os/exec does).
func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}
