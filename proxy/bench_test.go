package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// BenchmarkRequestPath measures the front's own work per request (routing,
// CGI environment, stdout pipe, header parsing, spooling, the response,
// the access-log record) with a fake Runner that writes a fixed response:
// run with -benchmem for allocs/op.
func BenchmarkRequestPath(b *testing.B) {
	for _, bc := range []struct {
		name string
		body string
	}{
		{"get", ""},
		{"post-1KiB", strings.Repeat("x", 1024)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			out := "Content-Type: text/plain\nX-App: 1\n\n" + strings.Repeat("y", 512)
			runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
				if spec.Stdin != nil {
					if _, err := io.Copy(io.Discard, spec.Stdin); err != nil {
						return sandbox.Result{}, err
					}
				}
				if _, err := io.WriteString(spec.Stdout, out); err != nil {
					return sandbox.Result{}, err
				}
				return sandbox.Result{Cause: sandbox.CauseOK}, nil
			})
			s, err := New(Config{TempDir: b.TempDir()}, Deps{
				Runner:   runner,
				Router:   staticRouter{&policy.Policy{Routes: []*policy.Route{route("r", "/app", "/bin/app")}}},
				CellSpec: noCellSpec,
			})
			if err != nil {
				b.Fatal(err)
			}
			h := http.HandlerFunc(s.serveHTTP)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				var body io.Reader
				method := "GET"
				if bc.body != "" {
					method, body = "POST", strings.NewReader(bc.body)
				}
				req := httptest.NewRequest(method, "http://example.com/app/x?q=1", body)
				req.Header.Set("User-Agent", "bench")
				req.Header.Set("Accept", "*/*")
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != 200 {
					b.Fatalf("status %d: %s", w.Code, w.Body)
				}
			}
		})
	}
}
