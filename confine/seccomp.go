package confine

import (
	"fmt"
	"runtime"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The seccomp filter is a deny list: what an ordinary CGI program never
// needs and kernel exploits do. A denied call fails with EPERM, not a kill,
// so a program that probes for a feature degrades instead of dying. Three
// exceptions: clone3 fails with ENOSYS, because its flags sit in memory a
// filter cannot read and libc falls back to clone only on ENOSYS; a number
// above the newest call the table knows fails with ENOSYS too, as on a
// kernel without it, so that a deny list cannot miss a call added later;
// and a system call of another architecture (an i386 binary on amd64)
// kills the process, since its numbers mean other calls.
//
// Three more calls are decided by their arguments besides clone's flags:
// setrlimit and prlimit64 may not set RLIMIT_CORE (EPERM; prlimit64 may
// still read it). A cell's core limit is CoreLimit, which the kernel
// answers with no core at all, whether it would write a file or pipe
// the core to the host's core_pattern helper; a program that lowered it
// to 0 would have that helper started (fs/coredump.c ignores the limit
// for a pipe but for the value 1), as root on the host and outside the
// cell's limits, for each of its crashes.
//
// And socket: a family or protocol the kernel has not loaded yet is a
// module it loads on the first socket that asks for it (modprobe,
// started by the kernel as root on the host), which is how the rarely
// used protocols behind many kernel exploits are reached (DCCP, SCTP,
// RDS, TIPC, AF_ALG, VSOCK...). A cell may open sockets of the families
// a web program uses: AF_UNIX; AF_INET and AF_INET6 of the stream,
// datagram and raw types with TCP, UDP, ICMP (ping) or MPTCP or the
// type's default protocol; AF_NETLINK of NETLINK_ROUTE (getaddrinfo,
// interface lists). Any other family fails with EAFNOSUPPORT and any
// other type or protocol with EPROTONOSUPPORT, as on a kernel built
// without them.
//
// And the three calls that take huge pages of the host's hugetlb pool
// (vm.nr_hugepages): mmap with MAP_HUGETLB, shmget with SHM_HUGETLB and
// memfd_create with MFD_HUGETLB fail with ENOMEM, as on a host with none
// free. Those pages are not charged to a cell's memory.max (unless
// cgroup2 is mounted with memory_hugetlb_accounting, Linux 6.7), and the
// hugetlb controller that could limit them is not delegated by systemd,
// so a cell could otherwise map the whole pool the host reserved for a
// database while it ran. A program asking for huge pages is written to
// fall back to small ones on that error (glibc's malloc, the JVM,
// PostgreSQL's huge_pages=try).
//
// And the calls that give a file a mode: no set-uid or set-gid bit
// (EPERM), as systemd's RestrictSUIDSGID= and Nix's build sandbox refuse
// them. chmod, fchmod, fchmodat and fchmodat2; mkdir, mkdirat, mknod and
// mknodat; creat, and open and openat with O_CREAT or O_TMPFILE (the only
// flags with which the kernel reads the mode; openat2, whose flags and
// mode sit in memory a filter cannot read, fails with ENOSYS, on which
// its callers fall back to openat). A cell's own set-uid file runs with
// no new privileges in a cell, whose mounts are nosuid besides; but a
// file the cell leaves in a writable mount is the host's too, where it
// runs as its owner for whoever executes it through a mount without
// nosuid: as root, where the program ran as root, whatever capabilities
// it had (a file's owner sets its mode without any).
//
// It is assembled here from x/sys/unix's classic BPF types rather than
// with libseccomp-golang, which needs cgo (cellgate builds static), or
// golang.org/x/net/bpf, whose virtual machine reads big-endian packets and
// so cannot run a seccomp program as the kernel does; the program uses five
// instruction kinds, interpreted again by the tests.

// seccompData offsets (struct seccomp_data, little-endian).
const (
	offNr         = 0
	offArch       = 4
	offArg0Low    = 16
	offArg1Low    = 16 + 8
	offArg2Low    = 16 + 2*8
	offArg2High   = 16 + 2*8 + 4
	offArg3Low    = 16 + 3*8
	x32SyscallBit = 0x40000000
)

// setIDBits are a mode's set-uid and set-gid bits (S_ISUID, S_ISGID).
const setIDBits = unix.S_ISUID | unix.S_ISGID

// modeFlags are the open flags with which the kernel reads open's mode:
// O_CREAT and O_TMPFILE's own bit (O_TMPFILE includes O_DIRECTORY, with
// which alone the mode is not read, and may be any value).
const modeFlags = unix.O_CREAT | unix.O_TMPFILE&^unix.O_DIRECTORY

// shmHugeTLB is shmget's SHM_HUGETLB (include/uapi/linux/shm.h), which
// x/sys/unix does not define.
const shmHugeTLB = 0o4000

// cloneNewFlags are the namespace flags clone may not take: a new user
// namespace is the door to many kernel bugs, and the cell already has the
// namespaces it may have.
const cloneNewFlags = unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWNET |
	unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWTIME

// Denied is the deny list by name, for documentation and cellgate check;
// the numbers come from syscallTable of the architecture.
func Denied() []string {
	names := make([]string, 0, len(deniedSyscalls))
	for _, s := range deniedSyscalls {
		names = append(names, s.name)
	}
	return names
}

type sysnum struct {
	name string
	nr   uint32
}

// the seccomp return values.
const (
	retAllow  = unix.SECCOMP_RET_ALLOW
	retKill   = unix.SECCOMP_RET_KILL_PROCESS
	retEPERM  = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	retENOSYS = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
	retNoAF   = unix.SECCOMP_RET_ERRNO | uint32(unix.EAFNOSUPPORT)
	retNoProt = unix.SECCOMP_RET_ERRNO | uint32(unix.EPROTONOSUPPORT)
	retNoMem  = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOMEM)
)

