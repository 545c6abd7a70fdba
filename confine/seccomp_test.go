package confine

import (
	"encoding/binary"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// run interprets a seccomp program as the kernel does for the five
// instruction kinds Filter uses, on a little-endian seccomp_data.
func run(t *testing.T, prog []unix.SockFilter, arch, nr uint32, args ...uint64) uint32 {
	t.Helper()
	ret, _ := runSteps(t, prog, arch, nr, args...)
	return ret
}

// runSteps is run, also returning how many instructions ran.
func runSteps(t *testing.T, prog []unix.SockFilter, arch, nr uint32, args ...uint64) (uint32, int) {
	t.Helper()
	data := make([]byte, 64)
	binary.LittleEndian.PutUint32(data[offNr:], nr)
	binary.LittleEndian.PutUint32(data[offArch:], arch)
	for i, a := range args {
		binary.LittleEndian.PutUint64(data[offArg0Low+8*i:], a)
	}
	var a uint32
	steps := 0
	for pc := 0; pc < len(prog); {
		in := prog[pc]
		pc++
		steps++
		switch in.Code {
		case ldAbsW:
			a = binary.LittleEndian.Uint32(data[in.K:])
		case jeqK, jgeK, jsetK:
			cond := a == in.K
			if in.Code == jgeK {
				cond = a >= in.K
			} else if in.Code == jsetK {
				cond = a&in.K != 0
			}
			if cond {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case retK:
			return in.K, steps
		default:
			t.Fatalf("instruction %d: unknown code %#x", pc-1, in.Code)
		}
	}
	t.Fatal("program ran off its end")
	return 0, steps
}

// TestFilterEveryNumber: for every system call number, each filter's
// verdict is its deny list's (EPERM for a denied call, ENOSYS for clone3
// in a cell and for openat2, allow for any other), reached in a few instructions: the deny
// list is a search tree, not a row of comparisons that loading the filter
// would emulate ~50 deep for each number.
func TestFilterEveryNumber(t *testing.T) {
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no seccomp table for %s", runtime.GOARCH)
	}
	denied := map[uint32]bool{}
	for _, s := range deniedSyscalls {
		denied[s.nr] = true
	}
	for _, c := range []struct {
		name      string
		filter    func() ([]unix.SockFilter, error)
		preloader bool
	}{{"Filter", Filter, false}, {"PreloaderFilter", PreloaderFilter, true}} {
		prog, err := c.filter()
		if err != nil {
			t.Fatal(err)
		}
		longest := 0
		for nr := uint32(0); nr < 2048; nr++ {
			want := uint32(retAllow)
			switch {
			case nr == sysClone, c.preloader && nr == sysMount, nr == sysSocket, nr == sysSocketpair:
				continue // decided by their arguments: TestFilter, TestPreloaderFilter, TestFilterSocket
			case nr == sysClone3:
				if !c.preloader {
					want = retENOSYS
				}
			case nr > newestSyscall, nr == sysOpenat2:
				want = retENOSYS
			case denied[nr]:
				want = retEPERM
			}
			got, steps := runSteps(t, prog, arch, nr)
			if got != want {
				t.Errorf("%s: system call %d: %#x, want %#x", c.name, nr, got, want)
			}
			longest = max(longest, steps)
		}
		if longest > 20 {
			t.Errorf("%s: a verdict takes up to %d instructions, want at most 20 (a row of comparisons took 54)", c.name, longest)
		}
		t.Logf("%s: %d instructions, verdicts in at most %d", c.name, len(prog), longest)
	}
}

func TestFilter(t *testing.T) {
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no seccomp table for %s", runtime.GOARCH)
	}
	prog, err := Filter()
	if err != nil {
		t.Fatal(err)
	}
	if len(prog) > 255 {
		t.Fatalf("%d instructions: jumps may not reach", len(prog))
	}
	for _, s := range deniedSyscalls {
		if got := run(t, prog, arch, s.nr, 0); got != retEPERM {
			t.Errorf("%s: %#x, want EPERM", s.name, got)
		}
	}
	allowed := map[string]uint32{"read": unix.SYS_READ, "write": unix.SYS_WRITE, "execve": unix.SYS_EXECVE, "setuid": unix.SYS_SETUID,
		"wait4": unix.SYS_WAIT4, "mmap": unix.SYS_MMAP, "setsid": unix.SYS_SETSID}
	for name, nr := range allowed {
		if got := run(t, prog, arch, nr, 0); got != retAllow {
			t.Errorf("%s: %#x, want allow", name, got)
		}
	}
	clone := []struct {
		name  string
		flags uint64
		want  uint32
	}{
		{"fork-like clone", uint64(unix.SIGCHLD), retAllow},
		{"thread clone", unix.CLONE_VM | unix.CLONE_THREAD | unix.CLONE_SIGHAND | unix.CLONE_FS | unix.CLONE_FILES, retAllow},
		{"new user namespace", unix.CLONE_NEWUSER | uint64(unix.SIGCHLD), retEPERM},
		{"new net namespace", unix.CLONE_NEWNET, retEPERM},
		{"new cgroup namespace", unix.CLONE_NEWCGROUP, retEPERM},
		{"flags in the high word are not namespaces", 1 << 40, retAllow},
	}
	for _, c := range clone {
		if got := run(t, prog, arch, sysClone, c.flags); got != c.want {
			t.Errorf("clone, %s: %#x, want %#x", c.name, got, c.want)
		}
	}
	if got := run(t, prog, arch, sysClone3, 0); got != retENOSYS {
		t.Errorf("clone3: %#x, want ENOSYS (so that libc falls back to clone)", got)
	}
	if got := run(t, prog, arch+1, unix.SYS_READ, 0); got != retKill {
		t.Errorf("another architecture: %#x, want kill", got)
	}
	if runtime.GOARCH == "amd64" {
		if got := run(t, prog, arch, x32SyscallBit|unix.SYS_READ, 0); got != retEPERM {
			t.Errorf("x32 read: %#x, want EPERM", got)
		}
	}
	// The calls that reach into another process or the mount tree by
	// other doors than ptrace and mount, and a call newer than the table.
	for name, nr := range map[string]uint32{"open_tree_attr": unix.SYS_OPEN_TREE_ATTR, "pidfd_getfd": unix.SYS_PIDFD_GETFD,
		"process_madvise": unix.SYS_PROCESS_MADVISE, "kcmp": unix.SYS_KCMP, "quotactl_fd": unix.SYS_QUOTACTL_FD} {
		if got := run(t, prog, arch, nr, 0); got != retEPERM {
			t.Errorf("%s: %#x, want EPERM", name, got)
		}
	}
	if got := run(t, prog, arch, newestSyscall+1, 0); got != retENOSYS {
		t.Errorf("a call newer than the table (%d): %#x, want ENOSYS", newestSyscall+1, got)
	}
	if got := run(t, prog, arch, newestSyscall, 0); got != retAllow {
		t.Errorf("the newest call the table knows (%d): %#x, want allow", newestSyscall, got)
	}
	if len(Denied()) != len(deniedSyscalls) || Denied()[0] != "ptrace" {
		t.Errorf("Denied() = %v", Denied())
	}
}

