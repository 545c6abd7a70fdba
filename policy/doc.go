// Package policy holds the policy file (tenants, routes, per-request limits),
// its strict decoding and validation, route matching, and admission control.
// It is pure: no syscalls, testable without root. It may be imported by
// proxy and cmd/cellgate.
package policy
