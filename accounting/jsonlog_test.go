package accounting

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// logBoth writes r through JSONHandler and through slog.NewJSONHandler and
// returns both outputs.
func logBoth(t testing.TB, r Record) (fast, want string) {
	t.Helper()
	var a, b bytes.Buffer
	if err := Log(context.Background(), slog.New(NewJSONHandler(&a)), r); err != nil {
		t.Fatal(err)
	}
	if err := Log(context.Background(), slog.New(slog.NewJSONHandler(&b, nil)), r); err != nil {
		t.Fatal(err)
	}
	return a.String(), b.String()
}

// awkward are strings that JSON escapes or that slog and encoding/json
// quote apart.
var awkward = []string{
	"", "plain", `quote " and \ backslash`, "\x00\x01\x07\b\f\n\r\t\x1b\x1f\x7f",
	"<script>&amp;</script>", "caf\u00e9 \u4e16\u754c \U0001f600", "line\u2028sep\u2029para",
	"bad \xff\xfe utf-8 \xc3", "\xed\xa0\x80 surrogate", strings.Repeat("long/", 300),
}

// TestJSONHandlerMatchesSlog: the access log's encoder writes what slog's
// JSON handler writes for the same record, byte for byte: awkward strings
// in every string field, a cell group with each figure missing in turn,
// spawn, signal, unenforced and missing lists, times in other zones.
func TestJSONHandlerMatchesSlog(t *testing.T) {
	check := func(name string, r Record) {
		t.Helper()
		if fast, want := logBoth(t, r); fast != want {
			t.Errorf("%s:\n got %s\nwant %s", name, fast, want)
		}
	}
	base := cellRecord()
	check("the cell record", base)
	plain := base
	plain.Cell = false
	check("no cell", plain)
	for i, s := range awkward {
		r := base
		r.RequestID, r.Method, r.Host, r.Path, r.Query, r.Proto = s, s, s, s, s, s
		r.ClientAddr, r.UserAgent, r.Referer, r.Route, r.Tenant, r.Outcome = s, s, s, s, s, Outcome(s)
		r.Unenforced = []string{s, "memory"}
		r.Usage.Missing = []string{s}
		check("awkward string "+string(rune('a'+i)), r)
	}
	for _, m := range []string{"cpu.stat", "cpu.stat:usage_usec", "cpu.stat:user_usec", "cpu.stat:system_usec",
		"cpu.stat:nr_throttled", "cpu.stat:throttled_usec", "memory.peak", "memory.events", "memory.events:max",
		"memory.events:oom_kill", "pids.peak", "pids.events", "pids.events:max", "io.stat", "cpu.stat:", "memory.eventsx"} {
		r := base
		r.Usage.Missing = []string{m}
		check("missing "+m, r)
	}
	r := base
	r.Spawn, r.Clone, r.Signal, r.ExitCode = 3*time.Millisecond, time.Millisecond, syscall.SIGKILL, -1
	r.QueueWait, r.Duration, r.Wall = -time.Second, 1500*time.Nanosecond, 0
	r.Status, r.BytesIn, r.BytesOut, r.UID = -1, 1<<62, -5, 1<<32-1
	check("spawn, signal, odd numbers", r)
	for _, zone := range []*time.Location{time.FixedZone("x", -(3*3600 + 30*60)), time.FixedZone("y", 5*3600+45*60)} {
		r := base
		r.Time = time.Date(2026, 1, 2, 3, 4, 5, 0, zone)
		check("zone "+zone.String(), r)
	}
	r = base
	r.Time = time.Now() // monotonic reading, which slog strips
	check("now", r)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		r := base
		r.Path = randomString(rng)
		r.Query = randomString(rng)
		r.UserAgent = strings.Repeat(randomString(rng), rng.IntN(300))
		r.Usage.CPUUsageUsec = rng.Uint64()
		r.Usage.OOMKill = rng.Uint64N(2)
		r.Cell = rng.IntN(4) > 0
		check("random "+string(rune('0'+i%10)), r)
	}
}

// randomString is up to 40 bytes of which many need escaping.
func randomString(rng *rand.Rand) string {
	b := make([]byte, rng.IntN(40))
	for i := range b {
		switch rng.IntN(4) {
		case 0:
			b[i] = byte(rng.IntN(0x20))
		case 1:
			b[i] = byte(0x80 + rng.IntN(0x80))
		default:
			b[i] = byte(0x20 + rng.IntN(0x60))
		}
	}
	return string(b)
}

// FuzzJSONHandlerMatchesSlog is TestJSONHandlerMatchesSlog's comparison
// over any string.
func FuzzJSONHandlerMatchesSlog(f *testing.F) {
	for _, s := range awkward {
		f.Add(s)
	}
	base := cellRecord()
	f.Fuzz(func(t *testing.T, s string) {
		r := base
		r.Path, r.UserAgent, r.Unenforced, r.Usage.Missing = s, s, []string{s}, []string{s}
		if fast, want := logBoth(t, r); fast != want {
			t.Errorf("got  %s\nwant %s", fast, want)
		}
		if !json.Valid([]byte(strings.TrimSpace(mustFast(t, r)))) {
			t.Errorf("not JSON: %s", mustFast(t, r))
		}
	})
}

func mustFast(t *testing.T, r Record) string {
	fast, _ := logBoth(t, r)
	return fast
}

// TestJSONHandlerLines: records written at once through the fast path
// and through the wrapped slog handler (another logger's record) are
// whole lines, never interleaved.
func TestJSONHandlerLines(t *testing.T) {
	var out bytes.Buffer
	h := NewJSONHandler(&out)
	logger := slog.New(h)
	other := slog.New(h.WithAttrs([]slog.Attr{slog.String("from", "elsewhere")}))
	r := cellRecord()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				if err := Log(context.Background(), logger, r); err != nil {
					t.Error(err)
				}
				other.Info("note", "k", strings.Repeat("v", 100))
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 8*200*2 {
		t.Fatalf("%d lines, want %d", len(lines), 8*200*2)
	}
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Fatalf("not a JSON line: %q", l)
		}
	}
}
