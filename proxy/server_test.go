package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// TestRequestIDOnEveryResponse: every outcome carries a fresh request id
// that names its access-log record.
func TestRequestIDOnEveryResponse(t *testing.T) {
	ok := cgiOutput("Content-Type: text/plain\n\nok", sandbox.CauseOK)
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		switch spec.Path {
		case "/oom":
			return cgiOutput("", sandbox.CauseOOM)(ctx, spec)
		case "/bad":
			return cgiOutput("garbage\n", sandbox.CauseOK)(ctx, spec)
		case "/slow":
			return cgiOutput("Content-Type: text/plain\n\n", sandbox.CauseDeadline)(ctx, spec)
		}
		return ok(ctx, spec)
	})
	post := route("post", "/post", "/ok")
	post.Methods = []string{"POST"}
	post.MaxBody = new(int64(10))
	ts := startServer(t, Config{}, Deps{Runner: runner},
		route("ok", "/ok", "/ok"), route("oom", "/oom", "/oom"), route("bad", "/bad", "/bad"),
		route("slow", "/slow", "/slow"), post)
	tests := []struct {
		name    string
		req     func() *http.Request
		status  int
		outcome accounting.Outcome
	}{
		{"ok", func() *http.Request { return newRequest(t, "GET", ts.URL+"/ok", nil) }, 200, accounting.OutcomeOK},
		{"no route", func() *http.Request { return newRequest(t, "GET", ts.URL+"/nothing", nil) }, 404, accounting.OutcomeNoRoute},
		{"method", func() *http.Request { return newRequest(t, "GET", ts.URL+"/post", nil) }, 405, accounting.OutcomeMethodNotAllowed},
		{"body too large", func() *http.Request {
			return newRequest(t, "POST", ts.URL+"/post", strings.NewReader("01234567890"))
		}, 413, accounting.OutcomeBodyTooLarge},
		{"header too large", func() *http.Request {
			r := newRequest(t, "GET", ts.URL+"/ok", nil)
			r.Header.Set("X-Big", strings.Repeat("x", DefaultMaxHeaderBytes))
			return r
		}, 431, accounting.OutcomeHeaderTooLarge},
		{"oom", func() *http.Request { return newRequest(t, "GET", ts.URL+"/oom", nil) }, 502, accounting.OutcomeOOM},
		{"invalid output", func() *http.Request { return newRequest(t, "GET", ts.URL+"/bad", nil) }, 502, accounting.OutcomeBadGateway},
		{"deadline", func() *http.Request { return newRequest(t, "GET", ts.URL+"/slow", nil) }, 504, accounting.OutcomeDeadline},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.req()
			req.Header.Set(RequestIDHeader, "client-chosen")
			resp, body := do(t, nil, req)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d (%q)", resp.StatusCode, tt.status, body)
			}
			id := resp.Header.Get(RequestIDHeader)
			if id == "" || id == "client-chosen" || seen[id] {
				t.Fatalf("request id %q: want a fresh one of the server's", id)
			}
			seen[id] = true
			if tt.status == 405 && resp.Header.Get("Allow") != "POST" {
				t.Errorf("405 with Allow %q, want POST", resp.Header.Get("Allow"))
			}
			rec := ts.recs.byID(t, id)
			if rec.Status != tt.status || rec.Outcome != tt.outcome {
				t.Errorf("record status %d outcome %s, want %d %s", rec.Status, rec.Outcome, tt.status, tt.outcome)
			}
			if tt.status >= 400 {
				if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
					t.Errorf("error Content-Type %q", ct)
				}
				if strings.Contains(body, "/oom") || strings.Contains(body, "garbage") || len(body) > 200 {
					t.Errorf("error body %q leaks internals or is long", body)
				}
			}
		})
	}
	if rec := ts.recs.all(); len(rec) != len(tests) {
		t.Errorf("%d records for %d requests", len(rec), len(tests))
	}
}

func TestOOMMessage(t *testing.T) {
	ts := startServer(t, Config{}, Deps{Runner: cgiOutput("", sandbox.CauseOOM)}, route("r", "/", "/x"))
	resp, body := do(t, nil, newRequest(t, "GET", ts.URL+"/", nil))
	if resp.StatusCode != 502 || !strings.Contains(body, "memory limit") {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// TestBodyBuffering: the worker gets the whole body before it starts, from
// memory below the threshold and as the temporary file itself above it.
func TestBodyBuffering(t *testing.T) {
	var gotStdin atomic.Value
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		kind := "nil"
		var data []byte
		switch in := spec.Stdin.(type) {
		case *os.File:
			kind = "file"
			var err error
			if data, err = io.ReadAll(in); err != nil {
				return sandbox.Result{}, err
			}
		case nil:
		default:
			kind = "memory"
			data, _ = io.ReadAll(in)
		}
		gotStdin.Store(kind)
		cl := ""
		for _, kv := range spec.Env {
			if v, ok := strings.CutPrefix(kv, "CONTENT_LENGTH="); ok {
				cl = v
			}
		}
		fmt.Fprintf(spec.Stdout, "Content-Type: text/plain\n\n%s %d %s", kind, len(data), cl)
		return fakeResult(sandbox.CauseOK), nil
	})
	rt := route("r", "/", "/x")
	rt.MaxBody = new(int64(64 << 10))
	ts := startServer(t, Config{BodyMemory: 1000}, Deps{Runner: runner}, rt)
	tests := []struct {
		name    string
		body    io.Reader
		chunked bool
		status  int
		want    string
	}{
		{name: "empty", body: nil, status: 200, want: "nil 0 "},
		{name: "in memory", body: strings.NewReader(strings.Repeat("a", 1000)), status: 200, want: "memory 1000 1000"},
		{name: "temporary file", body: strings.NewReader(strings.Repeat("a", 1001)), status: 200, want: "file 1001 1001"},
		{name: "chunked into a file", body: strings.NewReader(strings.Repeat("b", 5000)), chunked: true, status: 200, want: "file 5000 5000"},
		{name: "content-length over the route's limit", body: strings.NewReader(strings.Repeat("c", 64<<10+1)), status: 413},
		{name: "chunked over the route's limit", body: strings.NewReader(strings.Repeat("c", 64<<10+1)), chunked: true, status: 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := tt.body
			if tt.chunked {
				body = io.MultiReader(body) // hides the length: chunked
			}
			req := newRequest(t, "POST", ts.URL+"/", body)
			resp, got := do(t, nil, req)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d (%q)", resp.StatusCode, tt.status, got)
			}
			if tt.status == 200 && got != tt.want {
				t.Errorf("worker saw %q, want %q", got, tt.want)
			}
		})
	}
}

