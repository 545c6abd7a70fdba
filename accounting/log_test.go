package accounting

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/cgroup"
)

// cellRecord is a request that ran in a cell, with every field set to a
// distinct value so a field written under the wrong key is caught.
func cellRecord() Record {
	return Record{
		Time:       time.Date(2026, 11, 23, 2, 55, 0, 123456000, time.UTC),
		RequestID:  "req-1",
		Method:     "POST",
		Host:       "api.example.com",
		Path:       "/api/upload",
		Query:      "a=1&b=two",
		Proto:      "HTTP/1.1",
		UserAgent:  "curl/8.5.0",
		Referer:    "https://example.com/form",
		Status:     200,
		BytesIn:    1000,
		BytesOut:   2000,
		ClientAddr: "192.0.2.7:40000",
		Route:      "api",
		Tenant:     "acme",
		Outcome:    OutcomeOK,
		QueueWait:  200 * time.Microsecond,
		Duration:   13500 * time.Microsecond,
		Cell:       true,
		Wall:       12300 * time.Microsecond,
		Usage: cgroup.Usage{
			CPUUsageUsec:  4100,
			CPUUserUsec:   3000,
			CPUSystemUsec: 1100,
			NrThrottled:   3,
			ThrottledUsec: 700,
			MemoryPeak:    33554432,
			MemoryMax:     2,
			PidsPeak:      4,
			PidsMax:       5,
			IOReadBytes:   6,
			IOWriteBytes:  7,
		},
		ExitCode: 0,
		UID:      61000,
	}
}

// logJSON writes r through a JSON handler and decodes the one line written.
func logJSON(t testing.TB, r Record) map[string]any {
	t.Helper()
	var buf bytes.Buffer
	if err := Log(context.Background(), slog.New(slog.NewJSONHandler(&buf, nil)), r); err != nil {
		t.Fatalf("Log: %v", err)
	}
	if n := bytes.Count(buf.Bytes(), []byte("\n")); n != 1 {
		t.Fatalf("Log wrote %d lines, want 1: %s", n, buf.Bytes())
	}
	dec := json.NewDecoder(&buf)
	dec.UseNumber()
	var got map[string]any
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("decode %q: %v", buf.String(), err)
	}
	return got
}