// TestFilterCoreLimit: under every filter (a cell's, a preloader's, a
// resident init's, which its programs inherit), RLIMIT_CORE cannot be set
// again, by setrlimit or by prlimit64, whose new limit is checked as a
// whole pointer; it can be read, and every other limit set.
func TestFilterCoreLimit(t *testing.T) {
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no seccomp table for %s", runtime.GOARCH)
	}
	const limit = 0x7ffc_1000 // a pointer to a struct rlimit64
	calls := []struct {
		name string
		nr   uint32
		args []uint64
		want uint32
	}{
		{"setrlimit(RLIMIT_CORE)", sysSetrlimit, []uint64{unix.RLIMIT_CORE, limit}, retEPERM},
		{"setrlimit(RLIMIT_CORE), high bits of the resource set", sysSetrlimit, []uint64{1<<32 | unix.RLIMIT_CORE, limit}, retEPERM},
		{"setrlimit(RLIMIT_NOFILE)", sysSetrlimit, []uint64{unix.RLIMIT_NOFILE, limit}, retAllow},
		{"setrlimit(RLIMIT_CPU)", sysSetrlimit, []uint64{unix.RLIMIT_CPU, limit}, retAllow},
		{"prlimit64 setting RLIMIT_CORE", sysPrlimit64, []uint64{0, unix.RLIMIT_CORE, limit, 0}, retEPERM},
		{"prlimit64 setting and reading RLIMIT_CORE", sysPrlimit64, []uint64{0, unix.RLIMIT_CORE, limit, limit}, retEPERM},
		{"prlimit64 setting RLIMIT_CORE from a pointer above 4 GiB", sysPrlimit64, []uint64{0, unix.RLIMIT_CORE, 0x7fff_0000_0000, 0}, retEPERM},
		{"prlimit64 setting RLIMIT_CORE of another process", sysPrlimit64, []uint64{1, unix.RLIMIT_CORE, limit, 0}, retEPERM},
		{"prlimit64 reading RLIMIT_CORE", sysPrlimit64, []uint64{0, unix.RLIMIT_CORE, 0, limit}, retAllow},
		{"prlimit64 setting RLIMIT_NOFILE", sysPrlimit64, []uint64{0, unix.RLIMIT_NOFILE, limit, 0}, retAllow},
		{"prlimit64 setting RLIMIT_STACK", sysPrlimit64, []uint64{0, unix.RLIMIT_STACK, limit, limit}, retAllow},
	}
	eachFilter(t, func(name string, prog []unix.SockFilter) {
		for _, c := range calls {
			if got := run(t, prog, arch, c.nr, c.args...); got != c.want {
				t.Errorf("%s: %s: %#x, want %#x", name, c.name, got, c.want)
			}
		}
	})
}

