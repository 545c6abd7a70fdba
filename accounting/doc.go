// Package accounting turns what a request used, as read from the kernel, into
// access-log records (log/slog; one per answered request and one per cell
// that answered with a local redirect), Prometheus metrics and the optional
// Server-Timing header, and serves the admin endpoints (/metrics, /healthz,
// /readyz). It does not touch the kernel: the tenant totals and admission
// figures it exports come from functions the caller injects. It imports
// cgroup for the Usage type only. It may be imported by proxy and
// cmd/cellgate.
package accounting