func TestLogFields(t *testing.T) {
	top := func(r Record) map[string]any {
		return map[string]any{
			"time":          r.Time.Format(time.RFC3339Nano),
			"level":         "INFO",
			"msg":           "request",
			"request_id":    r.RequestID,
			"method":        r.Method,
			"host":          r.Host,
			"path":          r.Path,
			"query":         r.Query,
			"proto":         r.Proto,
			"user_agent":    r.UserAgent,
			"referer":       r.Referer,
			"status":        json.Number(itoa(int64(r.Status))),
			"bytes_in":      json.Number(itoa(r.BytesIn)),
			"bytes_out":     json.Number(itoa(r.BytesOut)),
			"client":        r.ClientAddr,
			"route":         r.Route,
			"tenant":        r.Tenant,
			"outcome":       string(r.Outcome),
			"wait_usec":     json.Number(itoa(r.QueueWait.Microseconds())),
			"duration_usec": json.Number(itoa(r.Duration.Microseconds())),
		}
	}
	cell := func() map[string]any {
		return map[string]any{
			"wall_usec":         json.Number("12300"),
			"cpu_usage_usec":    json.Number("4100"),
			"cpu_user_usec":     json.Number("3000"),
			"cpu_system_usec":   json.Number("1100"),
			"nr_throttled":      json.Number("3"),
			"throttled_usec":    json.Number("700"),
			"memory_peak_bytes": json.Number("33554432"),
			"memory_events_max": json.Number("2"),
			"oom_killed":        false,
			"pids_peak":         json.Number("4"),
			"pids_events_max":   json.Number("5"),
			"io_read_bytes":     json.Number("6"),
			"io_write_bytes":    json.Number("7"),
			"exit_code":         json.Number("0"),
			"uid":               json.Number("61000"),
		}
	}

	tests := []struct {
		name string
		rec  func() Record
		want func(r Record) map[string]any
	}{
		{
			name: "cell ok",
			rec:  cellRecord,
			want: func(r Record) map[string]any {
				m := top(r)
				m["cell"] = cell()
				return m
			},
		},
		{
			name: "oom killed by signal, unenforced and missing",
			rec: func() Record {
				r := cellRecord()
				r.Status = 502
				r.Outcome = OutcomeOOM
				r.ExitCode = -1
				r.Signal = syscall.SIGKILL
				r.Usage.OOMKill = 2
				r.Usage.OOMGroupKill = 1
				r.Usage.Missing = []string{"pids.peak"}
				r.Unenforced = []string{"memory", "pids"}
				return r
			},
			want: func(r Record) map[string]any {
				m := top(r)
				c := cell()
				c["oom_killed"] = true
				c["exit_code"] = json.Number("-1")
				c["signal"] = json.Number("9")
				c["unenforced"] = []any{"memory", "pids"}
				c["missing"] = []any{"pids.peak"}
				delete(c, "pids_peak")
				m["cell"] = c
				return m
			},
		},
		{
			name: "unmeasured figures are absent, not 0",
			rec: func() Record {
				r := cellRecord()
				r.Usage.MemoryPeak, r.Usage.NrThrottled, r.Usage.ThrottledUsec, r.Usage.IOReadBytes, r.Usage.IOWriteBytes = 0, 0, 0, 0, 0
				r.Usage.MemoryMax = 0
				r.Usage.Missing = []string{"cpu.stat:nr_throttled", "cpu.stat:throttled_usec", "memory.peak", "memory.events", "io.stat"}
				return r
			},
			want: func(r Record) map[string]any {
				m := top(r)
				c := cell()
				for _, k := range []string{"nr_throttled", "throttled_usec", "memory_peak_bytes", "memory_events_max", "oom_killed", "io_read_bytes", "io_write_bytes"} {
					delete(c, k)
				}
				c["missing"] = []any{"cpu.stat:nr_throttled", "cpu.stat:throttled_usec", "memory.peak", "memory.events", "io.stat"}
				m["cell"] = c
				return m
			},
		},
		{
			name: "client strings are cut",
			rec: func() Record {
				r := cellRecord()
				r.UserAgent = strings.Repeat("u", 5000)
				return r
			},
			want: func(r Record) map[string]any {
				m := top(r)
				m["user_agent"] = strings.Repeat("u", maxClientField) + "...(cut)"
				m["cell"] = cell()
				return m
			},
		},
		{
			name: "front-end outcome without a cell",
			rec: func() Record {
				return Record{
					Time:       time.Date(2026, 11, 23, 3, 0, 0, 0, time.UTC),
					RequestID:  "req-2",
					Method:     "GET",
					Path:       "/nowhere",
					Status:     404,
					ClientAddr: "[2001:db8::1]:5000",
					Outcome:    OutcomeNoRoute,
					Duration:   time.Millisecond,
				}
			},
			want: top,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.rec()
			got := logJSON(t, r)
			want := tt.want(r)
			for _, k := range slices.Sorted(maps.Keys(want)) {
				if !jsonEqual(got[k], want[k]) {
					t.Errorf("%s = %#v, want %#v", k, got[k], want[k])
				}
			}
			for _, k := range slices.Sorted(maps.Keys(got)) {
				if _, ok := want[k]; !ok {
					t.Errorf("unexpected key %s = %#v", k, got[k])
				}
			}
		})
	}
}

func TestLogZeroTimeIsNow(t *testing.T) {
	r := cellRecord()
	r.Time = time.Time{}
	before := time.Now()
	got := logJSON(t, r)
	ts, err := time.Parse(time.RFC3339Nano, got["time"].(string))
	if err != nil {
		t.Fatalf("parse time %v: %v", got["time"], err)
	}
	if ts.Before(before.Truncate(time.Millisecond)) {
		t.Errorf("time = %v, want the time of writing (not before %v)", ts, before)
	}
}

func TestLogDisabledWritesNothing(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := Log(context.Background(), logger, cellRecord()); err != nil {
		t.Fatalf("Log: %v", err)
	}
	if buf.Len() != 0 {
		t.Errorf("Log wrote %q with Info disabled", buf.String())
	}
}

type failingWriter struct{}

var errDiskFull = errors.New("disk full")

func (failingWriter) Write([]byte) (int, error) { return 0, errDiskFull }