// TestBodyTooLargeNotRead: a declared length over the limit is refused
// before the body is read (a client waiting on 100-continue gets the 413
// and never sends it), and the runner is not called.
func TestBodyTooLargeNotRead(t *testing.T) {
	var runs atomic.Int32
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		runs.Add(1)
		return cgiOutput("Status: 200\n\n", sandbox.CauseOK)(ctx, spec)
	})
	rt := route("r", "/", "/x")
	rt.MaxBody = new(int64(100))
	ts := startServer(t, Config{}, Deps{Runner: runner}, rt)
	c, err := net.Dial("tcp", ts.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 || resp.Header.Get(RequestIDHeader) == "" || !resp.Close {
		t.Fatalf("got %d id %q close %v, want 413 with an id, closing", resp.StatusCode, resp.Header.Get(RequestIDHeader), resp.Close)
	}
	if n := runs.Load(); n != 0 {
		t.Errorf("runner called %d times", n)
	}
}

// TestSlowBody: a client that stalls while sending its body gets 408 and
// the connection closed, over a real loopback connection.
func TestSlowBody(t *testing.T) {
	var runs atomic.Int32
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		runs.Add(1)
		return cgiOutput("Status: 200\n\n", sandbox.CauseOK)(ctx, spec)
	})
	ts := startServer(t, Config{BodyMinRate: 1024, BodyRateGrace: 200 * time.Millisecond}, Deps{Runner: runner}, route("r", "/", "/x"))
	c, err := net.Dial("tcp", ts.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 10 bytes of 100000, then nothing: the deadline passes once the grace
	// and 10/1024 s have.
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789")
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 408 || resp.Header.Get(RequestIDHeader) == "" {
		t.Fatalf("got %d %q, want 408 with a request id", resp.StatusCode, body)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("connection not closed after 408: %v", err)
	}
	if n := runs.Load(); n != 0 {
		t.Errorf("runner called %d times", n)
	}
	rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader))
	if rec.Outcome != accounting.OutcomeClientTimeout || rec.BytesIn != 10 {
		t.Errorf("record %+v", rec)
	}
}

// TestShutdownDuringBody: a request still sending its body when the
// drain's time is up is recorded as cut by the stop (outcome shutdown),
// not as a client that left, with the bytes it had sent.
func TestShutdownDuringBody(t *testing.T) {
	s, err := New(Config{TempDir: t.TempDir()}, Deps{Runner: cgiOutput("Status: 200\n\n", sandbox.CauseOK),
		Router: staticRouter{&policy.Policy{Routes: []*policy.Route{route("r", "/", "/x")}}}, CellSpec: noCellSpec, Metrics: &recorder{}})
	if err != nil {
		t.Fatal(err)
	}
	recs := s.deps.Metrics.(*recorder)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		if in := s.InFlight(); len(in) == 1 && in[0].State == StateReading && in[0].Method == "POST" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the request is not reading its body a minute on: %+v", s.InFlight())
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the drain's time is up at once
	if err := s.Shutdown(ctx); err == nil {
		t.Error("Shutdown with its time up: nil, want the context's error")
	}
	<-served
	all := recs.all()
	if len(all) != 1 || all[0].Outcome != accounting.OutcomeShutdown || all[0].BytesIn != 10 {
		t.Errorf("records %+v, want one with outcome shutdown and 10 bytes in", all)
	}
}