// BPF opcodes used.
const (
	ldAbsW = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	jeqK   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	jgeK   = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
	jsetK  = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
	retK   = unix.BPF_RET | unix.BPF_K
)

// label names a jump target while the program is assembled.
type label int

const (
	noLabel label = iota
	lblDeny
	lblNoSys
	lblClone
	lblMount
	lblSetrlimit
	lblPrlimit
	lblSocket
	lblInet
	lblInetDgram
	lblInetRaw
	lblNoAF
	lblNoProt
	lblSocketOK
	lblMmap
	lblShmget
	lblMemfd
	lblNoMem
	lblOpen   // open(path, flags, mode)
	lblOpenat // openat(dirfd, path, flags, mode)
	lblMode1  // the mode is the second argument
	lblMode2  // the third
	lblMode3  // the fourth
	lblSetns
	lblAllow
	lblTree // the first of denyTree's labels
)

type insn struct {
	op     uint16
	k      uint32
	jt, jf label // targets; noLabel = the next instruction
	at     label // this instruction is the target of that label
}

// Filter returns the default deny list as a seccomp BPF program for the
// running architecture, or an error on an architecture it has no table for.
func Filter() ([]unix.SockFilter, error) { return FilterFor(&Plan{}, false) }

// runningArch is the running architecture's AUDIT_ARCH, or an error on
// an architecture the filters have no system call table for.
func runningArch() (uint32, error) {
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		return 0, fmt.Errorf("seccomp: no system call table for %s (amd64 and arm64 only): set seccomp: off on the route", runtime.GOARCH)
	}
	return arch, nil
}

// FilterFor is the filter of a plan's cells: Filter, or ResidentFilter
// for a resident init; where the plan's programs run as root of a user
// namespace of their own (Plan.RootMap), setns is allowed for a user
// namespace alone (its nstype CLONE_NEWUSER; 0, any type, stays
// refused), with which each enters its own before its execve. That gives
// a program nothing: entering a user namespace takes CAP_SYS_ADMIN in
// it, which a program holds in its own namespace only, which the kernel
// refuses to enter again, and the filter refuses it a new one.
func FilterFor(p *Plan, resident bool) ([]unix.SockFilter, error) {
	arch, err := runningArch()
	if err != nil {
		return nil, err
	}
	clone3 := uint32(sysClone3)
	if resident {
		clone3 = 0
	}
	return assemble(filterProgram(arch, runtime.GOARCH == "amd64", deniedSyscalls, sysClone, clone3, 0, p.RootMap != nil))
}

// mountChangeFlags are the mount flags that change an existing mount
// rather than create one: a preloader may not use them.
const mountChangeFlags = unix.MS_REMOUNT | unix.MS_BIND | unix.MS_MOVE | unix.MS_REC |
	unix.MS_SHARED | unix.MS_PRIVATE | unix.MS_SLAVE | unix.MS_UNBINDABLE

