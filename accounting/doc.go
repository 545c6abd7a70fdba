// Package accounting turns what a request used, as read from the kernel, into
// one access-log record (log/slog), Prometheus metrics and the optional
// Server-Timing header. It does not touch the kernel. It may be imported by
// proxy and cmd/cellgate.
package accounting
