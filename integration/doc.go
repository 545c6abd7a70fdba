// Package integration holds cellgate's end-to-end tests: against the built
// binary and the real kernel, on a cgroup v2 host natively or inside the
// microVM that integration/vm boots (make test). A test that needs a real
// cgroup v2 kernel skips with the reason, and fails instead when
// CELLGATE_REQUIRE_KERNEL_TESTS=1.
package integration