// eachFilter calls check with each filter a program may run under: a
// cell's, a preloader's and a resident init's (which its programs
// inherit, under their own clone3 rule).
func eachFilter(t *testing.T, check func(name string, prog []unix.SockFilter)) {
	t.Helper()
	for _, f := range []struct {
		name   string
		filter func() ([]unix.SockFilter, error)
	}{{"Filter", Filter}, {"PreloaderFilter", PreloaderFilter}, {"ResidentFilter", ResidentFilter}} {
		prog, err := f.filter()
		if err != nil {
			t.Fatal(err)
		}
		check(f.name, prog)
	}
}

// TestFilterHugePages: under every filter no call takes pages of the
// host's hugetlb pool (ENOMEM, as a host with none free answers), and the
// same calls without the flag, or with it in a word the kernel does not
// read, are allowed.
func TestFilterHugePages(t *testing.T) {
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no seccomp table for %s", runtime.GOARCH)
	}
	const (
		anon  = unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
		rw    = unix.PROT_READ | unix.PROT_WRITE
		name  = 0x7ffc_1000 // a pointer to the memfd's name
		noFD  = 1<<64 - 1   // mmap's fd -1
		huge1 = 30 << unix.MAP_HUGE_SHIFT
	)
	calls := []struct {
		name string
		nr   uint32
		args []uint64
		want uint32
	}{
		{"mmap anonymous", sysMmap, []uint64{0, 1 << 21, rw, anon, noFD, 0}, retAllow},
		{"mmap of a file, shared", sysMmap, []uint64{0, 4096, unix.PROT_READ, unix.MAP_SHARED, 3, 0}, retAllow},
		{"mmap with MAP_HUGETLB", sysMmap, []uint64{0, 1 << 21, rw, anon | unix.MAP_HUGETLB, noFD, 0}, retNoMem},
		{"mmap with MAP_HUGETLB of 1 GiB pages", sysMmap, []uint64{0, 1 << 30, rw, anon | unix.MAP_HUGETLB | huge1, noFD, 0}, retNoMem},
		{"mmap with MAP_HUGETLB, shared, of a file", sysMmap, []uint64{0, 1 << 21, rw, unix.MAP_SHARED | unix.MAP_HUGETLB, 3, 0}, retNoMem},
		{"mmap with the flag's bit in the high word only", sysMmap, []uint64{0, 4096, rw, anon | unix.MAP_HUGETLB<<32, noFD, 0}, retAllow},
		{"shmget", sysShmget, []uint64{unix.IPC_PRIVATE, 1 << 21, unix.IPC_CREAT | 0o600}, retAllow},
		{"shmget with SHM_HUGETLB", sysShmget, []uint64{unix.IPC_PRIVATE, 1 << 21, unix.IPC_CREAT | shmHugeTLB | 0o600}, retNoMem},
		{"shmget with SHM_HUGETLB of 1 GiB pages", sysShmget, []uint64{unix.IPC_PRIVATE, 1 << 30, unix.IPC_CREAT | shmHugeTLB | huge1 | 0o600}, retNoMem},
		{"memfd_create", sysMemfdCreate, []uint64{name, unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING}, retAllow},
		{"memfd_create with MFD_HUGETLB", sysMemfdCreate, []uint64{name, unix.MFD_CLOEXEC | unix.MFD_HUGETLB}, retNoMem},
		{"memfd_create with MFD_HUGETLB of 2 MiB pages", sysMemfdCreate, []uint64{name, unix.MFD_HUGETLB | unix.MFD_HUGE_2MB}, retNoMem},
	}
	eachFilter(t, func(name string, prog []unix.SockFilter) {
		for _, c := range calls {
			if got := run(t, prog, arch, c.nr, c.args...); got != c.want {
				t.Errorf("%s: %s: %#x, want %#x", name, c.name, got, c.want)
			}
		}
	})
}

