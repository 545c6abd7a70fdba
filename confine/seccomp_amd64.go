package confine

import "golang.org/x/sys/unix"

// deniedSyscalls on amd64 (see seccomp.go).
var deniedSyscalls = append(commonDenied,
	sysnum{"iopl", unix.SYS_IOPL}, sysnum{"ioperm", unix.SYS_IOPERM},
	sysnum{"modify_ldt", unix.SYS_MODIFY_LDT}, sysnum{"uselib", unix.SYS_USELIB}, sysnum{"_sysctl", unix.SYS__SYSCTL},
)

// legacyModeCalls are amd64's calls that set a file's mode and that
// arm64 has only in their *at form, each sent to its check of the
// set-uid and set-gid bits (see seccomp.go).
var legacyModeCalls = map[uint32]label{
	unix.SYS_CHMOD: lblMode1, unix.SYS_CREAT: lblMode1, unix.SYS_MKDIR: lblMode1,
	unix.SYS_MKNOD: lblMode1, unix.SYS_OPEN: lblOpen,
}
