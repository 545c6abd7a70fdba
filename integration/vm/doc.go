// Package vm runs a program inside a throwaway QEMU microVM booted from a
// Debian kernel, with the host's root filesystem shared read-only over
// virtio-9p and cgroup v2 mounted with the memory, cpu, pids and io
// controllers delegated. It exists so that cellgate's integration tests get a
// real cgroup v2 kernel on machines that have none (make test uses it as
// `go test -exec`).
//
// The host side (Prepare, Run) fetches and caches the kernel, installs QEMU
// when it is missing and may be installed, writes the initramfs and boots it.
// The guest side (Guest) is the same static binary running as /init: it loads
// the virtio and 9p modules, mounts the shared root and the kernel
// filesystems, switches root and runs the program, then prints a status line that
// the host parses. Only integration/vm/cmd/vmrun imports this package.
package vm
