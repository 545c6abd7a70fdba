package accounting

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Log writes r as one access-log record through logger's handler, at level
// Info with the message "request". The record's time is r.Time (when the
// request arrived). With slog.NewJSONHandler a record reads
//
//	{"time":"…","level":"INFO","msg":"request","request_id":"…","method":"GET",
//	 "path":"/x","status":200,"bytes_in":0,"bytes_out":12,"client":"192.0.2.1:5000",
//	 "route":"api","tenant":"acme","outcome":"ok","wait_usec":200,"duration_usec":13000,
//	 "cell":{"wall_usec":12300,"cpu_usage_usec":4100,"cpu_user_usec":3000,
//	  "cpu_system_usec":1100,"nr_throttled":0,"throttled_usec":0,
//	  "memory_peak_bytes":33554432,"memory_events_max":0,"oom_killed":false,
//	  "pids_peak":1,"pids_events_max":0,"io_read_bytes":0,"io_write_bytes":0,
//	  "exit_code":0,"uid":61000}}
//
// The "cell" group is present only when r.Cell is true; within it "signal"
// appears only when the worker ended on a signal, "unenforced" only when a
// controller was not enforced and "missing" only when an accounting file
// could not be read. Every other key is always present, so the schema is
// stable. Times are integer microseconds, like the kernel's cpu.stat.
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
	rec := slog.NewRecord(t, slog.LevelInfo, "request", 0)
	attrs := [...]slog.Attr{
		slog.String("request_id", r.RequestID),
		slog.String("method", r.Method),
		slog.String("path", r.Path),
		slog.Int("status", r.Status),
		slog.Int64("bytes_in", r.BytesIn),
		slog.Int64("bytes_out", r.BytesOut),
		slog.String("client", r.ClientAddr),
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

// cellGroup is the "cell" group of an access-log record.
func cellGroup(r *Record) slog.Attr {
	u := &r.Usage
	cell := make([]slog.Attr, 0, 18)
	cell = append(cell,
		slog.Int64("wall_usec", usec(r.Wall)),
		slog.Uint64("cpu_usage_usec", u.CPUUsageUsec),
		slog.Uint64("cpu_user_usec", u.CPUUserUsec),
		slog.Uint64("cpu_system_usec", u.CPUSystemUsec),
		slog.Uint64("nr_throttled", u.NrThrottled),
		slog.Uint64("throttled_usec", u.ThrottledUsec),
		slog.Uint64("memory_peak_bytes", u.MemoryPeak),
		slog.Uint64("memory_events_max", u.MemoryMax),
		slog.Bool("oom_killed", u.OOMKilled()),
		slog.Uint64("pids_peak", u.PidsPeak),
		slog.Uint64("pids_events_max", u.PidsMax),
		slog.Uint64("io_read_bytes", u.IOReadBytes),
		slog.Uint64("io_write_bytes", u.IOWriteBytes),
		slog.Int("exit_code", r.ExitCode),
	)
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
