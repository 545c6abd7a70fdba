package confine

import "golang.org/x/sys/unix"

// deniedSyscalls on amd64 (see seccomp.go).
var deniedSyscalls = append(commonDenied,
	sysnum{"iopl", unix.SYS_IOPL}, sysnum{"ioperm", unix.SYS_IOPERM},
	sysnum{"modify_ldt", unix.SYS_MODIFY_LDT}, sysnum{"uselib", unix.SYS_USELIB}, sysnum{"_sysctl", unix.SYS__SYSCTL},
)
