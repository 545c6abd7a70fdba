package confine

// deniedSyscalls on arm64 (see seccomp.go).
var deniedSyscalls = commonDenied