func TestLogWriteError(t *testing.T) {
	err := Log(context.Background(), slog.New(slog.NewJSONHandler(failingWriter{}, nil)), cellRecord())
	if !errors.Is(err, errDiskFull) {
		t.Fatalf("Log error = %v, want one wrapping %v", err, errDiskFull)
	}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// jsonEqual compares decoded JSON values.
func jsonEqual(a, b any) bool {
	switch a := a.(type) {
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, v := range a {
			if !jsonEqual(v, b[k]) {
				return false
			}
		}
		return true
	case []any:
		b, ok := b.([]any)
		return ok && slices.EqualFunc(a, b, jsonEqual)
	default:
		return a == b
	}
}

// A fork request's hand-off is in its cell group; a cgi request has none.
func TestLogForkHandOff(t *testing.T) {
	r := cellRecord()
	cell := logJSON(t, r)["cell"].(map[string]any)
	if _, ok := cell["spawn_usec"]; ok {
		t.Errorf("a cgi record has spawn_usec: %v", cell)
	}
	r.Spawn, r.Clone = 2500*time.Microsecond, 1800*time.Microsecond
	cell = logJSON(t, r)["cell"].(map[string]any)
	if cell["spawn_usec"] != json.Number("2500") || cell["clone_usec"] != json.Number("1800") {
		t.Errorf("fork record: spawn_usec %v, clone_usec %v, want 2500 and 1800", cell["spawn_usec"], cell["clone_usec"])
	}
}

// TestClipEscaped: a client's string is cut where its JSON escaping, not
// its bytes, passes maxClientField, at a character's start.
func TestClipEscaped(t *testing.T) {
	for _, tt := range []struct {
		name, in, want string
	}{
		{"short", "abc", "abc"},
		{"plain, at the bound", strings.Repeat("a", maxClientField), strings.Repeat("a", maxClientField)},
		{"plain, over", strings.Repeat("a", maxClientField+1), strings.Repeat("a", maxClientField) + "...(cut)"},
		{"not UTF-8: six bytes each", strings.Repeat("\xff", 200), strings.Repeat("\xff", maxClientField/6) + "...(cut)"},
		{"control characters", strings.Repeat("\x01", 200), strings.Repeat("\x01", maxClientField/6) + "...(cut)"},
		{"quotes", strings.Repeat(`"`, 600), strings.Repeat(`"`, maxClientField/2) + "...(cut)"},
		// As /status's JSON escapes them (encoding/json's HTML escaping).
		{"angle brackets", strings.Repeat("<", 200), strings.Repeat("<", maxClientField/6) + "...(cut)"},
		{"no rune split", "a" + strings.Repeat("é", 600), "a" + strings.Repeat("é", (maxClientField-1)/2) + "...(cut)"},
	} {
		if got := Clip(tt.in); got != tt.want {
			t.Errorf("%s: Clip = %q (%d bytes), want %d bytes", tt.name, got, len(got), len(tt.want))
		}
	}
}

// TestLogLineBounded: a record whose every client-supplied field is as
// hostile as the request head allows (bytes that are not UTF-8, six
// bytes each once escaped) makes one line of valid JSON under 16 KiB, the
// smallest a log collector splits at (a container runtime's). Before, a
// path of 12 KiB of 0xff made a line of 90 KiB.
func TestLogLineBounded(t *testing.T) {
	hostile := strings.Repeat("\xff", 12000)
	r := cellRecord()
	r.Method, r.Host, r.Path, r.Query, r.ClientAddr, r.UserAgent, r.Referer = hostile, hostile, "/"+hostile, hostile, hostile, hostile, hostile
	for _, h := range []struct {
		name string
		new  func(io.Writer) slog.Handler
	}{
		{"JSONHandler", func(w io.Writer) slog.Handler { return NewJSONHandler(w) }},
		{"slog.JSONHandler", func(w io.Writer) slog.Handler { return slog.NewJSONHandler(w, nil) }},
	} {
		var out bytes.Buffer
		if err := Log(context.Background(), slog.New(h.new(&out)), r); err != nil {
			t.Fatal(err)
		}
		line := out.Bytes()
		if n := bytes.Count(line, []byte("\n")); n != 1 || len(line) >= 16<<10 || !json.Valid(line) {
			t.Errorf("%s: %d bytes in %d lines, valid JSON %v; want one line under 16 KiB", h.name, len(line), n, json.Valid(line))
		}
	}
}
