package main

import (
	"net/http"
	"net/http/pprof"
	"strconv"
)

// maxProfileSeconds bounds a profile's ?seconds=: net/http/pprof pushes
// the connection's write deadline out by as many seconds as asked, and a
// few requests of a day's delta profile would hold the admin listener's
// connections (and the probes behind them) for a day.
const maxProfileSeconds = 30

// adminHandler is the admin listener's handler: h, and with withPprof Go's
// runtime profiles under /debug/pprof/ (--admin-pprof), behind the Host
// check of adminHostGuard with the names of --admin-hosts. The profiles
// are mounted here, on the admin listener only; the import also registers
// them on http.DefaultServeMux, which cellgate never serves.
func adminHandler(h http.Handler, withPprof bool, hosts map[string]bool) http.Handler {
	if !withPprof {
		return adminHostGuard(h, hosts)
	}
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.Handle("GET /debug/pprof/", boundedSeconds(pprof.Index))
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.Handle("GET /debug/pprof/profile", boundedSeconds(pprof.Profile))
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.Handle("GET /debug/pprof/trace", boundedSeconds(pprof.Trace))
	return adminHostGuard(mux, hosts)
}

// boundedSeconds refuses a profile asked for longer than maxProfileSeconds.
func boundedSeconds(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v := r.URL.Query().Get("seconds"); v != "" {
			if s, err := strconv.ParseFloat(v, 64); err != nil || s > maxProfileSeconds {
				http.Error(w, "seconds: at most "+strconv.Itoa(maxProfileSeconds), http.StatusBadRequest)
				return
			}
		}
		h(w, r)
	})
}
