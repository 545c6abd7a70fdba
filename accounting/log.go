package accounting

import (
	"context"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"
)

// Log writes r as one access-log record through logger's handler, at level
// Info with the message "request". The record's "time" is r.Time, when the
// request arrived; it is written when the response is done, duration_usec
// later (so records are in order of completion, not of their times). With
// slog.NewJSONHandler a record reads
//
//	{"time":"…","level":"INFO","msg":"request","request_id":"…","method":"GET",
//	 "host":"example.com","path":"/x","query":"a=1","proto":"HTTP/1.1",
//	 "status":200,"bytes_in":0,"bytes_out":12,"client":"192.0.2.1:5000",
//	 "user_agent":"curl/8.5.0","referer":"",
//	 "route":"api","tenant":"acme","outcome":"ok","wait_usec":200,"duration_usec":13000,
//	 "cell":{"wall_usec":12300,"cpu_usage_usec":4100,"cpu_user_usec":3000,
//	  "cpu_system_usec":1100,"nr_throttled":0,"throttled_usec":0,
//	  "memory_peak_bytes":33554432,"memory_events_max":0,"oom_killed":false,
//	  "pids_peak":1,"pids_events_max":0,"io_read_bytes":0,"io_write_bytes":0,
//	  "exit_code":0,"uid":61000}}
//
// The "cell" group is present only when r.Cell is true; within it
// "spawn_usec" and "clone_usec" appear only for a fork route (the hand-off
// to the preloader, and the preloader's own part of it), "signal"
// appears only when the worker ended on a signal, "unenforced" only when a
// controller was not enforced and "missing" only when an accounting file
// could not be read; a figure the kernel did not measure (its file or key
// in "missing") is absent, never a 0. Every other key is always present,
// so the schema is stable. Times are integer microseconds, like the
// kernel's cpu.stat. Client-supplied strings (host, query, user_agent,
// referer) are cut at maxClientField bytes.
//
// The error is the handler's (a failed write), wrapped with the request id.
func Log(ctx context.Context, logger *slog.Logger, r Record) error {
	h := logger.Handler()
	if !h.Enabled(ctx, slog.LevelInfo) {
		return nil
	}
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	if jh, ok := h.(*JSONHandler); ok && encodable(t) {
		if err := jh.write(&r, t); err != nil {
			return fmt.Errorf("write access log record for request %q: %w", r.RequestID, err)
		}
		return nil
	}
	return logAttrs(ctx, h, r, t)
}

// logAttrs is Log through any slog handler: r's fields as Attrs. r is a
// copy (its address escapes here, not in Log's path to JSONHandler).
func logAttrs(ctx context.Context, h slog.Handler, r Record, t time.Time) error {
	rec := slog.NewRecord(t, slog.LevelInfo, "request", 0)
	attrs := [...]slog.Attr{
		slog.String("request_id", r.RequestID),
		slog.String("method", Clip(r.Method)),
		slog.String("host", Clip(r.Host)),
		slog.String("path", Clip(r.Path)),
		slog.String("query", Clip(r.Query)),
		slog.String("proto", r.Proto),
		slog.Int("status", r.Status),
		slog.Int64("bytes_in", r.BytesIn),
		slog.Int64("bytes_out", r.BytesOut),
		slog.String("client", Clip(r.ClientAddr)),
		slog.String("user_agent", Clip(r.UserAgent)),
		slog.String("referer", Clip(r.Referer)),
		slog.String("route", r.Route),
		slog.String("tenant", r.Tenant),
		slog.String("outcome", string(r.Outcome)),
		slog.Int64("wait_usec", usec(r.QueueWait)),
		slog.Int64("duration_usec", usec(r.Duration)),
		{}, // the cell group, when there is one
	}
	n := len(attrs) - 1
	if r.Cell {
		attrs[n] = cellGroup(&r)
		n++
	}
	rec.AddAttrs(attrs[:n]...)
	if err := h.Handle(ctx, rec); err != nil {
		return fmt.Errorf("write access log record for request %q: %w", r.RequestID, err)
	}
	return nil
}

// maxClientField bounds each client-supplied string of a record as the
// log writes it: JSON-escaped, where a byte that is not UTF-8 or a
// control character takes six bytes (\ufffd, \u0001). Bounding the bytes
// before that let a path of 12 KiB of 0xff make a line of 90 KiB, which
// journald (LineMax, 48 KiB) and a container runtime's log (16 KiB) split
// into pieces that are not JSON. Seven such fields and the rest of a
// record stay under 16 KiB.
const maxClientField = 1024

// Clip cuts s where its JSON escaping would pass maxClientField bytes,
// at a character's start, marking the cut: for a client-supplied string
// in a log line or /status.
func Clip(s string) string {
	if len(s) <= maxClientField/6 {
		return s // fits however it is escaped
	}
	w := 0
	for i := 0; i < len(s); {
		c, n, cost := s[i], 1, 1
		switch {
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRuneInString(s[i:])
			n, cost = size, size
			if (r == utf8.RuneError && size == 1) || r == '\u2028' || r == '\u2029' {
				cost = 6
			}
		case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t':
			cost = 2
		case c < 0x20 || c == '<' || c == '>' || c == '&':
			cost = 6 // the last three as /status's JSON writes them (\u003c)
		}
		if w+cost > maxClientField {
			return s[:i] + "...(cut)"
		}
		w += cost
		i += n
	}
	return s
}

// cellGroup is the "cell" group of an access-log record. A figure whose
// accounting file or key is in Usage.Missing is left out.
func cellGroup(r *Record) slog.Attr {
	u := &r.Usage
	cell := make([]slog.Attr, 0, 18)
	cell = append(cell, slog.Int64("wall_usec", usec(r.Wall)))
	if r.Spawn > 0 {
		cell = append(cell, slog.Int64("spawn_usec", usec(r.Spawn)), slog.Int64("clone_usec", usec(r.Clone)))
	}
	for _, f := range cellFigures {
		switch {
		case !measured(u.Missing, f.file, f.key):
		case f.field == fOOMKilled:
			cell = append(cell, slog.Bool(f.name, u.OOMKilled()))
		default:
			cell = append(cell, slog.Uint64(f.name, f.value(u)))
		}
	}
	cell = append(cell, slog.Int("exit_code", r.ExitCode))
	if r.Signal != 0 {
		cell = append(cell, slog.Int("signal", int(r.Signal)))
	}
	cell = append(cell, slog.Uint64("uid", uint64(r.UID)))
	if len(r.Unenforced) > 0 {
		cell = append(cell, slog.Any("unenforced", r.Unenforced))
	}
	if len(u.Missing) > 0 {
		cell = append(cell, slog.Any("missing", u.Missing))
	}
	return slog.GroupAttrs("cell", cell...)
}

// usec is d in whole microseconds, never negative.
func usec(d time.Duration) int64 {
	if d < 0 {
		return 0
	}
	return d.Microseconds()
}