// TestFilterSetID: under every filter no call gives a file a set-uid or
// set-gid bit (EPERM), whichever way it sets a mode, and the same calls
// with any other mode are allowed, as are opens whose flags make the
// kernel ignore the mode, whatever it holds.
func TestFilterSetID(t *testing.T) {
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no seccomp table for %s", runtime.GOARCH)
	}
	const atCWD = 1<<64 - 100 // AT_FDCWD, sign-extended
	calls := []modeTest{
		{"fchmod", sysFchmod, func(m uint64) []uint64 { return []uint64{3, m} }},
		{"fchmodat", sysFchmodat, func(m uint64) []uint64 { return []uint64{atCWD, aPath, m} }},
		{"fchmodat2", sysFchmodat2, func(m uint64) []uint64 { return []uint64{atCWD, aPath, m, unix.AT_SYMLINK_NOFOLLOW} }},
		{"mkdirat", sysMkdirat, func(m uint64) []uint64 { return []uint64{atCWD, aPath, m} }},
		{"mknodat", sysMknodat, func(m uint64) []uint64 { return []uint64{atCWD, aPath, reg | m, 0} }},
		{"openat O_CREAT", sysOpenat, func(m uint64) []uint64 {
			return []uint64{atCWD, aPath, unix.O_CREAT | unix.O_WRONLY | unix.O_CLOEXEC, m}
		}},
		{"openat O_TMPFILE", sysOpenat, func(m uint64) []uint64 { return []uint64{atCWD, aPath, tmpfile, m} }},
	}
	for _, c := range legacyModeTests {
		calls = append(calls, c)
	}
	modes := []struct {
		mode uint64
		want uint32
	}{
		{0o644, retAllow}, {0o755, retAllow}, {0o1777, retAllow}, {0o777 | 0xffff_0000_0000_0000, retAllow},
		{0o4755, retEPERM}, {0o2755, retEPERM}, {0o6755, retEPERM}, {0o4000, retEPERM}, {0o2000 | 0o1000, retEPERM},
	}
	eachFilter(t, func(name string, prog []unix.SockFilter) {
		for _, c := range calls {
			for _, m := range modes {
				if got := run(t, prog, arch, c.nr, c.args(m.mode)...); got != m.want {
					t.Errorf("%s: %s with mode %#o: %#x, want %#x", name, c.name, m.mode, got, m.want)
				}
			}
		}
		// Without O_CREAT or O_TMPFILE the kernel ignores the mode, which
		// may hold anything (O_DIRECTORY is part of O_TMPFILE's value).
		for _, flags := range []uint64{unix.O_RDONLY, unix.O_RDWR | unix.O_APPEND, unix.O_DIRECTORY | unix.O_CLOEXEC, unix.O_PATH} {
			if got := run(t, prog, arch, sysOpenat, atCWD, aPath, flags, 0o6777); got != retAllow {
				t.Errorf("%s: openat with flags %#x and a set-id mode it ignores: %#x, want allow", name, flags, got)
			}
			if legacyOpen != 0 {
				if got := run(t, prog, arch, legacyOpen, aPath, flags, 0o6777); got != retAllow {
					t.Errorf("%s: open with flags %#x and a set-id mode it ignores: %#x, want allow", name, flags, got)
				}
			}
		}
		if got := run(t, prog, arch, sysOpenat2, atCWD, aPath, 0x7ffc_2000, 24); got != retENOSYS {
			t.Errorf("%s: openat2: %#x, want ENOSYS (its mode is in memory)", name, got)
		}
	})
}

