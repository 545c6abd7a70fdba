package accounting

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cellgate/cellgate/cgroup"
)

// JSONHandler is the access log's handler. Its output is
// slog.NewJSONHandler's, byte for byte; Log's records are encoded straight
// from the Record (appendRecord) rather than through slog's Attr walk,
// which was a tenth of the daemon's CPU per request through serve (the
// Record's two dozen fields each wrapped in an Attr, the cell group
// allocated and walked again). Any other use of the handler (a record of
// another logger, With, WithGroup) goes to the slog handler it wraps,
// whose writes take the same lock: a line is never interleaved.
type JSONHandler struct {
	mu    *sync.Mutex
	w     io.Writer
	inner slog.Handler
}

// NewJSONHandler returns a handler writing JSON lines to w, as
// slog.NewJSONHandler(w, nil) does.
func NewJSONHandler(w io.Writer) *JSONHandler {
	mu := new(sync.Mutex)
	return &JSONHandler{mu: mu, w: w, inner: slog.NewJSONHandler(lockedWriter{mu, w}, nil)}
}

func (h *JSONHandler) Enabled(ctx context.Context, l slog.Level) bool  { return h.inner.Enabled(ctx, l) }
func (h *JSONHandler) Handle(ctx context.Context, r slog.Record) error { return h.inner.Handle(ctx, r) }
func (h *JSONHandler) WithAttrs(as []slog.Attr) slog.Handler           { return h.inner.WithAttrs(as) }
func (h *JSONHandler) WithGroup(name string) slog.Handler              { return h.inner.WithGroup(name) }

// lockedWriter serialises the wrapped slog handler's writes with the
// JSONHandler's own.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// lineBufs holds the buffers records are encoded into; one that grew past
// maxPooledLine (a record with long client strings) is let go.
var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

const maxPooledLine = 16 << 10

// write writes r's line, its time being t, in one Write.
func (h *JSONHandler) write(r *Record, t time.Time) error {
	bp := lineBufs.Get().(*[]byte)
	b := appendRecord((*bp)[:0], r, t)
	h.mu.Lock()
	_, err := h.w.Write(b)
	h.mu.Unlock()
	if cap(b) <= maxPooledLine {
		*bp = b
		lineBufs.Put(bp)
	}
	return err
}

// encodable reports whether appendRecord writes t as slog does: slog
// writes an error in place of a time whose year has not four digits.
func encodable(t time.Time) bool {
	y := t.Year()
	return y >= 0 && y < 10000
}