// TestSteadyBodyNotTimedOut: a client that keeps sending, slowly but above
// the rate, is served although it takes longer than the grace.
func TestSteadyBodyNotTimedOut(t *testing.T) {
	ts := startServer(t, Config{BodyMinRate: 100, BodyRateGrace: 50 * time.Millisecond},
		Deps{Runner: cgiOutput("Content-Type: text/plain\n\nok", sandbox.CauseOK)}, route("r", "/", "/x"))
	pr, pw := io.Pipe()
	go func() {
		// 20 writes of 100 bytes with pauses: well over 100 B/s, and
		// longer than the grace in total.
		for i := 0; i < 20; i++ {
			if _, err := pw.Write([]byte(strings.Repeat("x", 100))); err != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		pw.Close()
	}()
	resp, body := do(t, nil, newRequest(t, "POST", ts.URL+"/", pr))
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// TestHeaderLimit: over MaxHeaderBytes the front answers 431 with a request
// id and a record: within net/http's slack from the handler, beyond it
// from the head check in front of net/http (guardConn), which never lets
// net/http answer with its own.
func TestHeaderLimit(t *testing.T) {
	ts := startServer(t, Config{MaxHeaderBytes: 4096}, Deps{Runner: cgiOutput("Status: 200\n\n", sandbox.CauseOK)}, route("r", "/", "/x"))
	tests := []struct {
		name   string
		size   int
		status int
		id     bool
	}{
		{"under", 3000, 200, true},
		{"over the limit, within the slack", 5000, 431, true},
		{"beyond the slack", 9000, 431, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := newRequest(t, "GET", ts.URL+"/", nil)
			req.Header.Set("X-Fill", strings.Repeat("f", tt.size))
			resp, _ := do(t, nil, req)
			if resp.StatusCode != tt.status || (resp.Header.Get(RequestIDHeader) != "") != tt.id {
				t.Fatalf("status %d id %q, want %d with id: %v", resp.StatusCode, resp.Header.Get(RequestIDHeader), tt.status, tt.id)
			}
		})
	}
}

// TestCGIWithPlainExec runs real programs (shell scripts) through the
// proxy: the environment they see, stdin, exit statuses.
func TestCGIWithPlainExec(t *testing.T) {
	env := script(t, "env", `printf 'Content-Type: text/plain\n\n'; env | sort`)
	echo := script(t, "echo", `printf 'Content-Type: application/octet-stream\n\n'; cat`)
	fail := script(t, "fail", `printf 'Status: 409 Conflict\nContent-Type: text/plain\n\nconflict'; exit 3`)
	silent := script(t, "silent", `echo oops >&2; exit 1`)
	crash := script(t, "crash", `printf 'Content-Type: text/plain\n\npartial'; kill -SEGV $$`)
	rt := func(name, prog string) *policy.Route {
		r := route(name, "/"+name, prog)
		r.Env = []string{"APP=1"}
		r.MaxBody = new(int64(4 << 20))
		return r
	}
	ts := startServer(t, Config{BodyMemory: 1024}, Deps{Runner: &PlainExec{}},
		rt("env", env), rt("echo", echo), rt("fail", fail), rt("silent", silent), rt("crash", crash))

	t.Run("environment", func(t *testing.T) {
		req := newRequest(t, "GET", ts.URL+"/env/extra/path?q=1", nil)
		req.Header.Set("Proxy", "http://evil:1")
		req.Header.Set("X-Custom", "v")
		resp, body := do(t, nil, req)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d %q", resp.StatusCode, body)
		}
		for _, want := range []string{
			"APP=1\n", "GATEWAY_INTERFACE=CGI/1.1\n", "PATH_INFO=/extra/path\n", "QUERY_STRING=q=1\n",
			"REMOTE_ADDR=127.0.0.1\n", "REQUEST_METHOD=GET\n", "SCRIPT_NAME=/env\n", "SERVER_SOFTWARE=cellgate/dev\n",
			"HTTP_X_CUSTOM=v\n", "PATH=" + DefaultPath + "\n",
			"HTTP_X_REQUEST_ID=" + resp.Header.Get(RequestIDHeader) + "\n",
		} {
			if !strings.Contains(body, want) {
				t.Errorf("environment lacks %q:\n%s", want, body)
			}
		}
		for _, bad := range []string{"HTTP_PROXY", "HOME=", "GOPATH", "USER="} {
			if strings.Contains(body, bad) {
				t.Errorf("environment has %q:\n%s", bad, body)
			}
		}
	})
	t.Run("stdin from memory and from a file", func(t *testing.T) {
		for _, n := range []int{10, 3 << 20} {
			data := strings.Repeat("z", n)
			resp, body := do(t, nil, newRequest(t, "POST", ts.URL+"/echo", strings.NewReader(data)))
			if resp.StatusCode != 200 || body != data {
				t.Fatalf("%d bytes: status %d, %d bytes back", n, resp.StatusCode, len(body))
			}
			if resp.ContentLength != int64(n) {
				t.Errorf("Content-Length %d, want %d", resp.ContentLength, n)
			}
		}
	})
	t.Run("non-zero exit with a valid response passes", func(t *testing.T) {
		resp, body := do(t, nil, newRequest(t, "GET", ts.URL+"/fail", nil))
		if resp.StatusCode != 409 || body != "conflict" {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
		if rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader)); rec.Outcome != accounting.OutcomeExit || rec.ExitCode != 3 {
			t.Errorf("record outcome %s exit %d", rec.Outcome, rec.ExitCode)
		}
	})
	t.Run("non-zero exit without output is a 502, stderr logged not sent", func(t *testing.T) {
		resp, body := do(t, nil, newRequest(t, "GET", ts.URL+"/silent", nil))
		if resp.StatusCode != 502 || strings.Contains(body, "oops") {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
		id := resp.Header.Get(RequestIDHeader)
		ts.recs.byID(t, id)
		logs := ts.logs.String()
		if !strings.Contains(logs, "request_id="+id) || !strings.Contains(logs, "oops") {
			t.Errorf("stderr not logged with the request id:\n%s", logs)
		}
	})
	t.Run("crash", func(t *testing.T) {
		resp, body := do(t, nil, newRequest(t, "GET", ts.URL+"/crash", nil))
		if resp.StatusCode != 502 || strings.Contains(body, "partial") {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
		if rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader)); rec.Outcome != accounting.OutcomeSignal {
			t.Errorf("outcome %s", rec.Outcome)
		}
	})
}

// TestLocalRedirect: "Location: /path" alone is answered by running the
// route of /path with a GET, up to MaxLocalRedirects times.
func TestLocalRedirect(t *testing.T) {
	var mu sync.Mutex
	var methods []string
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		env := map[string]string{}
		for _, kv := range spec.Env {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		mu.Lock()
		methods = append(methods, spec.Path+" "+env["REQUEST_METHOD"])
		mu.Unlock()
		if spec.Stdin != nil {
			io.Copy(io.Discard, spec.Stdin)
		}
		switch spec.Path {
		case "/from":
			io.WriteString(spec.Stdout, "Location: /to/sub?x=2\n\n")
		case "/to":
			fmt.Fprintf(spec.Stdout, "Content-Type: text/plain\n\n%s %s %s %s", env["PATH_INFO"], env["QUERY_STRING"], env["REQUEST_URI"], env["CONTENT_LENGTH"])
		case "/loop":
			io.WriteString(spec.Stdout, "Location: /loop\n\n")
		case "/withbody":
			io.WriteString(spec.Stdout, "Location: /to\n\nsome body")
		case "/nowhere":
			io.WriteString(spec.Stdout, "Location: /missing\n\n")
		}
		return fakeResult(sandbox.CauseOK), nil
	})
	ts := startServer(t, Config{MaxLocalRedirects: 3}, Deps{Runner: runner},
		route("from", "/from", "/from"), route("to", "/to", "/to"), route("loop", "/loop", "/loop"),
		route("withbody", "/withbody", "/withbody"), route("nowhere", "/nowhere", "/nowhere"))

	resp, body := do(t, nil, newRequest(t, "POST", ts.URL+"/from", strings.NewReader("data")))
	if resp.StatusCode != 200 || body != "/sub x=2 /to/sub?x=2 " {
		t.Fatalf("redirect: got %d %q", resp.StatusCode, body)
	}
	mu.Lock()
	got := strings.Join(methods, ", ")
	mu.Unlock()
	if got != "/from POST, /to GET" {
		t.Errorf("runs %q", got)
	}
	if rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader)); rec.Route != "to" {
		t.Errorf("record route %q, want the final one", rec.Route)
	}

	resp, _ = do(t, nil, newRequest(t, "GET", ts.URL+"/loop", nil))
	if resp.StatusCode != 502 {
		t.Errorf("loop: status %d, want 502", resp.StatusCode)
	}
	mu.Lock()
	loops := 0
	for _, m := range methods {
		if strings.HasPrefix(m, "/loop") {
			loops++
		}
	}
	mu.Unlock()
	if loops != 4 {
		t.Errorf("loop ran %d times, want 1 + MaxLocalRedirects (3)", loops)
	}

	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, body = do(t, noFollow, newRequest(t, "GET", ts.URL+"/withbody", nil))
	if resp.StatusCode != 302 || resp.Header.Get("Location") != "/to" || body != "some body" {
		t.Errorf("with body: got %d %q %q, want a client redirect", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	resp, _ = do(t, nil, newRequest(t, "GET", ts.URL+"/nowhere", nil))
	if resp.StatusCode != 404 {
		t.Errorf("redirect to no route: %d", resp.StatusCode)
	}
}

// TestResponseSpool: a response above ResponseMemory is spooled to a file
// and sent whole, with its length; one above MaxResponse is a 502 and the
// cell is killed.
func TestResponseSpool(t *testing.T) {
	big := script(t, "big", `printf 'Content-Type: text/plain\n\n'; head -c 300000 /dev/zero`)
	endless := script(t, "endless", `printf 'Content-Type: text/plain\n\n'; exec cat /dev/zero`)
	ts := startServer(t, Config{ResponseMemory: 4096, MaxResponse: 1 << 20}, Deps{Runner: &PlainExec{}},
		route("big", "/big", big), route("endless", "/endless", endless))
	resp, body := do(t, nil, newRequest(t, "GET", ts.URL+"/big", nil))
	if resp.StatusCode != 200 || len(body) != 300000 || resp.ContentLength != 300000 {
		t.Fatalf("big: %d, %d bytes, Content-Length %d", resp.StatusCode, len(body), resp.ContentLength)
	}
	if rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader)); rec.BytesOut != 300000 {
		t.Errorf("record BytesOut %d", rec.BytesOut)
	}
	resp, _ = do(t, nil, newRequest(t, "GET", ts.URL+"/endless", nil))
	if resp.StatusCode != 502 {
		t.Fatalf("endless: %d", resp.StatusCode)
	}
	if rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader)); rec.Outcome != accounting.OutcomeBadGateway {
		t.Errorf("endless outcome %s", rec.Outcome)
	}
}