// Arguments of TestFilterSetID's calls.
const (
	aPath   = 0x7ffc_1000 // a pointer to a path
	tmpfile = unix.O_TMPFILE | unix.O_RDWR
	reg     = unix.S_IFREG
)

// modeTest is a call of TestFilterSetID with its arguments for a mode.
type modeTest struct {
	name string
	nr   uint32
	args func(mode uint64) []uint64
}

// TestFilterSocket: under every filter a socket may be of the families
// and protocols a web program uses, and of no other, whose first socket
// would have the kernel load a module: EAFNOSUPPORT for a family,
// EPROTONOSUPPORT for a type or protocol, as a kernel without them
// answers.
func TestFilterSocket(t *testing.T) {
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no seccomp table for %s", runtime.GOARCH)
	}
	const flags = unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC
	calls := []struct {
		name               string
		family, typ, proto uint64
		want               uint32
	}{
		{"unix stream", unix.AF_UNIX, unix.SOCK_STREAM | flags, 0, retAllow},
		{"unix seqpacket", unix.AF_UNIX, unix.SOCK_SEQPACKET, 0, retAllow},
		{"tcp", unix.AF_INET, unix.SOCK_STREAM | flags, 0, retAllow},
		{"tcp, named", unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP, retAllow},
		{"udp6", unix.AF_INET6, unix.SOCK_DGRAM | unix.SOCK_CLOEXEC, unix.IPPROTO_UDP, retAllow},
		{"ping", unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP, retAllow},
		{"ping6", unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_ICMPV6, retAllow},
		{"raw (CAP_NET_RAW decides)", unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP, retAllow},
		{"mptcp", unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_MPTCP, retAllow},
		{"netlink route", unix.AF_NETLINK, unix.SOCK_RAW | flags, unix.NETLINK_ROUTE, retAllow},
		{"the family's high word is not read", 1<<32 | unix.AF_INET, unix.SOCK_STREAM, 0, retAllow},
		{"raw tcp (CAP_NET_RAW decides)", unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_TCP, retAllow},
		// A protocol of another type: the kernel would run modprobe for it.
		{"stream of udp", unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_UDP, retNoProt},
		{"datagrams of tcp", unix.AF_INET6, unix.SOCK_DGRAM | flags, unix.IPPROTO_TCP, retNoProt},
		{"datagrams of mptcp", unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_MPTCP, retNoProt},
		{"stream of icmp", unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_ICMP, retNoProt},
		{"dccp", unix.AF_INET, unix.SOCK_DCCP, unix.IPPROTO_DCCP, retNoProt},
		{"dccp, default protocol", unix.AF_INET6, unix.SOCK_DCCP | flags, 0, retNoProt},
		{"sctp stream", unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP, retNoProt},
		{"sctp seqpacket", unix.AF_INET6, unix.SOCK_SEQPACKET, 0, retNoProt},
		{"udplite", unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE, retNoProt},
		{"inet packet", unix.AF_INET, unix.SOCK_PACKET, 0, retNoProt},
		{"a type with bit 8", unix.AF_INET, 8 | unix.SOCK_STREAM, 0, retNoProt},
		{"type 0", unix.AF_INET, 0, 0, retNoProt},
		{"netlink netfilter", unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_NETFILTER, retNoProt},
		{"netlink generic", unix.AF_NETLINK, unix.SOCK_DGRAM, unix.NETLINK_GENERIC, retNoProt},
		{"netlink crypto", unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_CRYPTO, retNoProt},
		{"unspec", unix.AF_UNSPEC, unix.SOCK_STREAM, 0, retNoAF},
		{"packet", unix.AF_PACKET, unix.SOCK_RAW, 0, retNoAF},
		{"alg", unix.AF_ALG, unix.SOCK_SEQPACKET, 0, retNoAF},
		{"vsock", unix.AF_VSOCK, unix.SOCK_STREAM, 0, retNoAF},
		{"rds", unix.AF_RDS, unix.SOCK_SEQPACKET, 0, retNoAF},
		{"tipc", unix.AF_TIPC, unix.SOCK_RDM, 0, retNoAF},
		{"appletalk", unix.AF_APPLETALK, unix.SOCK_DGRAM, 0, retNoAF},
		{"bluetooth", unix.AF_BLUETOOTH, unix.SOCK_RAW, 0, retNoAF},
	}
	eachFilter(t, func(name string, prog []unix.SockFilter) {
		for _, c := range calls {
			if got := run(t, prog, arch, sysSocket, c.family, c.typ, c.proto); got != c.want {
				t.Errorf("%s: socket, %s: %#x, want %#x", name, c.name, got, c.want)
			}
			// socketpair creates the family's socket first (a module
			// loaded, an AF_TIPC pair made): the same verdicts.
			if got := run(t, prog, arch, sysSocketpair, c.family, c.typ, c.proto); got != c.want {
				t.Errorf("%s: socketpair, %s: %#x, want %#x", name, c.name, got, c.want)
			}
		}
	})
}

