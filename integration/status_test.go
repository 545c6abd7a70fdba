package integration

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// statusPolicy gives the slow request time to outlive the browser's
// start-up, which takes minutes under emulation.
const statusPolicy = `version: 1
defaults: {memory: 64Mi, cpu: 1, pids: 64, timeout: 15m}
tenants:
  - {name: web, memory: 1Gi, max_cells: 8, queue: 10, queue_timeout: 60s}
routes:
  - {name: slow, match: {path: /slow}, tenant: web, program: "{{.CGI}}/slow"}
`

// Issue 12, item 6: the admin listener's status page, rendered by a real
// browser (Debian's chromium, headless; `make chromium` installs it)
// against a running serve, shows a request in flight with its tenant,
// route, state and its cell's live memory and CPU read from the cgroup,
// reloads itself, and references nothing outside the page.
func TestStatusPageInChromium(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		skipOrFail(t, "chromium is not installed (make chromium installs it): %v", err)
	}
	g := startGate(t, gateOptions{policy: statusPolicy})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	slowDone := make(chan struct{})
	go func() {
		defer close(slowDone)
		req, _ := http.NewRequestWithContext(ctx, "GET", g.url+"/slow?ms=600000", nil)
		req.Host = "status.example"
		// Not g.client, whose timeout is shorter than the browser's
		// start-up under emulation: ctx ends this request.
		if resp, err := (&http.Client{}).Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	defer func() { cancel(); <-slowDone }()

	// The JSON view, until the request runs in its cell.
	var id string
	deadline := time.Now().Add(2 * time.Minute)
	for id == "" {
		if time.Now().After(deadline) {
			t.Fatalf("no running /slow request with live cell figures in /status after 2 minutes")
		}
		_, body := g.adminGet("/status?format=json")
		var st struct {
			Requests []struct {
				ID     string  `json:"request_id"`
				Route  string  `json:"route"`
				Tenant string  `json:"tenant"`
				State  string  `json:"state"`
				Mem    *uint64 `json:"memory_current_bytes"`
				CPU    *uint64 `json:"cpu_usage_usec"`
			} `json:"requests"`
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("/status?format=json: %v\n%s", err, body)
		}
		for _, r := range st.Requests {
			if r.Route == "slow" && r.State == "running" && r.Mem != nil && r.CPU != nil {
				if r.Tenant != "web" {
					t.Fatalf("running request in /status: %+v", r)
				}
				// A resident cell's request runs from its hand-off, in a
				// cell whose process, started ahead, has charged nothing
				// to it until its execve: the figures are live once the
				// program's memory shows.
				if *r.Mem > 0 {
					id = r.ID
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}

	profile := t.TempDir()
	bctx, bcancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer bcancel()
	// One process and nothing in the background: each process of the
	// browser costs much under emulation. --no-sandbox: the test runs as
	// root, which chromium's sandbox refuses.
	cmd := exec.CommandContext(bctx, browser, "--headless", "--no-sandbox", "--single-process", "--no-zygote",
		"--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
		"--disable-extensions", "--disable-background-networking", "--disable-sync", "--disable-component-update",
		"--mute-audio", "--user-data-dir="+profile, "--dump-dom", g.admin+"/status?format=html")
	cmd.Env = append(os.Environ(), "HOME="+profile, "XDG_CONFIG_HOME="+filepath.Join(profile, "config"), "XDG_CACHE_HOME="+filepath.Join(profile, "cache"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	dom, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v\n%s", err, stderr.String())
	}
	page := string(dom)
	row := regexp.MustCompile(`<tr><td>` + regexp.QuoteMeta(id) + `</td>.*?</tr>`).FindString(strings.ReplaceAll(page, "\n", ""))
	if row == "" {
		t.Fatalf("the page chromium rendered has no row for request %s:\n%s", id, page)
	}
	for _, want := range []string{"<td>web</td>", "<td>slow</td>", "<td>running</td>", "<td>status.example</td>", "<td>/slow</td>"} {
		if !strings.Contains(row, want) {
			t.Errorf("the request's row lacks %s: %s", want, row)
		}
	}
	if !regexp.MustCompile(`\d+(\.\d)? [KMG]iB</td>`).MatchString(row) || !regexp.MustCompile(`\d+\.\d+ m?s</td>`).MatchString(row) {
		t.Errorf("the request's row has no live memory or CPU figure: %s", row)
	}
	if !strings.Contains(page, `http-equiv="refresh"`) {
		t.Errorf("the page does not reload itself:\n%s", page)
	}
	if regexp.MustCompile(`<(script|link|img|iframe)\b`).MatchString(page) {
		t.Errorf("the page loads something from outside itself:\n%s", page)
	}
	if !strings.Contains(page, `<table id="tenants">`) || !strings.Contains(page, `<table id="pool">`) || !strings.Contains(page, "1.0 GiB") {
		t.Errorf("the page lacks the tenants or the pool:\n%s", page)
	}
}
