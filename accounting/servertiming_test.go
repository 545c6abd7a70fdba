package accounting

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestServerTiming(t *testing.T) {
	tests := []struct {
		name string
		rec  func() Record
		want string
	}{
		{
			name: "cell",
			rec:  cellRecord,
			want: `cell;dur=12.3, cpu;dur=4.1, wait;dur=0.2, mem;desc="33554432"`,
		},
		{
			name: "whole and sub-millisecond figures",
			rec: func() Record {
				r := cellRecord()
				r.Wall = 2 * time.Second
				r.Usage.CPUUsageUsec = 1
				r.QueueWait = 1050 * time.Microsecond
				return r
			},
			want: `cell;dur=2000, cpu;dur=0.001, wait;dur=1.05, mem;desc="33554432"`,
		},
		{
			name: "sub-microsecond durations are truncated",
			rec: func() Record {
				r := cellRecord()
				r.Wall = 999 * time.Nanosecond
				r.QueueWait = 12345678 * time.Nanosecond
				return r
			},
			want: `cell;dur=0, cpu;dur=4.1, wait;dur=12.345, mem;desc="33554432"`,
		},
		{
			name: "a fork route's hand-off",
			rec: func() Record {
				r := cellRecord()
				r.Spawn, r.Clone = 2500*time.Microsecond, 1800*time.Microsecond
				return r
			},
			want: `cell;dur=12.3, cpu;dur=4.1, wait;dur=0.2, spawn;dur=2.5, clone;dur=1.8, mem;desc="33554432"`,
		},
		{
			name: "no memory peak reported",
			rec: func() Record {
				r := cellRecord()
				r.Usage.MemoryPeak = 0
				r.Usage.Missing = []string{"memory.peak"}
				return r
			},
			want: `cell;dur=12.3, cpu;dur=4.1, wait;dur=0.2`,
		},
		{
			name: "no cell",
			rec: func() Record {
				return Record{Outcome: OutcomeQueueTimeout, QueueWait: 5 * time.Second, Wall: time.Second}
			},
			want: `wait;dur=5000`,
		},
		{
			name: "negative wait is zero",
			rec: func() Record {
				return Record{Outcome: OutcomeQueueFull, QueueWait: -time.Second}
			},
			want: `wait;dur=0`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ServerTiming(tt.rec())
			if got != tt.want {
				t.Errorf("ServerTiming = %q, want %q", got, tt.want)
			}
			if err := parseServerTiming(got); err != nil {
				t.Errorf("ServerTiming = %q is not a valid header value: %v", got, err)
			}
		})
	}
}

// TestParseServerTiming checks the validator itself, so that a pass above
// means something.
func TestParseServerTiming(t *testing.T) {
	for _, v := range []string{`a`, `a;dur=1.5`, `a ; dur = 1, b;desc="x \"y\""`, `cache;desc=hit`} {
		if err := parseServerTiming(v); err != nil {
			t.Errorf("parseServerTiming(%q) = %v, want nil", v, err)
		}
	}
	for _, v := range []string{``, `a;`, `a;dur=`, `a;dur=1,`, `a b`, `a;desc="x`, `mem;desc=33 554`, `a;dur=1;`} {
		if err := parseServerTiming(v); err == nil {
			t.Errorf("parseServerTiming(%q) = nil, want an error", v)
		}
	}
}

// parseServerTiming checks v against the Server-Timing grammar
// (https://www.w3.org/TR/server-timing/#the-server-timing-header-field):
//
//	Server-Timing = #server-timing-metric
//	server-timing-metric = metric-name *( OWS ";" OWS server-timing-param )
//	metric-name = token
//	server-timing-param = server-timing-param-name OWS "=" OWS server-timing-param-value
//	server-timing-param-name = token
//	server-timing-param-value = token / quoted-string
//
// It also requires a dur value to be a decimal number, as the spec's
// processing model reads it.
func parseServerTiming(v string) error {
	p := &stParser{s: v}
	for {
		if _, err := p.token(); err != nil {
			return fmt.Errorf("metric name at %d: %w", p.i, err)
		}
		for p.ows(); p.peek(';'); p.ows() {
			p.i++
			p.ows()
			name, err := p.token()
			if err != nil {
				return fmt.Errorf("param name at %d: %w", p.i, err)
			}
			p.ows()
			if !p.peek('=') {
				return fmt.Errorf("param %s at %d: no '='", name, p.i)
			}
			p.i++
			p.ows()
			var val string
			if p.peek('"') {
				val, err = p.quoted()
			} else {
				val, err = p.token()
			}
			if err == nil && strings.EqualFold(name, "dur") && !isDecimal(val) {
				err = fmt.Errorf("dur=%q is not a number", val)
			}
			if err != nil {
				return fmt.Errorf("param %s value at %d: %w", name, p.i, err)
			}
		}
		if p.i == len(p.s) {
			return nil
		}
		if !p.peek(',') {
			return fmt.Errorf("unexpected %q at %d", p.s[p.i], p.i)
		}
		p.i++
		p.ows()
	}
}

type stParser struct {
	s string
	i int
}

func (p *stParser) peek(c byte) bool { return p.i < len(p.s) && p.s[p.i] == c }

func (p *stParser) ows() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *stParser) token() (string, error) {
	start := p.i
	for p.i < len(p.s) && isTchar(p.s[p.i]) {
		p.i++
	}
	if p.i == start {
		return "", fmt.Errorf("empty token")
	}
	return p.s[start:p.i], nil
}

func (p *stParser) quoted() (string, error) {
	p.i++ // opening quote
	var b strings.Builder
	for p.i < len(p.s) {
		c := p.s[p.i]
		p.i++
		switch {
		case c == '"':
			return b.String(), nil
		case c == '\\' && p.i < len(p.s):
			b.WriteByte(p.s[p.i])
			p.i++
		case c == '\t' || c == ' ' || (c >= 0x21 && c != 0x7f):
			b.WriteByte(c)
		default:
			return "", fmt.Errorf("byte %#x in quoted-string", c)
		}
	}
	return "", fmt.Errorf("unterminated quoted-string")
}

// isTchar reports whether c is an RFC 9110 tchar.
func isTchar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func isDecimal(s string) bool {
	digits, dot := 0, false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] >= '0' && s[i] <= '9':
			digits++
		case s[i] == '.' && !dot && digits > 0:
			dot = true
		default:
			return false
		}
	}
	return digits > 0 && s[len(s)-1] != '.'
}
