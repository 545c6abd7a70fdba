package confine

// deniedSyscalls on arm64 (see seccomp.go).
var deniedSyscalls = commonDenied

// legacyModeCalls: arm64 sets modes only with the *at calls and fchmod.
var legacyModeCalls = map[uint32]label{}
