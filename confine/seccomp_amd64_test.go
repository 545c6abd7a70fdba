package confine

import "golang.org/x/sys/unix"

// legacyModeTests are amd64's calls that set a mode without an *at
// form's first argument, for TestFilterSetID; legacyOpen is open.
var legacyModeTests = []modeTest{
	{"chmod", unix.SYS_CHMOD, func(m uint64) []uint64 { return []uint64{aPath, m} }},
	{"creat", unix.SYS_CREAT, func(m uint64) []uint64 { return []uint64{aPath, m} }},
	{"mkdir", unix.SYS_MKDIR, func(m uint64) []uint64 { return []uint64{aPath, m} }},
	{"mknod", unix.SYS_MKNOD, func(m uint64) []uint64 { return []uint64{aPath, reg | m, 0} }},
	{"open O_CREAT", unix.SYS_OPEN, func(m uint64) []uint64 { return []uint64{aPath, unix.O_CREAT | unix.O_EXCL | unix.O_WRONLY, m} }},
	{"open O_TMPFILE", unix.SYS_OPEN, func(m uint64) []uint64 { return []uint64{aPath, tmpfile, m} }},
}

const legacyOpen = unix.SYS_OPEN