// PreloaderFilter is the filter a fork route's preloader runs under
// (Plan.ForPreloader): the deny list, but clone3 is allowed, since
// CLONE_INTO_CGROUP exists only there (the new user namespaces it could
// create are refused by the preloader's user namespace limit instead), and
// mount is allowed for a new mount (no remount, bind, move or propagation
// change): each child mounts its private tmpfs and its /proc, then loads
// Filter on top of this one, so that the request's code runs under both.
func PreloaderFilter() ([]unix.SockFilter, error) {
	arch, err := runningArch()
	if err != nil {
		return nil, err
	}
	return assemble(filterProgram(arch, runtime.GOARCH == "amd64", deniedSyscalls, sysClone, sysClone3, sysMount, false))
}

// ResidentFilter is the filter a resident cell's init runs under
// (Plan.Resident): the deny list, but clone3 is allowed, since the init
// clones each request's program into the request's group with it. Its
// programs inherit it, and each loads a rule of its own on top before its
// execve (cellgate-init's no_clone3: clone3 fails with ENOSYS), so that a
// program runs under the same verdicts as Filter's, every one of them
// (TestResidentFilter). The init loads it once; a program's own rule is
// four instructions, where loading Filter itself for each program (and
// freeing it at its end) cost a request more than its execve.
func ResidentFilter() ([]unix.SockFilter, error) { return FilterFor(&Plan{}, true) }

// filterProgram lays the filter out: check the architecture, refuse x32
// numbers (amd64), answer numbers above newestSyscall ENOSYS, send clone
// to the flag check and clone3 to ENOSYS, then
// look the number up in the deny list (denyTree), where setrlimit and
// prlimit64 go to their checks of RLIMIT_CORE, socket to its check
// of the family and protocol, mmap, shmget and memfd_create to their
// checks of the huge page flag, the calls that set a file's mode to the
// check of its set-uid and set-gid bits, and openat2 to ENOSYS. With mount non-zero (a
// preloader's filter) clone3 is allowed and mount goes to the flag check
// instead of the deny list; with clone3 zero (a resident init's) clone3
// is allowed; with setnsUser setns goes to the check of its nstype
// (FilterFor).
func filterProgram(arch uint32, x32 bool, denied []sysnum, clone, clone3, mount uint32, setnsUser bool) []insn {
	p := []insn{
		{op: ldAbsW, k: offArch},
		{op: jeqK, k: arch, jt: skipOne}, // the right architecture jumps over the kill
		{op: retK, k: retKill},
		{op: ldAbsW, k: offNr},
	}
	if x32 {
		p = append(p, insn{op: jgeK, k: x32SyscallBit, jt: lblDeny})
	}
	p = append(p,
		insn{op: jgeK, k: newestSyscall + 1, jt: lblNoSys},
		insn{op: jeqK, k: clone, jt: lblClone},
	)
	if mount != 0 {
		p = append(p, insn{op: jeqK, k: mount, jt: lblMount})
	} else if clone3 != 0 {
		p = append(p, insn{op: jeqK, k: clone3, jt: lblNoSys})
	}
	var nrs []uint32
	for _, s := range denied {
		if mount == 0 || s.nr != mount {
			nrs = append(nrs, s.nr)
		}
	}
	// The calls decided by their arguments are found by the same search,
	// each sent to its own check.
	target := map[uint32]label{
		sysSetrlimit: lblSetrlimit, sysPrlimit64: lblPrlimit, sysSocket: lblSocket, sysSocketpair: lblSocket,
		sysMmap: lblMmap, sysShmget: lblShmget, sysMemfdCreate: lblMemfd,
		sysFchmod: lblMode1, sysFchmodat: lblMode2, sysFchmodat2: lblMode2,
		sysMkdirat: lblMode2, sysMknodat: lblMode2, sysOpenat: lblOpenat, sysOpenat2: lblNoSys,
	}
	for nr, l := range legacyModeCalls {
		target[nr] = l
	}
	if setnsUser {
		target[sysSetns] = lblSetns
	}
	for nr := range target {
		nrs = append(nrs, nr)
	}
	slices.Sort(nrs)
	next := lblTree
	p = denyTree(p, slices.Compact(nrs), target, &next)
	p = append(p,
		insn{op: ldAbsW, k: offArg0Low, at: lblClone},
		insn{op: jsetK, k: cloneNewFlags, jt: lblDeny},
		insn{op: retK, k: retAllow},
		// mmap(addr, length, prot, flags, fd, offset), shmget(key, size,
		// flags), memfd_create(name, flags): no huge page flag.
		insn{op: ldAbsW, k: offArg3Low, at: lblMmap},
		insn{op: jsetK, k: unix.MAP_HUGETLB, jt: lblNoMem, jf: lblAllow},
		insn{op: ldAbsW, k: offArg2Low, at: lblShmget},
		insn{op: jsetK, k: shmHugeTLB, jt: lblNoMem, jf: lblAllow},
		insn{op: ldAbsW, k: offArg1Low, at: lblMemfd},
		insn{op: jsetK, k: unix.MFD_HUGETLB, jt: lblNoMem, jf: lblAllow},
		// A mode (a umode_t, in the low word) without S_ISUID or S_ISGID;
		// open's and openat's only where their flags make the kernel read it.
		insn{op: ldAbsW, k: offArg1Low, at: lblOpen},
		insn{op: jsetK, k: modeFlags, jt: lblMode2, jf: lblAllow},
		insn{op: ldAbsW, k: offArg2Low, at: lblOpenat},
		insn{op: jsetK, k: modeFlags, jt: lblMode3, jf: lblAllow},
		insn{op: ldAbsW, k: offArg1Low, at: lblMode1},
		insn{op: jsetK, k: setIDBits, jt: lblDeny, jf: lblAllow},
		insn{op: ldAbsW, k: offArg2Low, at: lblMode2},
		insn{op: jsetK, k: setIDBits, jt: lblDeny, jf: lblAllow},
		insn{op: ldAbsW, k: offArg3Low, at: lblMode3},
		insn{op: jsetK, k: setIDBits, jt: lblDeny, jf: lblAllow},
		// setrlimit(resource, new): the resource is an unsigned int, its
		// low word all the kernel reads.
		insn{op: ldAbsW, k: offArg0Low, at: lblSetrlimit},
		insn{op: jeqK, k: unix.RLIMIT_CORE, jt: lblDeny, jf: lblAllow},
		// prlimit64(pid, resource, new, old): RLIMIT_CORE only with no
		// new limit (a NULL pointer, both words 0).
		insn{op: ldAbsW, k: offArg1Low, at: lblPrlimit},
		insn{op: jeqK, k: unix.RLIMIT_CORE, jf: lblAllow},
		insn{op: ldAbsW, k: offArg2Low},
		insn{op: jeqK, k: 0, jf: lblDeny},
		insn{op: ldAbsW, k: offArg2High},
		insn{op: jeqK, k: 0, jf: lblDeny},
	)
	if setnsUser {
		// setns(fd, nstype): an int, its low word all the kernel reads.
		p = append(p,
			insn{op: retK, k: retAllow},
			insn{op: ldAbsW, k: offArg1Low, at: lblSetns},
			insn{op: jeqK, k: unix.CLONE_NEWUSER, jf: lblDeny},
		)
	}
	p = append(p, insn{op: retK, k: retAllow, at: lblAllow})
	p = append(p, socketCheck()...)
	if mount != 0 {
		p = append(p,
			insn{op: ldAbsW, k: offArg3Low, at: lblMount},
			insn{op: jsetK, k: mountChangeFlags, jt: lblDeny},
			insn{op: retK, k: retAllow},
		)
	}
	return append(p,
		insn{op: retK, k: retNoMem, at: lblNoMem},
		insn{op: retK, k: retENOSYS, at: lblNoSys},
		insn{op: retK, k: retEPERM, at: lblDeny},
	)
}