// TestStreaming: a streaming route's response reaches the client before
// the worker is done; a cell that ends badly after the header cuts the
// response off rather than completing it.
func TestStreaming(t *testing.T) {
	release := make(chan struct{})
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		io.WriteString(spec.Stdout, "Content-Type: text/plain\n\nfirst\n")
		select {
		case <-release:
		case <-ctx.Done():
			return fakeResult(sandbox.CauseKilled), nil
		}
		if spec.Path == "/oom" {
			return fakeResult(sandbox.CauseOOM), nil
		}
		io.WriteString(spec.Stdout, "second\n")
		return fakeResult(sandbox.CauseOK), nil
	})
	st := route("stream", "/stream", "/stream")
	st.Response = policy.ResponseStream
	st.ServerTiming = true
	oom := route("oom", "/oom", "/oom")
	oom.Response = policy.ResponseStream
	ts := startServer(t, Config{}, Deps{Runner: runner}, st, oom)

	resp, err := http.Get(ts.URL + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first line %q %v", line, err)
	}
	close(release) // only now can the worker finish
	rest, err := io.ReadAll(br)
	resp.Body.Close()
	if err != nil || string(rest) != "second\n" {
		t.Fatalf("rest %q %v", rest, err)
	}
	if resp.ContentLength != -1 || !strings.Contains(resp.Trailer.Get("Server-Timing"), "cell;dur=") {
		t.Errorf("Content-Length %d trailer %v", resp.ContentLength, resp.Trailer)
	}

	resp, err = http.Get(ts.URL + "/oom")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("an OOM-killed streamed response read as complete")
	}
	if rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader)); rec.Outcome != accounting.OutcomeOOM || rec.Status != 200 {
		t.Errorf("record outcome %s status %d", rec.Outcome, rec.Status)
	}
}

// fakeAdmitter admits with a fixed error, counting releases.
type fakeAdmitter struct {
	err      error
	released atomic.Int32
}

func (a *fakeAdmitter) Admit(ctx context.Context, tenant string, memory int64) (func(), time.Duration, error) {
	if a.err != nil {
		return nil, 5 * time.Millisecond, a.err
	}
	return func() { a.released.Add(1) }, time.Millisecond, nil
}

func TestAdmission(t *testing.T) {
	for _, tt := range []struct {
		name    string
		err     error
		status  int
		outcome accounting.Outcome
	}{
		{"admitted", nil, 200, accounting.OutcomeOK},
		{"queue full", fmt.Errorf("admit: %w", policy.ErrQueueFull), 503, accounting.OutcomeQueueFull},
		{"queue timeout", fmt.Errorf("admit: %w", policy.ErrQueueTimeout), 503, accounting.OutcomeQueueTimeout},
	} {
		t.Run(tt.name, func(t *testing.T) {
			adm := &fakeAdmitter{err: tt.err}
			ts := startServer(t, Config{RetryAfter: 1500 * time.Millisecond},
				Deps{Runner: cgiOutput("Content-Type: text/plain\n\nok", sandbox.CauseOK), Admitter: adm}, route("r", "/", "/x"))
			resp, _ := do(t, nil, newRequest(t, "GET", ts.URL+"/", nil))
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.status == 503 && resp.Header.Get("Retry-After") != "2" {
				t.Errorf("Retry-After %q, want 2", resp.Header.Get("Retry-After"))
			}
			rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader))
			// Queued, whatever came of the wait: the metrics observe it.
			if rec.Outcome != tt.outcome || rec.QueueWait <= 0 || !rec.Queued {
				t.Errorf("record outcome %s wait %s queued %v, want %s, a wait, queued", rec.Outcome, rec.QueueWait, rec.Queued, tt.outcome)
			}
			if want := int32(0); tt.err == nil {
				want = 1
				if got := adm.released.Load(); got != want {
					t.Errorf("released %d times, want %d", got, want)
				}
			}
		})
	}
}