func TestPreloaderFilter(t *testing.T) {
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no seccomp table for %s", runtime.GOARCH)
	}
	prog, err := PreloaderFilter()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range deniedSyscalls {
		if s.nr == sysMount {
			continue
		}
		if got := run(t, prog, arch, s.nr, 0); got != retEPERM {
			t.Errorf("%s: %#x, want EPERM", s.name, got)
		}
	}
	if got := run(t, prog, arch, sysClone3, 0); got != retAllow {
		t.Errorf("clone3: %#x, want allow (CLONE_INTO_CGROUP needs it)", got)
	}
	if got := run(t, prog, arch, sysClone, unix.CLONE_NEWUSER); got != retEPERM {
		t.Errorf("clone(CLONE_NEWUSER): %#x, want EPERM", got)
	}
	mounts := []struct {
		name  string
		flags uint64
		want  uint32
	}{
		{"a new tmpfs", unix.MS_NOSUID | unix.MS_NODEV, retAllow},
		{"a new proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, retAllow},
		{"a remount", unix.MS_REMOUNT | unix.MS_BIND, retEPERM},
		{"a bind", unix.MS_BIND, retEPERM},
		{"a move", unix.MS_MOVE, retEPERM},
		{"a propagation change", unix.MS_REC | unix.MS_SHARED, retEPERM},
	}
	for _, m := range mounts {
		if got := run(t, prog, arch, sysMount, 0, 0, 0, m.flags); got != m.want {
			t.Errorf("mount, %s: %#x, want %#x", m.name, got, m.want)
		}
	}
	if got := run(t, prog, arch+1, unix.SYS_READ, 0); got != retKill {
		t.Errorf("another architecture: %#x, want kill", got)
	}
}

// noClone3 is the rule a resident cell's program loads on top of the
// init's ResidentFilter before its execve, as cellgate-init's no_clone3
// lays it out: clone3 fails with ENOSYS, everything else is left to the
// filter below.
func noClone3() []unix.SockFilter {
	return []unix.SockFilter{
		{Code: ldAbsW, K: offNr},
		{Code: jeqK, K: sysClone3, Jt: 0, Jf: 1},
		{Code: retK, K: retENOSYS},
		{Code: retK, K: retAllow},
	}
}

