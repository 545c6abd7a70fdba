// Package confine owns what a cell may see and reach beyond its cgroup: its
// namespaces (mount, PID, IPC, UTS, network), its filesystem view (read-only
// system directories, the route's program directory and binds, or a rootfs;
// private size-limited tmpfs for /tmp, /var/tmp and /dev/shm; a fresh /proc
// and a minimal /dev), a seccomp deny list, its rlimits, transparent huge
// pages off for a cgi route's program, and the credentials its program
// ends up with.
//
// A Plan is that confinement as data. Build turns a route's settings into a
// Plan once, when a policy is loaded; Prepare encodes it once. Nothing here
// runs per request in the daemon but the encoding of the program's argv,
// environment and credentials (EncodeExec).
//
// Go's SysProcAttr cannot mount or load a seccomp filter between clone and
// exec, so a confined cell starts with an init of its own (cellgate-init, or
// the cellgate binary itself started as argv[0] InitArg0), which reads the
// plan frame on fd 3, applies the Plan to itself (Apply), reports ready,
// then reads the exec frame with the program's stdin, stdout and stderr,
// starts the program as its child, stays PID 1 of the cell's PID namespace
// to reap and forward signals, and reports the program's exit status on
// fd 3 before exiting. Apply is independent of CGI: a fork route's preloader
// is confined by the same init in its exec mode (InitExec, argv[1] ExecArg),
// which applies a Plan.ForPreloader plan to itself and then executes the
// preloader in its own place, so that the preloader stays its starter's
// direct child and no PID namespace's init; its children take the rest of
// the plan themselves (Plan.ChildNamespaces, the tmpfs, a /proc, Filter
// over PreloaderFilter).
//
// The decisions (Build, Steps, the seccomp program, the encodings) are pure
// and tested without root; Apply, Init and the probes change kernel state.
// Package sandbox starts the init; cmd/cellgate wires the two and dispatches
// InitArg0 to Init (or InitExec). confine imports no other cellgate package.
package confine