// The protocols a cell's socket may ask for, by family and, for inet, by
// type (the package's comment says why): a protocol the type does not
// have (a stream of UDP) has the kernel run modprobe for it, as one it
// has not loaded would.
var (
	inetStream       = []uint32{0, unix.IPPROTO_TCP, unix.IPPROTO_MPTCP}
	inetDgram        = []uint32{0, unix.IPPROTO_UDP, unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6}
	inetRaw          = []uint32{0, unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6, unix.IPPROTO_MPTCP}
	netlinkProtocols = []uint32{unix.NETLINK_ROUTE}
)

// socketCheck is socket's check, at lblSocket, and socketpair's: socket(family, type,
// protocol) and socketpair(family, type, protocol, sv), each an int of
// which the kernel reads the low word. socketpair too: the kernel creates
// the family's socket (loading its module) before it asks the family for
// a pair, and some families (AF_TIPC) make one. The
// type carries SOCK_NONBLOCK and SOCK_CLOEXEC above its low four bits;
// of those bits, SOCK_STREAM, SOCK_DGRAM and SOCK_RAW (1 to 3) are the
// ones with neither 4 nor 8 set.
func socketCheck() []insn {
	p := []insn{
		{op: ldAbsW, k: offArg0Low, at: lblSocket},
		{op: jeqK, k: unix.AF_UNIX, jt: lblSocketOK},
		{op: jeqK, k: unix.AF_INET, jt: lblInet},
		{op: jeqK, k: unix.AF_INET6, jt: lblInet},
		{op: jeqK, k: unix.AF_NETLINK, jf: lblNoAF},
		{op: ldAbsW, k: offArg2Low},
	}
	for _, proto := range netlinkProtocols {
		p = append(p, insn{op: jeqK, k: proto, jt: lblSocketOK})
	}
	// SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_RAW 3: told apart by bits 0
	// and 1.
	p = append(p,
		insn{op: retK, k: retNoProt},
		insn{op: ldAbsW, k: offArg1Low, at: lblInet},
		insn{op: jsetK, k: 0xc, jt: lblNoProt},
		insn{op: jsetK, k: 0x3, jf: lblNoProt},
		insn{op: jsetK, k: 0x1, jf: lblInetDgram},
		insn{op: jsetK, k: 0x2, jt: lblInetRaw},
	)
	for _, list := range []struct {
		at     label
		protos []uint32
	}{{noLabel, inetStream}, {lblInetDgram, inetDgram}, {lblInetRaw, inetRaw}} {
		p = append(p, insn{op: ldAbsW, k: offArg2Low, at: list.at})
		for _, proto := range list.protos {
			p = append(p, insn{op: jeqK, k: proto, jt: lblSocketOK})
		}
		p = append(p, insn{op: retK, k: retNoProt})
	}
	return append(p,
		insn{op: retK, k: retNoProt, at: lblNoProt},
		insn{op: retK, k: retAllow, at: lblSocketOK},
		insn{op: retK, k: retNoAF, at: lblNoAF},
	)
}

