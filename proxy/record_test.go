package proxy

import (
	"testing"

	"github.com/cellgate/cellgate/sandbox"
)

// The access-log record carries what a host-routed, multi-tenant operator
// needs: Host, query string, protocol, User-Agent, Referer.
func TestRecordRequestFields(t *testing.T) {
	ts := startServer(t, Config{}, Deps{Runner: cgiOutput("Content-Type: text/plain\n\nok", sandbox.CauseOK)}, route("r", "/", "/x"))
	req := newRequest(t, "GET", ts.URL+"/a/b?x=1&y=two", nil)
	req.Host = "shop.example.com"
	req.Header.Set("User-Agent", "probe/1.0")
	req.Header.Set("Referer", "https://example.com/from")
	resp, _ := do(t, nil, req)
	rec := ts.recs.byID(t, resp.Header.Get("X-Request-Id"))
	if rec.Host != "shop.example.com" || rec.Query != "x=1&y=two" || rec.Proto != "HTTP/1.1" ||
		rec.UserAgent != "probe/1.0" || rec.Referer != "https://example.com/from" || rec.Path != "/a/b" {
		t.Errorf("record: host %q query %q proto %q user agent %q referer %q path %q",
			rec.Host, rec.Query, rec.Proto, rec.UserAgent, rec.Referer, rec.Path)
	}
}
