package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/sandbox"
)

// byPath is a fake Runner that runs the program path's runFunc.
type byPath map[string]runFunc

func (b byPath) Run(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
	return b[spec.Path](ctx, spec)
}

// TestResetContentHasNoBody: a 205 from a worker goes out with
// "Content-Length: 0" and none of the worker's body bytes (RFC 9110
// §15.3.6), spooled or streamed, and the connection stays usable.
func TestResetContentHasNoBody(t *testing.T) {
	out := cgiOutput("Status: 205\nContent-Type: text/plain\n\nworker body bytes", sandbox.CauseOK)
	spooled := route("spooled", "/spooled", "/x")
	streamed := route("streamed", "/streamed", "/x")
	streamed.Response = "stream"
	ts := startServer(t, Config{}, Deps{Runner: out}, spooled, streamed)
	for _, path := range []string{"/spooled", "/streamed"} {
		t.Run(path, func(t *testing.T) {
			c, err := net.Dial("tcp", ts.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\nGET "+path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			raw, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(raw), "worker body") {
				t.Fatalf("205 carries the worker's body:\n%s", raw)
			}
			br := bufio.NewReader(strings.NewReader(string(raw)))
			for i := 0; i < 2; i++ {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("response %d: %v in\n%s", i+1, err, raw)
				}
				body, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 205 || len(body) != 0 {
					t.Fatalf("response %d: %d with %q", i+1, resp.StatusCode, body)
				}
			}
		})
	}
}

