package proxy

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/cellgate/cellgate/sandbox"
)

func TestForwardedClient(t *testing.T) {
	trusted, err := ParseTrustedProxies("10.0.0.0/8, 192.0.2.1, fd00::/8")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		peer   string
		xff    []string
		client string // "" = not forwarded: the peer is the client
	}{
		{"trusted peer, one client", "10.1.2.3", []string{"203.0.113.9"}, "203.0.113.9"},
		{"untrusted peer is never believed", "198.51.100.7", []string{"203.0.113.9"}, ""},
		{"no header", "10.1.2.3", nil, ""},
		{"forged entries left of the real client", "10.1.2.3", []string{"1.1.1.1, 203.0.113.9"}, "203.0.113.9"},
		{"a chain of trusted proxies", "10.1.2.3", []string{"203.0.113.9, 10.9.9.9", "192.0.2.1"}, "203.0.113.9"},
		{"all trusted", "10.1.2.3", []string{"10.5.5.5"}, ""},
		{"garbage entry", "10.1.2.3", []string{"203.0.113.9, not-an-ip"}, ""},
		{"an address with a zone", "10.1.2.3", []string{"2001:db8::1%evil zone<script>"}, ""},
		{"IPv6 and mapped IPv4", "fd00::1", []string{"::ffff:203.0.113.9"}, "203.0.113.9"},
		{"bare trusted address", "192.0.2.1", []string{"2001:db8::5"}, "2001:db8::5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tt.xff {
				h.Add("X-Forwarded-For", v)
			}
			got, ok := forwardedClient(trusted, netip.MustParseAddr(tt.peer), h)
			if tt.client == "" {
				if ok {
					t.Errorf("client %s, want none", got)
				}
				return
			}
			if !ok || got.String() != tt.client {
				t.Errorf("client %v (%v), want %s", got, ok, tt.client)
			}
		})
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0.0/8,x"} {
		if _, err := ParseTrustedProxies(bad); err == nil {
			t.Errorf("ParseTrustedProxies(%q) accepted", bad)
		}
	}
}

// envOf returns a variable of a worker's environment.
func envOf(env []string, key string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// From a trusted proxy, X-Forwarded-For sets REMOTE_ADDR and the log's
// client, and the per-IP cap counts the forwarded client's requests, not
// the proxy's connections; from anyone else the header changes nothing.
func TestTrustedProxies(t *testing.T) {
	var mu sync.Mutex
	var remote []string
	hold := make(chan struct{})
	held := make(chan struct{}, 4)
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		mu.Lock()
		remote = append(remote, envOf(spec.Env, "REMOTE_ADDR"))
		mu.Unlock()
		if strings.Contains(envOf(spec.Env, "QUERY_STRING"), "hold") {
			held <- struct{}{}
			<-hold
		}
		io.WriteString(spec.Stdout, "Content-Type: text/plain\n\nok")
		return fakeResult(sandbox.CauseOK), nil
	})
	get := func(t *testing.T, ts *testServer, query, xff string) (int, string) {
		t.Helper()
		req := newRequest(t, "GET", ts.URL+"/?"+query, nil)
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		resp, _ := do(t, &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}, req)
		return resp.StatusCode, ts.recs.byID(t, resp.Header.Get("X-Request-Id")).ClientAddr
	}

	t.Run("trusted", func(t *testing.T) {
		trusted, _ := ParseTrustedProxies("127.0.0.0/8")
		ts := startServer(t, Config{TrustedProxies: trusted, MaxConnsPerIP: 1}, Deps{Runner: runner}, route("r", "/", "/x"))
		if status, client := get(t, ts, "", "1.2.3.4, 203.0.113.9"); status != 200 || client != "203.0.113.9" {
			t.Errorf("forwarded: %d, log client %q", status, client)
		}
		mu.Lock()
		if last := remote[len(remote)-1]; last != "203.0.113.9" {
			t.Errorf("REMOTE_ADDR %q", last)
		}
		mu.Unlock()
		// One request of 203.0.113.9 in flight (its connection open too):
		// a second of the same client is over the cap, another client's
		// is not, although both come from the proxy's address.
		// The held request's goroutine hands its outcome back: only the
		// test's goroutine may fail the test.
		type outcome struct {
			status int
			err    error
		}
		done := make(chan outcome, 1)
		release := sync.OnceFunc(func() { close(hold) })
		defer release() // a failure below must not leave the worker held
		req := newRequest(t, "GET", ts.URL+"/?hold", nil)
		req.Header.Set("X-Forwarded-For", "203.0.113.9")
		go func() {
			resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
			if err != nil {
				done <- outcome{err: err}
				return
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			done <- outcome{resp.StatusCode, err}
		}()
		select {
		case <-held:
		case o := <-done:
			t.Fatalf("the request to hold ended before its worker ran: %d %v", o.status, o.err)
		}
		if status, client := get(t, ts, "", "203.0.113.9"); status != 503 {
			t.Errorf("second request of a client at its cap: %d (%s), want 503", status, client)
		}
		if status, _ := get(t, ts, "", "198.51.100.1"); status != 200 {
			t.Errorf("another client through the same proxy: %d, want 200", status)
		}
		release()
		if o := <-done; o.err != nil || o.status != 200 {
			t.Errorf("held request: %d %v, want 200", o.status, o.err)
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		trusted, _ := ParseTrustedProxies("10.0.0.0/8")
		ts := startServer(t, Config{TrustedProxies: trusted}, Deps{Runner: runner}, route("r", "/", "/x"))
		status, client := get(t, ts, "", "203.0.113.9")
		if status != 200 || !strings.HasPrefix(client, "127.0.0.1:") {
			t.Errorf("not trusted: %d, log client %q", status, client)
		}
		mu.Lock()
		if last := remote[len(remote)-1]; last != "127.0.0.1" {
			t.Errorf("REMOTE_ADDR %q from an untrusted peer's X-Forwarded-For", last)
		}
		mu.Unlock()
	})
}
