package main

import (
	"net/http"
	"net/http/pprof"
)

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
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return adminHostGuard(mux, hosts)
}