// TestBadLocalRedirect: a local redirect to a path no route may take
// ("/../x") is the worker's mistake: 502, and the client's connection is
// kept.
func TestBadLocalRedirect(t *testing.T) {
	runner := byPath{
		"/bad": cgiOutput("Location: /../../etc/passwd\n\n", sandbox.CauseOK),
		"/ok":  cgiOutput("Content-Type: text/plain\n\nok", sandbox.CauseOK),
	}
	ts := startServer(t, Config{}, Deps{Runner: runner}, route("bad", "/bad", "/bad"), route("ok", "/", "/ok"))
	resps, closed := exchangeRaw(t, ts, nil, "GET /bad HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2)
	if len(resps) != 2 || resps[0].StatusCode != 502 || resps[0].Close || resps[1].StatusCode != 200 || !closed {
		var got []int
		for _, r := range resps {
			got = append(got, r.StatusCode)
		}
		t.Fatalf("got %v (first closes: %v), want 502 then 200 on one connection", got, len(resps) > 0 && resps[0].Close)
	}
	if rec := ts.recs.byID(t, resps[0].Header.Get(RequestIDHeader)); rec.Outcome != accounting.OutcomeBadGateway {
		t.Errorf("record outcome %s, want %s", rec.Outcome, accounting.OutcomeBadGateway)
	}
}

// TestRedirectHopRefusedAfterARun: a request whose first cell ran (a POST
// that charged a card) and answered with a local redirect, whose next hop
// then gets no cell, is a 503 without Retry-After, which would have its
// client send the POST again. Before, it had one, as a request of which
// nothing ran.
func TestRedirectHopRefusedAfterARun(t *testing.T) {
	runner := byPath{
		"/charge": cgiOutput("Location: /receipt\n\n", sandbox.CauseOK),
		"/receipt": func(context.Context, sandbox.Spec) (sandbox.Result, error) {
			return sandbox.Result{}, fmt.Errorf("tenant t: %w", sandbox.ErrNoCell)
		},
	}
	ts := startServer(t, Config{}, Deps{Runner: runner}, route("charge", "/charge", "/charge"), route("receipt", "/receipt", "/receipt"))
	resp, body := do(t, nil, newRequest(t, "POST", ts.URL+"/charge", strings.NewReader("card=1")))
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "" || !strings.Contains(body, "may have been processed") {
		t.Errorf("got %d, Retry-After %q, %q; want 503 without Retry-After, saying the request may have been processed",
			resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	// A request of which nothing ran keeps its Retry-After.
	resp, _ = do(t, nil, newRequest(t, "GET", ts.URL+"/receipt", nil))
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a refused request of which nothing ran: %d, Retry-After %q; want 503 with one", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// TestLongLocationLogged: a worker's local redirect to a long path no
// route may take is logged in a line of bounded length that still says
// why it failed (the path's bytes escaped six times over made lines of
// hundreds of KiB).
func TestLongLocationLogged(t *testing.T) {
	loc := "/./" + strings.Repeat("\xff", 60<<10)
	runner := byPath{"/bad": cgiOutput("Location: "+loc+"\n\n", sandbox.CauseOK)}
	ts := startServer(t, Config{MaxResponseHeader: 128 << 10}, Deps{Runner: runner}, route("bad", "/", "/bad"))
	resp, _ := do(t, nil, newRequest(t, "GET", ts.URL+"/bad", nil))
	if resp.StatusCode != 502 {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	id := resp.Header.Get(RequestIDHeader)
	ts.recs.byID(t, id)
	var line string
	for _, l := range strings.Split(ts.logs.String(), "\n") {
		if strings.Contains(l, "request_id="+id) && strings.Contains(l, "request failed") {
			line = l
		}
	}
	if line == "" || len(line) > 8<<10 || !strings.Contains(line, "bad request path") {
		t.Errorf("log line of %d bytes (%.200q), want one under 8 KiB naming the bad path", len(line), line)
	}
}

// TestFailureLogNamesTheCause: a request whose cell was OOM-killed or hit
// its deadline before writing anything is logged with that cause as its
// err, not with the "no output" that followed from it.
func TestFailureLogNamesTheCause(t *testing.T) {
	runner := byPath{"/oom": cgiOutput("", sandbox.CauseOOM), "/slow": cgiOutput("", sandbox.CauseDeadline)}
	ts := startServer(t, Config{}, Deps{Runner: runner}, route("oom", "/oom", "/oom"), route("slow", "/slow", "/slow"))
	for _, tt := range []struct {
		path   string
		status int
		want   string
	}{
		{"/oom", 502, "OOM-killed"},
		{"/slow", 504, "deadline"},
	} {
		resp, _ := do(t, nil, newRequest(t, "GET", ts.URL+tt.path, nil))
		id := resp.Header.Get(RequestIDHeader)
		if resp.StatusCode != tt.status {
			t.Fatalf("%s: status %d", tt.path, resp.StatusCode)
		}
		ts.recs.byID(t, id) // the log line is written before the record
		var line string
		for _, l := range strings.Split(ts.logs.String(), "\n") {
			if strings.Contains(l, "request_id="+id) && strings.Contains(l, "request failed") {
				line = l
			}
		}
		_, errVal, _ := strings.Cut(line, " err=")
		errVal, _, _ = strings.Cut(errVal, " detail=")
		if !strings.Contains(errVal, tt.want) || strings.Contains(errVal, "no output") {
			t.Errorf("%s: log line %q: err should name %q, not the output", tt.path, line, tt.want)
		}
	}
}

// TestLocalRedirectRecords: every cell of a local-redirect chain has an
// access-log record with the request's id, the hops with outcome
// local_redirect and no status, the last with the response.
func TestLocalRedirectRecords(t *testing.T) {
	runner := byPath{
		"/a": cgiOutput("Location: /b\n\n", sandbox.CauseOK),
		"/b": cgiOutput("Location: /c?q=1\n\n", sandbox.CauseOK),
		"/c": cgiOutput("Content-Type: text/plain\n\nc", sandbox.CauseOK),
	}
	ts := startServer(t, Config{}, Deps{Runner: runner}, route("a", "/a", "/a"), route("b", "/b", "/b"), route("c", "/c", "/c"))
	resp, body := do(t, nil, newRequest(t, "POST", ts.URL+"/a", strings.NewReader("data")))
	if resp.StatusCode != 200 || body != "c" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	id := resp.Header.Get(RequestIDHeader)
	ts.recs.byID(t, id)
	var got []string
	for _, rec := range ts.recs.all() {
		if rec.RequestID == id {
			if !rec.Cell {
				t.Errorf("record of %s has no cell", rec.Route)
			}
			got = append(got, rec.Method+" "+rec.Path+" "+rec.Route+" "+string(rec.Outcome)+" "+http.StatusText(rec.Status))
		}
	}
	want := []string{"POST /a a local_redirect ", "GET /b b local_redirect ", "POST /a c ok OK"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("records\n%q\nwant\n%q", got, want)
	}
}

// TestLocalRedirectNoCellAfter: when the hop after a local redirect runs
// no cell (its Location has no route), the request's last record has no
// cell: the redirecting cell's figures are its own record's only, not
// counted again under the next hop.
func TestLocalRedirectNoCellAfter(t *testing.T) {
	runner := byPath{"/a": func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		res, err := cgiOutput("Location: /nowhere\n\n", sandbox.CauseOK)(ctx, spec)
		res.Usage.CPUUsageUsec, res.Wall, res.UID = 7000, 7*time.Millisecond, 2000000001
		return res, err
	}}
	ts := startServer(t, Config{}, Deps{Runner: runner}, route("a", "/a", "/a"))
	resp, _ := do(t, nil, newRequest(t, "GET", ts.URL+"/a", nil))
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("got %d, want 404 for the Location without a route", resp.StatusCode)
	}
	id := resp.Header.Get(RequestIDHeader)
	ts.recs.byID(t, id)
	var cells []string
	for _, rec := range ts.recs.all() {
		if rec.RequestID == id && rec.Cell {
			cells = append(cells, fmt.Sprintf("%s %s cpu %d wall %s uid %d", rec.Path, rec.Outcome, rec.Usage.CPUUsageUsec, rec.Wall, rec.UID))
		}
	}
	if len(cells) != 1 || !strings.HasPrefix(cells[0], "/a local_redirect") {
		t.Errorf("records with a cell: %q; want only the redirecting cell's", cells)
	}
}

// lateRunner is a fake Runner whose Results are Late (sandbox.WithLateUsage)
// when the spec asks for it: each accounting read waits for release and
// then reports CPU usec equal to the number of its cell. It records each
// spec's LateUsage.
type lateRunner struct {
	out     map[string]string // output by program path
	release chan struct{}
	mu      sync.Mutex
	asked   []bool
	cells   int
}

func (l *lateRunner) Run(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
	res, err := cgiOutput(l.out[spec.Path], sandbox.CauseOK)(ctx, spec)
	l.mu.Lock()
	l.asked = append(l.asked, spec.LateUsage)
	l.cells++
	n := uint64(l.cells)
	l.mu.Unlock()
	if err != nil || !spec.LateUsage {
		res.Usage.CPUUsageUsec = n
		return res, err
	}
	return sandbox.WithLateUsage(res, func() (cgroup.Usage, error) {
		<-l.release
		return cgroup.Usage{CPUUsageUsec: n}, nil
	}), nil
}

// TestLateAccounting: a cell's accounting read after the answer
// (sandbox.Spec.LateUsage, asked for unless the route has Server-Timing)
// holds back neither the response nor the next cell of a local
// redirect; the records come once it is read, in the order the cells
// ran, each with its own figures, and Shutdown waits for them.
func TestLateAccounting(t *testing.T) {
	lr := &lateRunner{release: make(chan struct{}), out: map[string]string{
		"/a": "Location: /b\n\n",
		"/b": "Location: /c\n\n",
		"/c": "Content-Type: text/plain\n\nc",
	}}
	timed := route("c", "/c", "/c")
	timed.ServerTiming = true
	ts := startServer(t, Config{}, Deps{Runner: lr}, route("a", "/a", "/a"), route("b", "/b", "/b"), timed)
	var once sync.Once
	release := func() { once.Do(func() { close(lr.release) }) }
	t.Cleanup(release) // before the Shutdown of startServer's cleanup

	resp, body := do(t, nil, newRequest(t, "GET", ts.URL+"/a", nil))
	if resp.StatusCode != 200 || body != "c" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	lr.mu.Lock()
	asked := fmt.Sprint(lr.asked)
	lr.mu.Unlock()
	if asked != "[true true false]" {
		t.Errorf("LateUsage asked by the cells of /a, /b, /c (Server-Timing): %s, want [true true false]", asked)
	}
	if n := len(ts.recs.all()); n != 0 {
		t.Errorf("%d records before the first cell's accounting was read, want none (they keep the cells' order)", n)
	}

	shut := make(chan error, 1)
	go func() { shut <- ts.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a record still waiting for its accounting", err)
	case <-time.After(50 * time.Millisecond):
	}
	release()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	var got []string
	for _, rec := range ts.recs.all() {
		got = append(got, fmt.Sprintf("%s %s cpu=%d", rec.Route, rec.Outcome, rec.Usage.CPUUsageUsec))
	}
	want := "[a local_redirect cpu=1 b local_redirect cpu=2 c ok cpu=3]"
	if fmt.Sprint(got) != want {
		t.Errorf("records at Shutdown's return %q, want %s", got, want)
	}
}
