package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cellgate/cellgate/sandbox"
	"golang.org/x/sys/unix"
)

// BenchmarkCellStart: how soon a request's program starts, in a pooled
// cell with every confinement on (a resident cell, groups: reused, as
// serve runs them), against a bare fork and exec (os/exec) of the same
// program, sequentially. The program (stampELF) writes the monotonic
// clock at its first instruction to its stdout and exits; its start is
// that time less the clock read just before Run or Cmd.Run. The whole
// request's time (to Run's return, to Cmd.Run's) is reported beside it:
// what a cell adds after the program's end (its init's checks and
// report, the daemon's end of the request) is not in the start.
//
// Reported: start-p50-ratio and start-p99-ratio (cell / plain), each
// kind's start p50, and p50-ratio of the whole request.
func BenchmarkCellStart(b *testing.B) {
	stamp := stampBinary(b)
	cellgateBin(b)
	prep := defaultPlan(b, stamp)
	r := newConfinedEnv(b, sandbox.Config{ResidentCells: 1, MountTemplates: true, NetNamespaces: 1, InitSpawner: true})
	var out bytes.Buffer
	spec := sandbox.Spec{Path: stamp, Confine: prep, LateUsage: true, Stdout: &out,
		Profile: benchProfile(b).Reused()}
	r.Warm(spec.Profile, spec.Confine)
	time.Sleep(time.Second) // the first cell set up
	ready := whenReady(r)

	// run runs one request of kind and returns when its program started
	// and when the request ended, both since the clock read before it.
	// The accounting, read after the answer as serve does (LateUsage),
	// is waited for after the request's end is taken.
	run := func(cell bool) (started, ended time.Duration) {
		out.Reset()
		t0 := monotonic(b)
		var end time.Duration
		if cell {
			res, err := r.Run(context.Background(), spec)
			end = monotonic(b)
			if err == nil && res.Cause != sandbox.CauseOK {
				b.Fatalf("cell: cause %s", res.Cause)
			}
			if err != nil {
				b.Fatal(err)
			}
			if err := res.Account(); err != nil {
				b.Fatal(err)
			}
		} else {
			cmd := exec.Command(stamp)
			cmd.Env = []string{}
			cmd.Stdout = &out
			err := cmd.Run()
			end = monotonic(b)
			if err != nil {
				b.Fatal(err)
			}
		}
		if out.Len() != 16 {
			b.Fatalf("the program wrote %d bytes, want its clock's 16", out.Len())
		}
		at := stampAt(out.Bytes())
		if at < t0 || at > end {
			b.Fatalf("the program's clock %v is not within its request's, %v to %v", at, t0, end)
		}
		return at - t0, end - t0
	}
	run(true) // the first request finds the cell the set started with
	ready(1)
	var starts, wholes [2][]time.Duration // plain, cell
	b.ResetTimer()
	for i := range b.N {
		for j := range 2 {
			cell := (i+j)%2 == 1 // each kind first in every other pair
			s, w := run(cell)
			k := 0
			if cell {
				k = 1
				b.StopTimer()
				ready(1) // a pooled cell: its next one is prepared, untimed
				b.StartTimer()
			}
			starts[k] = append(starts[k], s)
			wholes[k] = append(wholes[k], w)
		}
	}
	b.StopTimer()
	q := func(d []time.Duration, f float64) float64 {
		d = slices.Clone(d)
		slices.Sort(d)
		return float64(d[int(f*float64(len(d)-1))])
	}
	b.ReportMetric(q(starts[1], 0.5)/q(starts[0], 0.5), "start-p50-ratio")
	b.ReportMetric(q(starts[1], 0.99)/q(starts[0], 0.99), "start-p99-ratio")
	b.ReportMetric(q(starts[0], 0.5)/1e3, "plain-start-p50-µs")
	b.ReportMetric(q(starts[1], 0.5)/1e3, "cell-start-p50-µs")
	b.ReportMetric(q(wholes[1], 0.5)/q(wholes[0], 0.5), "p50-ratio")
}

// monotonic is CLOCK_MONOTONIC, the clock the stamp program reads.
func monotonic(b testing.TB) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

// stampAt is the clock the stamp program wrote (16 bytes).
func stampAt(out []byte) time.Duration {
	return time.Duration(int64(binary.LittleEndian.Uint64(out))*1e9 + int64(binary.LittleEndian.Uint64(out[8:])))
}

// stampBinary writes the stamp program beside the worker binary, once.
func stampBinary(t testing.TB) string { return elfBinary(t, "stamp", stampELF) }

// stampELF is a static x86-64 program that reads CLOCK_MONOTONIC with
// the clock_gettime system call into 16 bytes below its stack pointer,
// writes them (seconds, nanoseconds: little-endian int64s) to its
// stdout, and exits 0:
//
//	mov eax, 228; mov edi, 1; lea rsi, [rsp-16]; syscall
//	mov eax, 1; mov edi, 1; lea rsi, [rsp-16]; mov edx, 16; syscall
//	mov eax, 60; xor edi, edi; syscall
func stampELF() []byte {
	return staticELF([]byte{
		0xb8, 0xe4, 0x00, 0x00, 0x00, 0xbf, 0x01, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x74, 0x24, 0xf0, 0x0f, 0x05,
		0xb8, 0x01, 0x00, 0x00, 0x00, 0xbf, 0x01, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x74, 0x24, 0xf0, 0xba, 0x10, 0x00, 0x00, 0x00, 0x0f, 0x05,
		0xb8, 0x3c, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05,
	})
}

// TestStampELF: the stamp program BenchmarkCellStart times runs here,
// writes 16 bytes, and its clock lies between the two read around it.
func TestStampELF(t *testing.T) {
	p := filepath.Join(t.TempDir(), "stamp")
	if err := os.WriteFile(p, stampELF(), 0o755); err != nil {
		t.Fatal(err)
	}
	t0 := monotonic(t)
	out, err := exec.Command(p).Output()
	end := monotonic(t)
	if err != nil || len(out) != 16 {
		t.Fatalf("stamp: %v, %d bytes (%x), want 16", err, len(out), out)
	}
	at := stampAt(out)
	if at < t0 || at > end {
		t.Errorf("stamp's clock %v not within %v to %v", at, t0, end)
	}
}