// TestResidentFilter: a resident cell's program, under the init's
// ResidentFilter and its own no_clone3 rule, gets Filter's verdict for
// every system call number (of the architecture, above the table, x32)
// and every clone flag the tests know; the init alone may clone3.
func TestResidentFilter(t *testing.T) {
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no seccomp table for %s", runtime.GOARCH)
	}
	full, err := Filter()
	if err != nil {
		t.Fatal(err)
	}
	init, err := ResidentFilter()
	if err != nil {
		t.Fatal(err)
	}
	// The kernel runs every filter and takes the verdict of highest
	// precedence: the lowest action, as a signed number (kill first).
	both := func(arch, nr uint32, args ...uint64) uint32 {
		a, b := run(t, init, arch, nr, args...), run(t, noClone3(), arch, nr, args...)
		if int32(b&unix.SECCOMP_RET_ACTION_FULL) < int32(a&unix.SECCOMP_RET_ACTION_FULL) {
			return b
		}
		return a
	}
	nrs := []uint32{x32SyscallBit | unix.SYS_READ}
	for nr := uint32(0); nr <= newestSyscall+2; nr++ {
		nrs = append(nrs, nr)
	}
	for _, nr := range nrs {
		for _, flags := range []uint64{0, uint64(unix.SIGCHLD), unix.CLONE_NEWUSER, unix.CLONE_NEWNET | unix.CLONE_VM, 1 << 40} {
			if got, want := both(arch, nr, flags), run(t, full, arch, nr, flags); got != want {
				t.Errorf("system call %d, first argument %#x: %#x under the resident init's filter and the program's rule, %#x under Filter", nr, flags, got, want)
			}
		}
	}
	if got, want := both(arch+1, unix.SYS_READ), run(t, full, arch+1, unix.SYS_READ); got != want {
		t.Errorf("another architecture: %#x, want %#x", got, want)
	}
	if got := run(t, init, arch, sysClone3, 0); got != retAllow {
		t.Errorf("clone3 under the resident init's own filter: %#x, want allow", got)
	}
}

// TestFilterFor: where a plan's programs run as root of a user namespace
// of their own (Plan.RootMap), its filter allows setns of a user
// namespace alone, and every other call and setns of any other type (0
// included, which takes any) keeps the verdict of Filter (ResidentFilter
// for a resident init), each in no more instructions.
func TestFilterFor(t *testing.T) {
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no seccomp table for %s", runtime.GOARCH)
	}
	for _, resident := range []bool{false, true} {
		base, err := Filter()
		if resident {
			base, err = ResidentFilter()
		}
		if err != nil {
			t.Fatal(err)
		}
		mapped, err := FilterFor(&Plan{RootMap: &RootMap{UID: 1000, GID: 1000}}, resident)
		if err != nil {
			t.Fatal(err)
		}
		for _, nstype := range []uint64{0, unix.CLONE_NEWNS, unix.CLONE_NEWNET, unix.CLONE_NEWPID, unix.CLONE_NEWUSER | unix.CLONE_NEWNS, unix.CLONE_NEWUSER, 1<<32 | unix.CLONE_NEWUSER} {
			want := uint32(retEPERM)
			if nstype&0xffff_ffff == unix.CLONE_NEWUSER {
				want = retAllow
			}
			if got := run(t, mapped, arch, sysSetns, 3, nstype); got != want {
				t.Errorf("resident %v: setns(3, %#x): %#x, want %#x", resident, nstype, got, want)
			}
		}
		for nr := uint32(0); nr <= newestSyscall+2; nr++ {
			if nr == sysSetns {
				continue
			}
			for _, a := range []uint64{0, unix.CLONE_NEWUSER, unix.RLIMIT_CORE, unix.O_CREAT | 0o4755} {
				got, steps := runSteps(t, mapped, arch, nr, a, a, a, a)
				want, baseSteps := runSteps(t, base, arch, nr, a, a, a, a)
				if got != want {
					t.Errorf("resident %v: system call %d (%#x): %#x, want the base filter's %#x", resident, nr, a, got, want)
				}
				if steps > baseSteps {
					t.Errorf("resident %v: system call %d (%#x): verdict in %d instructions, the base filter's in %d", resident, nr, a, steps, baseSteps)
				}
			}
		}
		t.Logf("resident %v: %d instructions (the base filter %d)", resident, len(mapped), len(base))
	}
}
