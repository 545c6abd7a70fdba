// Package policy holds the policy file (tenants, routes, per-request limits),
// its strict decoding and validation, route matching, and admission control.
// It is pure: no syscalls, testable without root. It may be imported by
// proxy and cmd/cellgate.
//
// # The file
//
// The policy is YAML, because operators write it by hand: YAML allows
// comments beside every limit, yaml.v3's Node tree gives a line number for
// every key and value (so every error names file:line and the key), and it
// is the format operators already know from the tools around them. The
// file is decoded by walking that Node tree rather than into tagged
// structs, so that unknown keys, wrong types, bad units and cross-section
// mistakes are all collected in one pass and reported together
// (*InvalidError), each with the line of the offending key and a fix (the
// first 100 by line, and how many more: past that they are one mistake
// repeated). A file is at most MaxFileSize, and so is what it would be
// with its aliases written out.
// examples/policy.yaml is the commented reference; its keys:
//
//	version: 1                       required
//	defaults: {memory, swap, cpu, pids, timeout, max_body}
//	global:   {memory, max_cells}    optional budget over all tenants
//	tenants:  [{name, memory, cpu_weight, cpu, pids, max_cells, queue, queue_timeout}]
//	routes:   [{name, match: {host, path, methods}, tenant, driver, program | dir,
//	            memory, swap, cpu, pids, timeout, max_body,
//	            env, pass_env, user, allow_root, response, server_timing}]
//
// Units: sizes are Kubernetes-style (512k, 64Mi, 1G, 1.5Gi: k, M, G, T are
// powers of 1000, Ki, Mi, Gi, Ti of 1024; ParseBytes), CPU amounts are CPUs
// or millicpus (0.5, 2, 250m, or max; ParseCPU), durations are Go
// durations (500ms, 30s). Relative program and dir paths are resolved
// against the directory of the policy file, so a policy can sit in a
// repository beside its programs.
//
// Limits are converted to the OCI runtime-spec vocabulary
// (specs.LinuxResources; see Limits.Resources and Tenant.Resources), which
// package cgroup writes. Floors (MinMemory, MinMilliCPU, MinPids,
// MinTenantPids) reject values that the kernel accepts but that no program
// could run under; ceilings (MaxSize, MaxMilliCPU, MaxPids less InitPids
// for a request) values the kernel refuses or whose sums would overflow.
//
// # Matching
//
// Policy.Match picks the most specific route: exact host over wildcard host
// over no host, then the longer path prefix (at a segment boundary), then a
// route that lists methods over one that allows any. Parse rejects two
// routes that tie. Request paths with "." or ".." segments are refused
// (ErrBadPath), never cleaned into another route.
//
// # Admission
//
// Admission admits a request when its tenant and the global budget have
// room for its memory reservation (its memory limit) and a cell; otherwise
// it waits in its tenant's bounded FIFO queue (see Admission for the
// queueing and reload rules).
package policy