// appendRecord appends r's access-log line (Log's record, as
// slog.JSONHandler writes it) to b.
func appendRecord(b []byte, r *Record, t time.Time) []byte {
	b = append(b, `{"time":"`...)
	b = t.Round(0).AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"request"`...)
	b = appendString(key(b, "request_id"), r.RequestID)
	b = appendString(key(b, "method"), Clip(r.Method))
	b = appendString(key(b, "host"), Clip(r.Host))
	b = appendString(key(b, "path"), Clip(r.Path))
	b = appendString(key(b, "query"), Clip(r.Query))
	b = appendString(key(b, "proto"), r.Proto)
	b = strconv.AppendInt(key(b, "status"), int64(r.Status), 10)
	b = strconv.AppendInt(key(b, "bytes_in"), r.BytesIn, 10)
	b = strconv.AppendInt(key(b, "bytes_out"), r.BytesOut, 10)
	b = appendString(key(b, "client"), Clip(r.ClientAddr))
	b = appendString(key(b, "user_agent"), Clip(r.UserAgent))
	b = appendString(key(b, "referer"), Clip(r.Referer))
	b = appendString(key(b, "route"), r.Route)
	b = appendString(key(b, "tenant"), r.Tenant)
	b = appendString(key(b, "outcome"), string(r.Outcome))
	b = strconv.AppendInt(key(b, "wait_usec"), usec(r.QueueWait), 10)
	b = strconv.AppendInt(key(b, "duration_usec"), usec(r.Duration), 10)
	if r.Cell {
		b = appendCell(b, r)
	}
	return append(b, "}\n"...)
}

// key appends the separator and name of the next attribute: ,"name":
// (names are plain ASCII, written as slog writes them).
func key(b []byte, name string) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	return append(b, '"', ':')
}

// appendCell appends the "cell" group, as cellGroup makes it.
func appendCell(b []byte, r *Record) []byte {
	u := &r.Usage
	b = append(b, `,"cell":{"wall_usec":`...)
	b = strconv.AppendInt(b, usec(r.Wall), 10)
	if r.Spawn > 0 {
		b = strconv.AppendInt(key(b, "spawn_usec"), usec(r.Spawn), 10)
		b = strconv.AppendInt(key(b, "clone_usec"), usec(r.Clone), 10)
	}
	for _, f := range cellFigures {
		switch {
		case !measured(u.Missing, f.file, f.key):
		case f.field == fOOMKilled:
			b = strconv.AppendBool(key(b, f.name), u.OOMKilled())
		default:
			b = strconv.AppendUint(key(b, f.name), f.value(u), 10)
		}
	}
	b = strconv.AppendInt(key(b, "exit_code"), int64(r.ExitCode), 10)
	if r.Signal != 0 {
		b = strconv.AppendInt(key(b, "signal"), int64(r.Signal), 10)
	}
	b = strconv.AppendUint(key(b, "uid"), uint64(r.UID), 10)
	if len(r.Unenforced) > 0 {
		b = appendStrings(key(b, "unenforced"), r.Unenforced)
	}
	if len(u.Missing) > 0 {
		b = appendStrings(key(b, "missing"), u.Missing)
	}
	return append(b, '}')
}

// appendStrings appends list as slog writes a []string attribute: through
// encoding/json, without HTML escaping.
func appendStrings(b []byte, list []string) []byte {
	b = append(b, '[')
	for i, s := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s, true)
	}
	return append(b, ']')
}

// appendString appends s quoted as slog.JSONHandler quotes a string.
func appendString(b []byte, s string) []byte { return appendJSONString(b, s, false) }

// appendJSONString appends s as a JSON string, escaped as
// log/slog.JSONHandler does (encodingJSON false) or as encoding/json does
// without HTML escaping (true): they differ only in writing \b and \f as
// such rather than as \u0008 and \u000c. Invalid UTF-8 becomes U+FFFD;
// U+2028 and U+2029 are escaped.
func appendJSONString(b []byte, s string, encodingJSON bool) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch {
			case c == '\\' || c == '"':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\b' && encodingJSON:
				b = append(b, '\\', 'b')
			case c == '\f' && encodingJSON:
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[c&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// measured reports whether the figure of file (and key, "" for the whole
// file) was read: neither is in missing (Usage.Missing).
func measured(missing []string, file, key string) bool {
	for _, m := range missing {
		if m == file || (key != "" && len(m) == len(file)+1+len(key) && m[:len(file)] == file && m[len(file)] == ':' && m[len(file)+1:] == key) {
			return false
		}
	}
	return true
}

// cellFigure is a figure of the cell group: its accounting file and key
// (for Usage.Missing), its name and which of the Usage's it is (all
// unsigned but fOOMKilled, a bool).
type cellFigure struct {
	file, key, name string
	field           usageField
}

// usageField selects a figure of a cgroup.Usage (a switch, not a func
// value: a call through a func value makes the Usage, and the Record
// holding it, escape to the heap).
type usageField int

const (
	fCPUUsage usageField = iota
	fCPUUser
	fCPUSystem
	fNrThrottled
	fThrottled
	fMemoryPeak
	fMemoryMax
	fOOMKilled
	fPidsPeak
	fPidsMax
	fIORead
	fIOWrite
)

func (f cellFigure) value(u *cgroup.Usage) uint64 {
	switch f.field {
	case fCPUUsage:
		return u.CPUUsageUsec
	case fCPUUser:
		return u.CPUUserUsec
	case fCPUSystem:
		return u.CPUSystemUsec
	case fNrThrottled:
		return u.NrThrottled
	case fThrottled:
		return u.ThrottledUsec
	case fMemoryPeak:
		return u.MemoryPeak
	case fMemoryMax:
		return u.MemoryMax
	case fPidsPeak:
		return u.PidsPeak
	case fPidsMax:
		return u.PidsMax
	case fIORead:
		return u.IOReadBytes
	case fIOWrite:
		return u.IOWriteBytes
	}
	return 0 // fOOMKilled: a bool, u.OOMKilled
}

// cellFigures are the cell group's figures in their order, both encoders'
// (cellGroup, appendCell).
var cellFigures = []cellFigure{
	{"cpu.stat", "usage_usec", "cpu_usage_usec", fCPUUsage},
	{"cpu.stat", "user_usec", "cpu_user_usec", fCPUUser},
	{"cpu.stat", "system_usec", "cpu_system_usec", fCPUSystem},
	{"cpu.stat", "nr_throttled", "nr_throttled", fNrThrottled},
	{"cpu.stat", "throttled_usec", "throttled_usec", fThrottled},
	{"memory.peak", "", "memory_peak_bytes", fMemoryPeak},
	{"memory.events", "max", "memory_events_max", fMemoryMax},
	{"memory.events", "oom_kill", "oom_killed", fOOMKilled},
	{"pids.peak", "", "pids_peak", fPidsPeak},
	{"pids.events", "max", "pids_events_max", fPidsMax},
	{"io.stat", "", "io_read_bytes", fIORead},
	{"io.stat", "", "io_write_bytes", fIOWrite},
}
