package accounting

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkRequest is the accounting cost of one request: writing its
// access-log record as JSON and observing its metrics.
func BenchmarkRequest(b *testing.B) {
	logger := slog.New(NewJSONHandler(io.Discard))
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatalf("NewMetrics: %v", err)
	}
	r := cellRecord()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := Log(ctx, logger, r); err != nil {
			b.Fatal(err)
		}
		m.ObserveRequest(r)
	}
}

// BenchmarkLog is one access-log record through serve's handler
// (JSONHandler) and through slog's JSON handler, the same bytes.
func BenchmarkLog(b *testing.B) {
	for _, h := range []struct {
		name string
		h    slog.Handler
	}{{"access", NewJSONHandler(io.Discard)}, {"slog", slog.NewJSONHandler(io.Discard, nil)}} {
		b.Run(h.name, func(b *testing.B) {
			logger := slog.New(h.h)
			r := cellRecord()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := Log(ctx, logger, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkObserveRequest(b *testing.B) {
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatalf("NewMetrics: %v", err)
	}
	r := cellRecord()
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveRequest(r)
	}
}

func BenchmarkServerTiming(b *testing.B) {
	r := cellRecord()
	b.ReportAllocs()
	for b.Loop() {
		_ = ServerTiming(r)
	}
}