// denyTree appends the lookup of the system call number (in A) in nrs,
// sorted: a binary search on JGE down to runs of at most denyRun numbers
// compared one by one, each run ending in allow. A number found jumps to
// its label in target, or to the denial. A row of comparisons
// costs little per call (the kernel caches the verdict of a call that does
// not depend on its arguments), but loading the filter emulates it for
// every system call number to fill that cache, and with ~50 denied calls
// in a row that emulation was most of the load every cell pays. The
// tree's verdicts took at most 18 instructions (the row's up to 54), for
// 82 instructions in all instead of 68 (with the argument checks since,
// 20 and 126). next numbers the labels of the right halves.
func denyTree(p []insn, nrs []uint32, target map[uint32]label, next *label) []insn {
	if len(nrs) <= denyRun {
		for _, nr := range nrs {
			to, ok := target[nr]
			if !ok {
				to = lblDeny
			}
			p = append(p, insn{op: jeqK, k: nr, jt: to})
		}
		return append(p, insn{op: retK, k: retAllow})
	}
	mid := len(nrs) / 2
	right := *next
	*next++
	p = append(p, insn{op: jgeK, k: nrs[mid], jt: right})
	p = denyTree(p, nrs[:mid], target, next)
	start := len(p)
	p = denyTree(p, nrs[mid:], target, next)
	p[start].at = right
	return p
}

// denyRun is the most numbers denyTree compares one by one.
const denyRun = 8

// skipOne is a pseudo-label: jump over the next instruction.
const skipOne label = -1

func assemble(p []insn) ([]unix.SockFilter, error) {
	where := map[label]int{}
	for i, in := range p {
		if in.at != noLabel {
			where[in.at] = i
		}
	}
	off := func(i int, l label) (uint8, error) {
		switch l {
		case noLabel:
			return 0, nil
		case skipOne:
			return 1, nil
		}
		t, ok := where[l]
		d := t - i - 1
		if !ok || d < 0 || d > 255 {
			return 0, fmt.Errorf("seccomp: jump from %d to label %d out of range", i, l)
		}
		return uint8(d), nil
	}
	out := make([]unix.SockFilter, len(p))
	for i, in := range p {
		jt, err := off(i, in.jt)
		if err != nil {
			return nil, err
		}
		jf, err := off(i, in.jf)
		if err != nil {
			return nil, err
		}
		out[i] = unix.SockFilter{Code: in.op, Jt: jt, Jf: jf, K: in.k}
	}
	return out, nil
}

// load installs f on every thread of the calling process
// (SECCOMP_FILTER_FLAG_TSYNC), inherited by every process it starts. The
// caller has no_new_privs set or CAP_SYS_ADMIN.
func load(f []unix.SockFilter) error {
	prog := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog)))
	if errno != 0 {
		return fmt.Errorf("seccomp(SECCOMP_SET_MODE_FILTER, TSYNC): %w", errno)
	}
	return nil
}