// TestServerTiming: a route that asks gets the header with the cell's
// figures, and not the worker's own (which stood first); others get the
// worker's, as any field of its.
func TestServerTiming(t *testing.T) {
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		io.WriteString(spec.Stdout, "Content-Type: text/plain\nServer-Timing: cell;dur=0.001, cpu;dur=0\n\n")
		res := fakeResult(sandbox.CauseOK)
		res.Wall = 12300 * time.Microsecond
		res.Usage.CPUUsageUsec = 4100
		res.Usage.MemoryPeak = 1 << 20
		return res, nil
	})
	on := route("on", "/on", "/x")
	on.ServerTiming = true
	ts := startServer(t, Config{}, Deps{Runner: runner}, on, route("off", "/off", "/x"))
	resp, _ := do(t, nil, newRequest(t, "GET", ts.URL+"/on", nil))
	if st := resp.Header.Values("Server-Timing"); len(st) != 1 || !strings.Contains(st[0], "cell;dur=12.3") || !strings.Contains(st[0], "cpu;dur=4.1") || !strings.Contains(st[0], `mem;desc="1048576"`) {
		t.Errorf("Server-Timing %q, want cellgate's alone", st)
	}
	resp, _ = do(t, nil, newRequest(t, "GET", ts.URL+"/off", nil))
	if st := resp.Header.Get("Server-Timing"); st != "cell;dur=0.001, cpu;dur=0" {
		t.Errorf("Server-Timing on a route that did not ask: %q, want the worker's", st)
	}
}

// TestShutdownDrains: Shutdown waits for a request in flight, which gets
// its response; after its context ends it cancels what is still running.
func TestShutdownDrains(t *testing.T) {
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		started <- struct{}{}
		select {
		case <-release:
			io.WriteString(spec.Stdout, "Content-Type: text/plain\n\ndone")
			return fakeResult(sandbox.CauseOK), nil
		case <-ctx.Done():
			return fakeResult(sandbox.CauseKilled), nil
		}
	})
	s, err := New(Config{TempDir: t.TempDir()}, Deps{Runner: runner, Router: staticRouter{&policy.Policy{Routes: []*policy.Route{route("r", "/", "/x")}}}, CellSpec: noCellSpec})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()

	type result struct {
		status int
		body   string
		err    error
	}
	get := func() chan result {
		ch := make(chan result, 1)
		go func() {
			resp, err := http.Get("http://" + ln.Addr().String() + "/")
			if err != nil {
				ch <- result{err: err}
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			ch <- result{resp.StatusCode, string(b), err}
		}()
		return ch
	}
	first := get()
	<-started
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	close(release)
	if r := <-first; r.err != nil || r.status != 200 || r.body != "done" {
		t.Fatalf("in-flight request: %+v", r)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
}

// TestShutdownServesHeadInProgress: a connection whose first request head
// is still arriving when Shutdown starts is served, not reset, as net/http
// alone would have served it (the front holds such a connection until its
// head is whole). A restart under systemd otherwise reset the requests
// that were on their way.
func TestShutdownServesHeadInProgress(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", tlsOn), func(t *testing.T) {
			runner := cgiOutput("Content-Type: text/plain\n\nserved", sandbox.CauseOK)
			cfg := Config{TempDir: t.TempDir()}
			if tlsOn {
				cfg.TLSCertFile, cfg.TLSKeyFile, _ = writeCert(t)
			}
			s, err := New(cfg, Deps{Runner: runner, Router: staticRouter{&policy.Policy{Routes: []*policy.Route{route("r", "/", "/x")}}}, CellSpec: noCellSpec})
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			served := make(chan error, 1)
			go func() { served <- s.Serve(ln) }()

			var c net.Conn
			c, err = net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tlsOn {
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				c = tc
			}
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n"); err != nil {
				t.Fatal(err)
			}
			// A connection still in the kernel's accept queue when the
			// listener closes is reset by the kernel, before the server
			// ever sees it: the test is about one it has accepted.
			for deadline := time.Now().Add(10 * time.Second); s.ConnStats().Open < 1; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the server did not accept the connection within 10 s")
				}
			}
			shut := make(chan error, 1)
			go func() { shut <- s.Shutdown(context.Background()) }()
			// Shutdown has begun once the port refuses new connections.
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				d, err := net.Dial("tcp", addr)
				if err != nil {
					break
				}
				d.Close()
				if time.Now().After(deadline) {
					t.Fatal("the listener still accepts 10 s into Shutdown")
				}
			}
			if _, err := io.WriteString(c, "\r\n"); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("the request whose head was arriving at Shutdown: %v, want its response", err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(body) != "served" {
				t.Errorf("response %d %q, want 200 served", resp.StatusCode, body)
			}
			if err := <-shut; err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if err := <-served; !errors.Is(err, http.ErrServerClosed) {
				t.Fatalf("Serve: %v", err)
			}
		})
	}
}

func TestShutdownCancels(t *testing.T) {
	started := make(chan struct{}, 1)
	cancelled := make(chan struct{})
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		started <- struct{}{}
		<-ctx.Done()
		close(cancelled)
		return fakeResult(sandbox.CauseKilled), nil
	})
	recs := &recorder{}
	s, err := New(Config{TempDir: t.TempDir()}, Deps{Runner: runner, Router: staticRouter{&policy.Policy{Routes: []*policy.Route{route("r", "/", "/x")}}}, CellSpec: noCellSpec, Metrics: recs})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	// The client gets the 503 its record says (before, the connection
	// was closed before the handler wrote it: an empty reply).
	answered := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			answered <- err.Error()
			return
		}
		resp.Body.Close()
		answered <- resp.Status
	}()
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no time to drain
	if err := s.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown: %v, want context.Canceled", err)
	}
	<-cancelled
	recsNow := recs.all()
	if len(recsNow) != 1 || recsNow[0].Outcome != accounting.OutcomeShutdown || recsNow[0].Status != 503 {
		t.Fatalf("records after Shutdown: %+v", recsNow)
	}
	if got := <-answered; got != "503 Service Unavailable" {
		t.Errorf("the client of the request Shutdown cancelled got %q, want the 503 of its record", got)
	}
}

func TestNewValidates(t *testing.T) {
	deps := Deps{Runner: &PlainExec{}, Router: staticRouter{&policy.Policy{}}, CellSpec: noCellSpec}
	for _, tt := range []struct {
		name string
		cfg  Config
		deps Deps
		want string
	}{
		{"cert without key", Config{TLSCertFile: "/c.pem"}, deps, "TLSKeyFile"},
		{"negative timeout", Config{ReadHeaderTimeout: -1}, deps, "ReadHeaderTimeout"},
		{"tiny header limit", Config{MaxHeaderBytes: 10}, deps, "MaxHeaderBytes"},
		{"missing temp dir", Config{TempDir: "/nonexistent/x"}, deps, "TempDir"},
		{"temp dir not writable", Config{TempDir: "/proc"}, deps, "TempDir"},
		{"no runner", Config{}, Deps{Router: staticRouter{&policy.Policy{}}, CellSpec: noCellSpec}, "Deps.Runner"},
		{"no cell spec", Config{}, Deps{Runner: &PlainExec{}, Router: staticRouter{&policy.Policy{}}}, "CellSpec"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, tt.deps)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want an error about %s", err, tt.want)
			}
		})
	}
}

