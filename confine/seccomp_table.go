package confine

import "golang.org/x/sys/unix"

// auditArch is the AUDIT_ARCH_* a filter checks, per GOARCH.
var auditArch = map[string]uint32{
	"amd64": unix.AUDIT_ARCH_X86_64,
	"arm64": unix.AUDIT_ARCH_AARCH64,
}

const (
	sysClone       = unix.SYS_CLONE
	sysClone3      = unix.SYS_CLONE3
	sysMount       = unix.SYS_MOUNT
	sysSetrlimit   = unix.SYS_SETRLIMIT
	sysPrlimit64   = unix.SYS_PRLIMIT64
	sysSocket      = unix.SYS_SOCKET
	sysSocketpair  = unix.SYS_SOCKETPAIR
	sysMmap        = unix.SYS_MMAP
	sysShmget      = unix.SYS_SHMGET
	sysMemfdCreate = unix.SYS_MEMFD_CREATE
	sysFchmod      = unix.SYS_FCHMOD
	sysFchmodat    = unix.SYS_FCHMODAT
	sysFchmodat2   = unix.SYS_FCHMODAT2
	sysMkdirat     = unix.SYS_MKDIRAT
	sysMknodat     = unix.SYS_MKNODAT
	sysOpenat      = unix.SYS_OPENAT
	sysOpenat2     = unix.SYS_OPENAT2
	sysSetns       = unix.SYS_SETNS
)

// newestSyscall is the highest system call number x/sys/unix knows (the
// same on amd64 and arm64); a filter answers any higher number ENOSYS, as
// a kernel without it would, so that a call added to a later kernel (the
// mount family grew open_tree_attr in 6.15) is not allowed before it has
// been looked at. When x/sys gains newer calls, weigh them for the deny
// list and move this.
const newestSyscall = unix.SYS_RSEQ_SLICE_YIELD

// commonDenied are the calls denied on every architecture: tracing other
// processes (and reaching into them by other means: their fds, their
// memory's advice, comparing their kernel objects), eBPF and perf, userfaultfd (a favourite of exploits), the
// kernel keyring, the mount family and namespaces, kexec and modules,
// io_uring and native AIO (io_setup: its contexts count against
// fs.aio-max-nr, one limit for the whole machine, which a single call
// can take whole while its process lives), swap, reboot, accounting, the kernel log, file handles (a way
// around mount namespaces), and setting the clock.
var commonDenied = []sysnum{
	{"ptrace", unix.SYS_PTRACE}, {"process_vm_readv", unix.SYS_PROCESS_VM_READV}, {"process_vm_writev", unix.SYS_PROCESS_VM_WRITEV},
	{"pidfd_getfd", unix.SYS_PIDFD_GETFD}, {"process_madvise", unix.SYS_PROCESS_MADVISE}, {"kcmp", unix.SYS_KCMP},
	{"bpf", unix.SYS_BPF}, {"perf_event_open", unix.SYS_PERF_EVENT_OPEN}, {"userfaultfd", unix.SYS_USERFAULTFD},
	{"keyctl", unix.SYS_KEYCTL}, {"add_key", unix.SYS_ADD_KEY}, {"request_key", unix.SYS_REQUEST_KEY},
	{"mount", unix.SYS_MOUNT}, {"umount2", unix.SYS_UMOUNT2}, {"pivot_root", unix.SYS_PIVOT_ROOT},
	{"open_tree", unix.SYS_OPEN_TREE}, {"move_mount", unix.SYS_MOVE_MOUNT}, {"fsopen", unix.SYS_FSOPEN},
	{"fsconfig", unix.SYS_FSCONFIG}, {"fsmount", unix.SYS_FSMOUNT}, {"fspick", unix.SYS_FSPICK},
	{"mount_setattr", unix.SYS_MOUNT_SETATTR}, {"open_tree_attr", unix.SYS_OPEN_TREE_ATTR}, {"unshare", unix.SYS_UNSHARE}, {"setns", unix.SYS_SETNS},
	{"kexec_load", unix.SYS_KEXEC_LOAD}, {"kexec_file_load", unix.SYS_KEXEC_FILE_LOAD},
	{"init_module", unix.SYS_INIT_MODULE}, {"finit_module", unix.SYS_FINIT_MODULE}, {"delete_module", unix.SYS_DELETE_MODULE},
	{"io_uring_setup", unix.SYS_IO_URING_SETUP}, {"io_uring_enter", unix.SYS_IO_URING_ENTER}, {"io_uring_register", unix.SYS_IO_URING_REGISTER},
	{"io_setup", unix.SYS_IO_SETUP},
	{"swapon", unix.SYS_SWAPON}, {"swapoff", unix.SYS_SWAPOFF}, {"reboot", unix.SYS_REBOOT},
	{"acct", unix.SYS_ACCT}, {"syslog", unix.SYS_SYSLOG}, {"quotactl", unix.SYS_QUOTACTL}, {"quotactl_fd", unix.SYS_QUOTACTL_FD},
	{"open_by_handle_at", unix.SYS_OPEN_BY_HANDLE_AT}, {"name_to_handle_at", unix.SYS_NAME_TO_HANDLE_AT},
	{"lookup_dcookie", unix.SYS_LOOKUP_DCOOKIE}, {"vhangup", unix.SYS_VHANGUP}, {"nfsservctl", unix.SYS_NFSSERVCTL},
	{"settimeofday", unix.SYS_SETTIMEOFDAY}, {"clock_settime", unix.SYS_CLOCK_SETTIME},
	{"adjtimex", unix.SYS_ADJTIMEX}, {"clock_adjtime", unix.SYS_CLOCK_ADJTIME},
}
