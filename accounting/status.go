package accounting

import (
	"encoding/json"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Status is the admin listener's /status: what the daemon is doing right
// now, as php-fpm's status page or nginx's stub status give it. cmd/cellgate
// assembles it from the front end (requests in flight), the cells'
// cgroups (their live memory and CPU), admission (budgets and queues) and
// the pool. Figures that were not measured are null, never 0.
type Status struct {
	Time    time.Time `json:"time"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	// Ready and NotReady are /readyz's answer.
	Ready    bool   `json:"ready"`
	NotReady string `json:"not_ready,omitempty"`
	// InFlight counts the requests in the handler; Requests lists them,
	// oldest first, at most MaxStatusRequests of them.
	InFlight int             `json:"in_flight"`
	Requests []StatusRequest `json:"requests"`
	Global   StatusGlobal    `json:"global"`
	Tenants  []StatusTenant  `json:"tenants"`
	// Pool is nil without cells (--isolation=none).
	Pool *StatusPool `json:"pool"`
}

// MaxStatusRequests bounds Status.Requests.
const MaxStatusRequests = 500

// StatusRequest is one request in flight.
type StatusRequest struct {
	RequestID string `json:"request_id"`
	Method    string `json:"method"`
	Host      string `json:"host"`
	Path      string `json:"path"`
	Client    string `json:"client"`
	Route     string `json:"route"`
	Tenant    string `json:"tenant"`
	// State: reading, queued, running or responding.
	State         string `json:"state"`
	AgeUsec       int64  `json:"age_usec"`
	QueueWaitUsec int64  `json:"queue_wait_usec"`
	// The cell's live figures, read from its cgroup now; null when no
	// cell runs or the figure is not measured (memory controller off).
	CellAgeUsec   *int64  `json:"cell_age_usec"`
	MemoryCurrent *uint64 `json:"memory_current_bytes"`
	CPUUsageUsec  *uint64 `json:"cpu_usage_usec"`
}

// StatusGlobal is the budget shared by all tenants: used vs total (a nil
// total is not limited).
type StatusGlobal struct {
	InFlight     int    `json:"in_flight"`
	MaxCells     *int   `json:"max_cells"`
	Reserved     int64  `json:"reserved_bytes"`
	MemoryBudget *int64 `json:"memory_budget_bytes"`
	Queued       int    `json:"queued"`
}

// StatusTenant is one tenant's budget, used vs total (a nil total is not
// limited), its queue, and its group's memory now.
type StatusTenant struct {
	Name          string  `json:"name"`
	InFlight      int     `json:"in_flight"`
	MaxCells      *int    `json:"max_cells"`
	Reserved      int64   `json:"reserved_bytes"`
	MemoryBudget  *int64  `json:"memory_budget_bytes"`
	Queued        int     `json:"queued"`
	QueueMax      int     `json:"queue_max"`
	Draining      bool    `json:"draining"`
	MemoryCurrent *uint64 `json:"memory_current_bytes"`
}

// StatusPool is the pool of pre-created cells.
type StatusPool struct {
	Idle         int    `json:"idle"`
	Hits         uint64 `json:"hits"`
	Misses       uint64 `json:"misses"`
	CreateErrors uint64 `json:"create_errors"`
	Removed      uint64 `json:"removed"`
	RemoveErrors uint64 `json:"remove_errors"`
}

// StatusRefresh is how often the HTML page reloads itself.
const StatusRefresh = 2 * time.Second

// statusHandler serves GET /status: JSON, or the HTML page for
// ?format=html and for browsers (Accept: text/html). The page has no
// script and no external asset (its Content-Security-Policy forbids
// both); it reloads itself every StatusRefresh.
func statusHandler(status func() Status) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := status()
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		format := r.URL.Query().Get("format")
		if format == "html" || (format == "" && strings.Contains(r.Header.Get("Accept"), "text/html")) {
			h.Set("Content-Type", "text/html; charset=utf-8")
			h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
			if err := statusPage.Execute(w, s); err != nil {
				// The header is sent; the page is cut short. Nothing more to do.
				return
			}
			return
		}
		h.Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s)
	}
}

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"bytes": func(p any) string {
		switch v := p.(type) {
		case *uint64:
			if v == nil {
				return "n/a"
			}
			return formatBytes(float64(*v))
		case *int64:
			if v == nil {
				return "no limit"
			}
			return formatBytes(float64(*v))
		case int64:
			return formatBytes(float64(v))
		}
		return "?"
	},
	"usec": func(p any) string {
		switch v := p.(type) {
		case *int64:
			if v == nil {
				return "-"
			}
			return formatUsec(float64(*v))
		case *uint64:
			if v == nil {
				return "-"
			}
			return formatUsec(float64(*v))
		case int64:
			return formatUsec(float64(v))
		}
		return "?"
	},
	"limit": func(p *int) string {
		if p == nil {
			return "no limit"
		}
		return strconv.Itoa(*p)
	},
	"refresh": func() int { return int(StatusRefresh / time.Second) },
}).Parse(statusHTML))

// formatUsec is a time in microseconds as milliseconds below a second,
// else seconds.
func formatUsec(us float64) string {
	if us < 1e6 {
		return strconv.FormatFloat(us/1e3, 'f', 1, 64) + " ms"
	}
	return strconv.FormatFloat(us/1e6, 'f', 2, 64) + " s"
}

// formatBytes is n in binary units with one decimal.
func formatBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return strconv.FormatFloat(n, 'f', 0, 64) + " B"
	}
	return strconv.FormatFloat(n, 'f', 1, 64) + " " + units[i]
}

const statusHTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{{refresh}}">
<title>cellgate status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b00;font-weight:bold}.ok{color:#070}
</style></head><body>
<h1>cellgate {{.Version}}</h1>
<p id="summary">{{if .Ready}}<span class="ok">ready</span>{{else}}<span class="bad">not ready: {{.NotReady}}</span>{{end}}
&middot; {{.InFlight}} request(s) in flight &middot; {{.Global.Queued}} queued
&middot; at {{.Time.Format "2006-01-02 15:04:05 MST"}}, refreshed every {{refresh}} s</p>

<h2>Requests in flight</h2>
<table id="requests"><tr><th>request id</th><th>tenant</th><th>route</th><th>state</th><th>method</th><th>host</th><th>path</th><th>client</th>
<th>age</th><th>queue wait</th><th>cell age</th><th>memory now</th><th>CPU used</th></tr>
{{range .Requests}}<tr><td>{{.RequestID}}</td><td>{{.Tenant}}</td><td>{{.Route}}</td><td>{{.State}}</td><td>{{.Method}}</td><td>{{.Host}}</td><td>{{.Path}}</td><td>{{.Client}}</td>
<td class="n">{{usec .AgeUsec}}</td><td class="n">{{usec .QueueWaitUsec}}</td><td class="n">{{usec .CellAgeUsec}}</td><td class="n">{{bytes .MemoryCurrent}}</td><td class="n">{{usec .CPUUsageUsec}}</td></tr>
{{else}}<tr><td colspan="13">none</td></tr>{{end}}
</table>

<h2>Tenants</h2>
<table id="tenants"><tr><th>tenant</th><th>cells in flight</th><th>max cells</th><th>memory reserved</th><th>memory budget</th><th>memory now</th><th>queued</th><th>queue size</th></tr>
<tr><td><i>all (global)</i></td><td class="n">{{.Global.InFlight}}</td><td class="n">{{limit .Global.MaxCells}}</td><td class="n">{{bytes .Global.Reserved}}</td><td class="n">{{bytes .Global.MemoryBudget}}</td><td></td><td class="n">{{.Global.Queued}}</td><td></td></tr>
{{range .Tenants}}<tr><td>{{.Name}}{{if .Draining}} (draining){{end}}</td><td class="n">{{.InFlight}}</td><td class="n">{{limit .MaxCells}}</td><td class="n">{{bytes .Reserved}}</td><td class="n">{{bytes .MemoryBudget}}</td><td class="n">{{bytes .MemoryCurrent}}</td><td class="n">{{.Queued}}</td><td class="n">{{.QueueMax}}</td></tr>
{{end}}</table>

{{with .Pool}}<h2>Cell pool</h2>
<table id="pool"><tr><th>idle cells</th><th>hits</th><th>misses</th><th>create errors</th><th>removed</th><th>remove errors</th></tr>
<tr><td class="n">{{.Idle}}</td><td class="n">{{.Hits}}</td><td class="n">{{.Misses}}</td><td class="n">{{.CreateErrors}}</td><td class="n">{{.Removed}}</td><td class="n">{{.RemoveErrors}}</td></tr>
</table>{{end}}
<p>JSON: <a href="?format=json">/status?format=json</a></p>
</body></html>
`
