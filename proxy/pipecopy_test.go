package proxy

import (
	"context"
	"os"
	"syscall"
	"testing"

	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// A copy of the response pipe's write end that outlives the worker (as in
// another request's clone that has not exec'd yet) does not hold the
// response: once Run has returned, the proxy takes what the pipe holds and
// answers. It used to wait for EOF, time out after 5 s and answer 500.
func TestResponsePipeCopyHeldElsewhere(t *testing.T) {
	for _, mode := range []policy.Response{policy.ResponseSpool, policy.ResponseStream} {
		t.Run(string(mode), func(t *testing.T) {
			held := make(chan int, 1)
			ok := cgiOutput("Content-Type: text/plain\n\nanswered", sandbox.CauseOK)
			runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
				fd, err := syscall.Dup(int(spec.Stdout.(*os.File).Fd()))
				if err != nil {
					return sandbox.Result{}, err
				}
				held <- fd
				return ok(ctx, spec)
			})
			r := route("hello", "/hello", "")
			r.Response = mode
			ts := startServer(t, Config{}, Deps{Runner: runner}, r)
			// Hold the copy until the test ends: longer than any grace.
			t.Cleanup(func() {
				select {
				case fd := <-held:
					syscall.Close(fd)
				default:
				}
			})
			resp, body := do(t, nil, newRequest(t, "GET", ts.URL+"/hello", nil))
			if resp.StatusCode != 200 || body != "answered" {
				t.Errorf("GET /hello: %d %q, want 200 %q", resp.StatusCode, body, "answered")
			}
		})
	}
}