// TestSlowReader: a client that stops reading a large response is cut off
// once it has taken nothing for WriteTimeout (where an average over the
// whole response would give it a minute at this rate): its record says
// slow_reader and the server closes its connection although the client
// reads nothing more (net/http's last flush must not wait for it); the
// cell ended long before (the response was spooled). Both spools: a file
// (sent with sendfile) and memory (written through net/http's buffer).
func TestSlowReader(t *testing.T) {
	for _, tt := range []struct {
		name   string
		size   int
		memory int
	}{
		{"spool file", 64 << 20, 0},
		{"spool in memory", 8 << 20, 16 << 20},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, Config{MaxResponse: int64(tt.size), ResponseMemory: tt.memory, SpoolMemory: 32 << 20,
				WriteMinRate: 64 << 10, WriteTimeout: 100 * time.Millisecond, WriteRateGrace: time.Millisecond},
				Deps{Runner: bulkOutput(tt.size >> 20)}, route("r", "/", "/x"))
			resp := getHead(t, ts.Addr, true)
			if resp.StatusCode != 200 || resp.ContentLength != int64(tt.size) {
				t.Fatalf("status %d length %d", resp.StatusCode, resp.ContentLength)
			}
			// Read nothing more.
			rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader))
			if rec.Outcome != accounting.OutcomeSlowReader || rec.BytesOut >= int64(tt.size) {
				t.Errorf("record outcome %s, %d bytes out: want slow_reader and fewer than %d", rec.Outcome, rec.BytesOut, tt.size)
			}
			waitOpen(t, ts.Server, 0)
		})
	}
}

// TestNonReaderPipelines: a client that pipelines requests and never
// reads is cut off within the write timeout whatever it asks, and what its
// requests hold is freed: answers without a body (HEAD) and error answers
// (404), which net/http flushes after the handler returns, and streamed
// responses, whose header block is flushed before their first write (the
// route's admission is released). Answers of the route carry a large
// header, so that a few fill the sockets' buffers; 404s take many.
func TestNonReaderPipelines(t *testing.T) {
	pad := "X-Pad: " + strings.Repeat("a", 30000) + "\n"
	for _, tt := range []struct {
		name, req string
		n         int
		stream    bool
	}{
		{"HEAD of a spooled response", "HEAD /r HTTP/1.1\r\nHost: x\r\n\r\n", 2000, false},
		{"error answers", "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 40000, false},
		{"streamed responses", "GET /r HTTP/1.1\r\nHost: x\r\n\r\n", 2000, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			adm := &countAdmitter{}
			r := route("r", "/r", "/x")
			if tt.stream {
				r.Response = policy.ResponseStream
			}
			ts := startServer(t, Config{WriteMinRate: 64 << 10, WriteTimeout: 100 * time.Millisecond, WriteRateGrace: time.Millisecond},
				Deps{Runner: cgiOutput("Content-Type: text/plain\n"+pad+"\nhi", sandbox.CauseOK), Admitter: adm}, r)
			c, err := net.Dial("tcp", ts.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.(*net.TCPConn).SetReadBuffer(4096)
			go io.WriteString(c, strings.Repeat(tt.req, tt.n)) // ends with the connection
			// A bound on the server's work, not a speed: without the write
			// deadlines the connection stays open for good.
			for end := time.Now().Add(time.Minute); ts.ConnStats().Open > 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(end) {
					t.Fatalf("the connection of a client that reads nothing is still open a minute on (write timeout 100ms); %d admissions held", adm.held.Load())
				}
			}
			if n := adm.held.Load(); n != 0 {
				t.Errorf("%d admissions held after the connection closed", n)
			}
		})
	}
}

// TestStreamCutShort: a streamed response cut short after its status went
// out (a client that stops reading, an output over MaxResponse) has its
// record, with the status sent and why it was cut, and the connection is
// reset; the handler does not panic (run.hdr is nil then).
func TestStreamCutShort(t *testing.T) {
	for _, tt := range []struct {
		name    string
		cfg     Config
		read    bool // the client reads the whole response
		outcome accounting.Outcome
	}{
		{"slow reader", Config{WriteMinRate: 64 << 10, WriteTimeout: 100 * time.Millisecond, WriteRateGrace: time.Millisecond}, false, accounting.OutcomeSlowReader},
		{"over MaxResponse", Config{MaxResponse: 1 << 20}, true, accounting.OutcomeBadGateway},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := route("r", "/", "/x")
			r.Response = policy.ResponseStream
			ts := startServer(t, tt.cfg, Deps{Runner: bulkOutput(64)}, r)
			resp := getHead(t, ts.Addr, !tt.read)
			if tt.read {
				io.Copy(io.Discard, resp.Body) // cut short: an error
			}
			rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader))
			if rec.Status != 200 || rec.Outcome != tt.outcome {
				t.Errorf("record status %d outcome %s, want 200 %s", rec.Status, rec.Outcome, tt.outcome)
			}
			if strings.Contains(ts.logs.String(), "panic") {
				t.Errorf("the handler panicked:\n%s", ts.logs.String())
			}
		})
	}
}

// bulkOutput is a fake Runner whose worker writes mib MiB of body, in
// pieces of 1 MiB, until its stdout fails.
func bulkOutput(mib int) runFunc {
	return func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		io.WriteString(spec.Stdout, "Content-Type: application/octet-stream\n\n")
		buf := make([]byte, 1<<20)
		for range mib {
			if _, err := spec.Stdout.Write(buf); err != nil {
				return fakeResult(sandbox.CauseKilled), nil
			}
		}
		return fakeResult(sandbox.CauseOK), nil
	}
}

// getHead sends a GET on a new connection (its receive buffer small: a
// client slow to read) and returns the response once its head is in;
// the connection closes with the test.
func getHead(t *testing.T, addr string, smallBuffer bool) *http.Response {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if smallBuffer {
		c.(*net.TCPConn).SetReadBuffer(4096)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// countAdmitter admits everything and counts the admissions not released.
type countAdmitter struct{ held atomic.Int64 }

func (a *countAdmitter) Admit(ctx context.Context, tenant string, memory int64) (func(), time.Duration, error) {
	a.held.Add(1)
	return func() { a.held.Add(-1) }, 0, nil
}

// holdRouter routes with a policy and counts the matches held (not yet
// released), as a reloading Router would to keep a policy's tenants.
type holdRouter struct {
	p        *policy.Policy
	held     atomic.Int32
	matched  atomic.Int32
	released atomic.Int32
}

func (r *holdRouter) Match(host, method, urlPath string) (*policy.Match, func(), error) {
	m, err := r.p.Match(host, method, urlPath)
	if err != nil {
		return nil, nil, err
	}
	r.held.Add(1)
	r.matched.Add(1)
	var once atomic.Bool
	return m, func() {
		if !once.CompareAndSwap(false, true) {
			panic("match released twice")
		}
		r.held.Add(-1)
		r.released.Add(1)
	}, nil
}

// heldAdmitter admits, and records whether a request's admission was
// released while its match was held.
type heldAdmitter struct {
	router *holdRouter
	mu     sync.Mutex
	unheld int // admissions made or released with no match held
	admits int
}

func (a *heldAdmitter) Admit(ctx context.Context, tenant string, memory int64) (func(), time.Duration, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.admits++
	if a.router.held.Load() == 0 {
		a.unheld++
	}
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.router.held.Load() == 0 {
			a.unheld++
		}
	}, 0, nil
}

// TestRouterMatchHeld: every match the Router made for a request (the
// first route's and each local redirect's) is held until the request's
// cells have ended and their admission is released, and released exactly
// once; a failed match holds nothing.
func TestRouterMatchHeld(t *testing.T) {
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		if spec.Stdin != nil {
			io.Copy(io.Discard, spec.Stdin)
		}
		switch spec.Path {
		case "/from":
			io.WriteString(spec.Stdout, "Location: /to\n\n")
		case "/nowhere":
			io.WriteString(spec.Stdout, "Location: /missing\n\n")
		default:
			io.WriteString(spec.Stdout, "Content-Type: text/plain\n\nok")
		}
		return fakeResult(sandbox.CauseOK), nil
	})
	for _, tt := range []struct {
		name        string
		method      string
		path        string
		wantStatus  int
		wantMatches int32
	}{
		{"one route", "POST", "/to", 200, 1},
		{"local redirect", "POST", "/from", 200, 2},
		{"redirect to no route", "GET", "/nowhere", 404, 1},
		{"no route", "GET", "/missing", 404, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			router := &holdRouter{p: &policy.Policy{Routes: []*policy.Route{
				route("from", "/from", "/from"), route("to", "/to", "/to"), route("nowhere", "/nowhere", "/nowhere")}}}
			adm := &heldAdmitter{router: router}
			ts := startServer(t, Config{}, Deps{Runner: runner, Router: router, Admitter: adm})
			resp, _ := do(t, nil, newRequest(t, tt.method, ts.URL+tt.path, strings.NewReader("data")))
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			ts.recs.byID(t, resp.Header.Get(RequestIDHeader)) // the request has ended
			if m, r, h := router.matched.Load(), router.released.Load(), router.held.Load(); m != tt.wantMatches || r != m || h != 0 {
				t.Errorf("%d matches, %d released, %d held at the end; want %d, all released", m, r, h, tt.wantMatches)
			}
			adm.mu.Lock()
			defer adm.mu.Unlock()
			if adm.unheld != 0 {
				t.Errorf("%d of %d admissions admitted or released with no match held", adm.unheld, adm.admits)
			}
		})
	}
}

// TestOptionsAsterisk: "OPTIONS *" (RFC 9110 §9.3.7) is answered by
// cellgate like any request, not by net/http's built-in handler: no route
// takes a target that is not a path, a catch-all one included, so it is a
// 400 with a request id and an access-log record, over HTTP/1.1 and
// HTTP/2 alike.
func TestOptionsAsterisk(t *testing.T) {
	certFile, keyFile, pool := writeCert(t)
	for _, mode := range []struct {
		name string
		cfg  Config
		tr   *http.Transport
	}{
		{"http/1.1", Config{}, &http.Transport{}},
		{"h2", Config{TLSCertFile: certFile, TLSKeyFile: keyFile},
			&http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			var ran atomic.Bool
			runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
				ran.Store(true)
				return cgiOutput("Content-Type: text/plain\n\nok", sandbox.CauseOK)(ctx, spec)
			})
			ts := startServer(t, mode.cfg, Deps{Runner: runner}, route("all", "/", "/x"))
			defer mode.tr.CloseIdleConnections()
			req := newRequest(t, "OPTIONS", ts.URL, nil)
			req.URL.Opaque = "*" // the asterisk form
			resp, body := do(t, &http.Client{Transport: mode.tr, Timeout: 30 * time.Second}, req)
			if mode.name == "h2" && resp.ProtoMajor != 2 {
				t.Fatalf("answered over %s", resp.Proto)
			}
			id := resp.Header.Get(RequestIDHeader)
			if resp.StatusCode != 400 || id == "" {
				t.Fatalf("OPTIONS *: %d, request id %q, body %q", resp.StatusCode, id, body)
			}
			if rec := ts.recs.byID(t, id); rec.Status != 400 || rec.Outcome != accounting.OutcomeBadRequest || rec.Method != "OPTIONS" {
				t.Errorf("record: %s status %d outcome %s", rec.Method, rec.Status, rec.Outcome)
			}
			if ran.Load() {
				t.Errorf("a program ran for OPTIONS *")
			}
		})
	}
}

// TestMaxBodyPrecedence: a route's max_body (the policy's defaults
// applied) wins over Config.MaxBody (--max-body), 0 included: no body is
// accepted. A route that has none takes Config.MaxBody. Before, 0 meant
// "use Config.MaxBody", and Config.MaxBody was never used since every
// route had one.
func TestMaxBodyPrecedence(t *testing.T) {
	runner := runFunc(cgiOutput("Status: 200\n\n", sandbox.CauseOK))
	for _, tc := range []struct {
		name    string
		route   *int64 // nil: neither the route nor the defaults set it
		flag    int64
		body    string
		want413 bool
	}{
		{"route 0 refuses a body", new(int64(0)), 1 << 20, "x", true},
		{"route 0 takes an empty body", new(int64(0)), 1 << 20, "", false},
		{"route's own over the flag's", new(int64(100)), 10, strings.Repeat("x", 50), false},
		{"unset takes the flag's", nil, 10, strings.Repeat("x", 50), true},
		{"unset within the flag's", nil, 100, strings.Repeat("x", 50), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := route("r", "/", "/x")
			rt.MaxBody = tc.route
			ts := startServer(t, Config{MaxBody: tc.flag}, Deps{Runner: runner}, rt)
			resp, _ := do(t, nil, newRequest(t, "POST", ts.URL+"/", strings.NewReader(tc.body)))
			if got := resp.StatusCode == 413; got != tc.want413 {
				t.Errorf("POST of %d bytes: %d, want 413: %v", len(tc.body), resp.StatusCode, tc.want413)
			}
		})
	}
}

// TestStreamContentLength: a streamed response is checked against the
// worker's Content-Length as a spooled one is: fewer or more body bytes
// than it said cut the stream (the client reads it incomplete, the record
// says bad_gateway); as many pass. Before, the length was dropped and a
// short body went out as a complete chunked response.
func TestStreamContentLength(t *testing.T) {
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		body := map[string]string{"/short": "ok", "/long": "okokokok", "/exact": "okok"}[spec.Path]
		io.WriteString(spec.Stdout, "Content-Type: text/plain\nContent-Length: 4\n\n"+body)
		return fakeResult(sandbox.CauseOK), nil
	})
	var routes []*policy.Route
	for _, name := range []string{"short", "long", "exact"} {
		r := route(name, "/"+name, "/"+name)
		r.Response = policy.ResponseStream
		routes = append(routes, r)
	}
	ts := startServer(t, Config{}, Deps{Runner: runner}, routes...)
	for _, tc := range []struct {
		path     string
		complete bool
		outcome  accounting.Outcome
	}{
		{"/short", false, accounting.OutcomeBadGateway},
		{"/long", false, accounting.OutcomeBadGateway},
		{"/exact", true, accounting.OutcomeOK},
	} {
		resp, err := http.Get(ts.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if (err == nil) != tc.complete || tc.complete && string(body) != "okok" {
			t.Errorf("GET %s: body %q, read error %v; want complete: %v", tc.path, body, err, tc.complete)
		}
		if rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader)); rec.Outcome != tc.outcome {
			t.Errorf("GET %s: record outcome %s, want %s", tc.path, rec.Outcome, tc.outcome)
		}
	}
}

// TestStreamLocationWithBody: a streamed response with a local Location
// and a body went to the client as it came, and was then also followed as
// a local redirect: the target route's cell ran and its response was
// written into the 302 already sent (a Location naming the route itself
// ran it six times). It is the worker's 302, sent and recorded once.
func TestStreamLocationWithBody(t *testing.T) {
	r := route("r", "/r", "/r")
	r.Response = policy.ResponseStream
	other := route("other", "/other", "/other")
	var mu sync.Mutex
	var ran []string
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		mu.Lock()
		ran = append(ran, spec.Path)
		mu.Unlock()
		if spec.Path == "/r" {
			io.WriteString(spec.Stdout, "Location: /other\n\n<a href=/other>moved</a>\n")
		} else {
			io.WriteString(spec.Stdout, "Content-Type: text/plain\n\nSECRET of /other\n")
		}
		return fakeResult(sandbox.CauseOK), nil
	})
	ts := startServer(t, Config{}, Deps{Runner: runner}, r, other)
	resp, err := noRedirectClient().Get("http://" + ts.Addr + "/r")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 302 || string(body) != "<a href=/other>moved</a>\n" {
		t.Errorf("GET /r: %d %q, want the worker's 302 and its body alone", resp.StatusCode, body)
	}
	rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader))
	if rec.Status != 302 || rec.Outcome != accounting.OutcomeOK {
		t.Errorf("record status %d outcome %s, want 302 ok", rec.Status, rec.Outcome)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ran) != 1 {
		t.Errorf("cells run: %q, want /r's alone", ran)
	}
}

// noRedirectClient follows no redirect.
func noRedirectClient() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// TestStreamCutHTTP10: over HTTP/1.0, which has no chunks, a streamed
// body ends where the connection does; one cut short (the worker
// OOM-killed, or short of its own Content-Length) ended with a plain
// close, and the client read it as complete. The connection is reset.
func TestStreamCutHTTP10(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		cause     sandbox.Cause
	}{
		{"worker killed", "Content-Type: text/plain\n\nfirst\n", sandbox.CauseOOM},
		{"short of its Content-Length", "Content-Type: text/plain\nContent-Length: 100\n\nfirst\n", sandbox.CauseOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
				io.WriteString(spec.Stdout, tc.out)
				return fakeResult(tc.cause), nil
			})
			r := route("s", "/s", "/s")
			r.Response = policy.ResponseStream
			ts := startServer(t, Config{}, Deps{Runner: runner}, r)
			c, err := net.Dial("tcp", ts.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			io.WriteString(c, "GET /s HTTP/1.0\r\nHost: x\r\n\r\n")
			got, err := io.ReadAll(c)
			if err == nil {
				t.Errorf("the client read %q to a clean end: a cut body looks whole", got)
			}
		})
	}
}

// TestStreamHeadClientGone: a client gone before a streamed HEAD's (or a
// 204's) head went out is client_gone, as on a body's write, not an
// internal error answered 500 in the log.
func TestStreamHeadClientGone(t *testing.T) {
	r := route("r", "/r", "/r")
	r.Response = policy.ResponseStream
	started, gone := make(chan struct{}), make(chan struct{})
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		close(started)
		<-gone
		// Long enough for the reset to have come: the head's write then
		// fails (a write may succeed once after a reset; the flush's
		// second does not).
		time.Sleep(300 * time.Millisecond)
		io.WriteString(spec.Stdout, "Content-Type: text/plain\n\n")
		return fakeResult(sandbox.CauseOK), nil
	})
	ts := startServer(t, Config{}, Deps{Runner: runner}, r)
	c, err := net.Dial("tcp", ts.Addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "HEAD /r HTTP/1.1\r\nHost: x\r\n\r\n")
	<-started
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	close(gone)
	var rec accounting.Record
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if recs := ts.recs.all(); len(recs) > 0 {
			rec = recs[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no record")
		}
	}
	if rec.Outcome != accounting.OutcomeClientGone {
		t.Errorf("record status %d outcome %s, want client_gone\nlog:\n%s", rec.Status, rec.Outcome, ts.logs.String())
	}
}
