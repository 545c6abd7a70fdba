package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
	"github.com/cellgate/cellgate/internal/mounttest"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
	"golang.org/x/sys/unix"
)

// Issue 10, end to end: what a confined cell can see and reach, through
// `cellgate serve` with the default confinement. The worker is the test
// binary's "probe" role, run as a CGI program: it tries what the query
// asks and answers with what happened, so each test asserts on facts the
// cell observed, with a control that must succeed.

// probeReply is what the probe answers.
type probeReply struct {
	Read     map[string]string `json:"read"`     // path -> "ok" or the error
	OpenW    map[string]string `json:"openw"`    // path -> opening it to append (which writes nothing): "ok" or the errno name
	Connect  map[string]string `json:"connect"`  // address -> "ok" or the error
	Fill     map[string]string `json:"fill"`     // path -> "ok" or the error
	Procs    []string          `json:"procs"`    // the command lines in /proc
	Comms    []string          `json:"comms"`    // "PID NAME" of each, its /proc/PID/comm, with procs
	Syscalls map[string]string `json:"syscalls"` // name -> "ok" or the errno name
	SysVShm  string            `json:"sysvshm"`  // /proc/sysvipc/shm
	Hostname string            `json:"hostname"`
	UID      int               `json:"uid"`
	GID      int               `json:"gid"`
	Netns    string            `json:"netns"`    // the link /proc/self/ns/net
	Pidns    string            `json:"pidns"`    // the link /proc/self/ns/pid, and when its PID 1 started
	Left     string            `json:"left"`     // "ok": a process started to outlive the request
	ShmID    int               `json:"shmid"`    // a SysV segment made and left, or -1
	IPC      map[string]string `json:"ipc"`      // ipcleave: what was made and left ("ok" or the error); ipcsee: what is seen
	AgeMs    int64             `json:"agems"`    // how long ago the probe's process was started (its fork, not its execve)
	Sockets  int               `json:"sockets"`  // entries of the network namespace's socket tables
	TTL      string            `json:"ttl"`      // net.ipv4.ip_default_ttl, after setttl if asked
	TimeWait string            `json:"timewait"` // "ok": a loopback connection left in TIME_WAIT
	RootDev  uint64            `json:"rootdev"`  // the device of / (one per tmpfs root)
	Cat      map[string]string `json:"cat"`      // path -> its content, or the error
	FDs      []string          `json:"fds"`      // "N TARGET" of each of the probe's fds
	Socket   map[string]string `json:"socket"`   // probeSockets' name -> "ok" or the errno name
	MLock    map[string]string `json:"mlock"`    // KiB -> locking that much of its own binary's pages: "ok" or the errno name
	Huge     map[string]string `json:"huge"`     // hugePageCalls: each way to take a huge page -> "ok" or the errno name
	Sched    *schedReply       `json:"sched"`
	OOMAdj   string            `json:"oomadj"` // its oom_score_adj, then ", lower: " and the errno name of writing one less (oom query)
	SetID    map[string]string `json:"setid"`  // probeSetID's name -> "ok" or the errno name
	Epoll    string            `json:"epoll"`  // epollhold: "N watches, then ERRNO"
	State    map[string]string `json:"state"`  // state: what a program would change for the next (nsState), read before alter
	Alter    map[string]string `json:"alter"`  // alter: each change of nsState's -> "ok" or the errno name
}

// nsState is what of its cell's namespaces a program could change for
// the next request served in them, were it privileged there: the
// hostname and domain name (UTS), the private /tmp's mode (mount),
// loopback's flags and the default TTL (network).
func nsState() map[string]string {
	st := map[string]string{}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		st["hostname"], st["domainname"] = unix.ByteSliceToString(uts.Nodename[:]), unix.ByteSliceToString(uts.Domainname[:])
	}
	if fi, err := os.Stat("/tmp"); err == nil {
		st["tmp"] = fi.Mode().String()
	}
	st["lo"] = "error"
	if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err == nil {
		if ifr, err := unix.NewIfreq("lo"); err == nil && unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr) == nil {
			st["lo"] = fmt.Sprintf("%#x", ifr.Uint16())
		}
		unix.Close(fd)
	}
	st["ttl"] = defaultTTL()
	return st
}

// The network namespace's default TTL (net.ipv4.ip_default_ttl).
const ttlSetting = "/proc/sys/net/ipv4/ip_default_ttl"

// defaultTTL reads ttlSetting: its value, or the errno name.
func defaultTTL() string {
	b, err := os.ReadFile(ttlSetting)
	if err != nil {
		return errName(err)
	}
	return strings.TrimSpace(string(b))
}

// alterCell tries each change of nsState's.
func alterCell() map[string]string {
	out := map[string]string{
		"hostname":   errName(unix.Sethostname([]byte("altered"))),
		"domainname": errName(unix.Setdomainname([]byte("altered"))),
		"tmp":        errName(os.Chmod("/tmp", 0o700)),
		"ttl":        errName(os.WriteFile(ttlSetting, []byte("33"), 0)),
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		var ifr *unix.Ifreq
		if ifr, err = unix.NewIfreq("lo"); err == nil {
			ifr.SetUint16(0) // down
			err = unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
		}
		unix.Close(fd)
	}
	out["lo"] = errName(err)
	return out
}

// schedReply is the probe's scheduling (sched query).
type schedReply struct {
	Policy  int    `json:"policy"`  // sched_getscheduler(0)
	RR      string `json:"rr"`      // sched_setscheduler(0, SCHED_RR, 1): "ok" or the errno name
	IOClass int    `json:"ioclass"` // the class of ioprio_get(IOPRIO_WHO_PROCESS, 0): 1 is real-time
	Nice    int    `json:"nice"`    // its nice value
}

// socketTables are the socket tables of /proc/self/net the probe counts.
var socketTables = []string{"tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix"}

// timeWait leaves a loopback connection in TIME_WAIT: its accepting end
// closes first.
func timeWait() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		return err
	}
	s.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		return errors.New("read after the peer closed: no EOF")
	}
	return nil
}

// probeSockets are the sockets the probe opens (socket query): the
// families and protocols a web program uses, then ones whose first
// socket has the kernel load a module (its alias in the kernel's
// request), which the filter refuses; a pair is asked of socketpair,
// which creates the family's socket (and loads its module) first.
var probeSockets = []struct {
	name               string
	family, typ, proto int
	want, alias        string
	pair               bool
}{
	{"unix", unix.AF_UNIX, unix.SOCK_STREAM, 0, "ok", "", false},
	{"tcp", unix.AF_INET, unix.SOCK_STREAM, 0, "ok", "", false},
	{"udp6", unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_UDP, "ok", "", false},
	{"netlink route", unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE, "ok", "", false},
	{"dccp", unix.AF_INET, unix.SOCK_DCCP, unix.IPPROTO_DCCP, "EPROTONOSUPPORT", "net-pf-2-proto-33-type-6", false},
	{"sctp", unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_SCTP, "EPROTONOSUPPORT", "net-pf-10-proto-132-type-1", false},
	{"netlink crypto", unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_CRYPTO, "EPROTONOSUPPORT", "net-pf-16-proto-21", false},
	{"alg", unix.AF_ALG, unix.SOCK_SEQPACKET, 0, "EAFNOSUPPORT", "net-pf-38", false},
	{"rds", unix.AF_RDS, unix.SOCK_SEQPACKET, 0, "EAFNOSUPPORT", "net-pf-21", false},
	{"tipc", unix.AF_TIPC, unix.SOCK_RDM, 0, "EAFNOSUPPORT", "net-pf-30", false},
	{"vsock", unix.AF_VSOCK, unix.SOCK_STREAM, 0, "EAFNOSUPPORT", "net-pf-40", false},
	{"appletalk", unix.AF_APPLETALK, unix.SOCK_DGRAM, 0, "EAFNOSUPPORT", "net-pf-5", false},
	{"stream of udp", unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_UDP, "EPROTONOSUPPORT", "net-pf-2-proto-17-type-1", false},
	{"tipc pair", unix.AF_TIPC, unix.SOCK_RDM, 0, "EAFNOSUPPORT", "net-pf-30", true},
	{"sctp pair", unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP, "EPROTONOSUPPORT", "net-pf-2-proto-132-type-1", true},
	{"unix pair", unix.AF_UNIX, unix.SOCK_STREAM, 0, "ok", "", true},
}

// lockOwnPages maps n bytes of this process's executable, shared, and
// locks them: pages of the host's page cache, which the executable's
// earlier runs read.
func lockOwnPages(n int) error {
	f, err := os.Open("/proc/self/exe")
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := unix.Mmap(int(f.Fd()), 0, n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	defer unix.Munmap(b)
	return unix.Mlock(b)
}

// hugePageCalls takes one 2 MiB page of the host's hugetlb pool in each
// of the three ways there are (mmap MAP_HUGETLB, shmget SHM_HUGETLB,
// memfd_create MFD_HUGETLB), and with dir a fourth, "file": a file of
// that hugetlbfs mapped without any flag; writes to it and gives it back:
// each way -> "ok" or the errno name of the first call that failed.
func hugePageCalls(dir string) map[string]string {
	const size, shmHugeTLB = 2 << 20, 0o4000
	touch := func(b []byte) error {
		b[0], b[size-1] = 1, 1
		return unix.Munmap(b)
	}
	got := map[string]string{}
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_HUGETLB)
	if err == nil {
		err = touch(b)
	}
	got["mmap"] = errName(err)
	id, err := unix.SysvShmGet(unix.IPC_PRIVATE, size, unix.IPC_CREAT|shmHugeTLB|0o600)
	if err == nil {
		if b, err = unix.SysvShmAttach(id, 0, 0); err == nil {
			b[0], b[size-1] = 1, 1
			err = unix.SysvShmDetach(b)
		}
		unix.SysvShmCtl(id, unix.IPC_RMID, nil)
	}
	got["shmget"] = errName(err)
	fd, err := unix.MemfdCreate("huge", unix.MFD_CLOEXEC|unix.MFD_HUGETLB)
	if err == nil {
		if err = unix.Ftruncate(fd, size); err == nil {
			if b, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
				err = touch(b)
			}
		}
		unix.Close(fd)
	}
	got["memfd"] = errName(err)
	if dir != "" { // a file of a hugetlbfs, mapped without any flag
		p := filepath.Join(dir, "huge")
		fd, err := unix.Open(p, unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
		if err == nil {
			unix.Unlink(p)
			if err = unix.Ftruncate(fd, size); err == nil {
				if b, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
					err = touch(b)
				}
			}
			unix.Close(fd)
		}
		got["file"] = errName(err)
	}
	return got
}

// openSockets opens each of probeSockets and closes it: its name ->
// "ok" or the errno name.
func openSockets() map[string]string {
	got := map[string]string{}
	for _, s := range probeSockets {
		var err error
		if s.pair {
			var fds [2]int
			if fds, err = unix.Socketpair(s.family, s.typ|unix.SOCK_CLOEXEC, s.proto); err == nil {
				unix.Close(fds[0])
				unix.Close(fds[1])
			}
		} else {
			var fd int
			if fd, err = unix.Socket(s.family, s.typ|unix.SOCK_CLOEXEC, s.proto); err == nil {
				unix.Close(fd)
			}
		}
		got[s.name] = errName(err)
	}
	return got
}

// probeSyscalls are the denied calls the probe tries, each with arguments
// that would do no harm if it were allowed.
var probeSyscalls = []struct {
	name string
	call func() error
}{
	{"unshare(CLONE_NEWUSER)", func() error { return unix.Unshare(unix.CLONE_NEWUSER) }},
	{"bpf", func() error { return rawErr(unix.SYS_BPF, 0, 0, 0) }},
	{"perf_event_open", func() error { return rawErr(unix.SYS_PERF_EVENT_OPEN, 0, 0, ^uintptr(0)) }},
	{"userfaultfd", func() error { return rawErr(unix.SYS_USERFAULTFD, 0, 0, 0) }},
	{"keyctl", func() error { return rawErr(unix.SYS_KEYCTL, 0, 0, 0) }},
	{"mount", func() error { return unix.Mount("none", "/tmp", "tmpfs", 0, "") }},
	// Not PTRACE_TRACEME: where ptrace is allowed (seccomp off) it makes
	// the calling thread a tracee of the probe's parent, and the first
	// signal the Go runtime sends that thread (a preemption SIGURG) stops
	// it for good, the probe with it, until the cell's deadline. A peek at
	// a pid above the kernel's PID_MAX_LIMIT fails ESRCH when allowed.
	{"ptrace(PTRACE_PEEKDATA)", func() error { return rawErr(unix.SYS_PTRACE, unix.PTRACE_PEEKDATA, 1<<30, 0) }},
	{"io_uring_setup", func() error { return rawErr(unix.SYS_IO_URING_SETUP, 1, 0, 0) }},
	// A native AIO context: io_setup(65536) would take fs.aio-max-nr,
	// the whole machine's, for as long as the cell runs.
	{"io_setup", func() error {
		var ctx uintptr
		err := rawErr(unix.SYS_IO_SETUP, 1, uintptr(unsafe.Pointer(&ctx)), 0)
		if err == nil {
			rawErr(unix.SYS_IO_DESTROY, ctx, 0, 0)
		}
		return err
	}},
	{"kexec_load", func() error { return rawErr(unix.SYS_KEXEC_LOAD, 0, 0, 0) }},
	{"init_module", func() error { return rawErr(unix.SYS_INIT_MODULE, 0, 0, 0) }},
	// Lowering the core limit to 0 would have a core_pattern pipe's
	// helper started for the cell's crashes (confine.CoreLimit).
	{"setrlimit(RLIMIT_CORE)", func() error { return setCoreLimitRaw(0) }},
	{"prlimit64(RLIMIT_CORE)", func() error { return unix.Prlimit(0, unix.RLIMIT_CORE, &unix.Rlimit{}, nil) }},
	// Allowed, each fails another way: an fd of -1 (EBADF; ENOSYS before
	// 6.15 for open_tree_attr), an unknown kcmp type (EINVAL).
	{"pidfd_getfd", func() error { return rawErr(unix.SYS_PIDFD_GETFD, ^uintptr(0), 0, 0) }},
	{"open_tree_attr", func() error { return rawErr(unix.SYS_OPEN_TREE_ATTR, ^uintptr(0), 0, 0) }},
	{"kcmp", func() error { return rawErr(unix.SYS_KCMP, 0, 0, 99) }},
}

// probeSetID tries, in the directory dir, each way to give a file a
// set-uid or set-gid mode, and a chmod to an ordinary mode (the control),
// each on a file or directory of its own, named after the try.
func probeSetID(dir string) map[string]string {
	got := map[string]string{}
	file := func(name string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte("#!/bin/sh\nid\n"), 0o755)
		return p
	}
	try := func(name string, err error) { got[name] = errName(err) }
	try("chmod 0700", os.Chmod(file("plain"), 0o700))
	try("chmod 04755", unix.Chmod(file("chmod"), 0o4755))
	try("fchmodat 02755", unix.Fchmodat(unix.AT_FDCWD, file("fchmodat"), 0o2755, 0))
	try("fchmodat2 04755", func() error {
		p, _ := unix.BytePtrFromString(file("fchmodat2"))
		cwd := unix.AT_FDCWD
		_, _, e := unix.Syscall6(unix.SYS_FCHMODAT2, uintptr(cwd), uintptr(unsafe.Pointer(p)), 0o4755, unix.AT_SYMLINK_NOFOLLOW, 0, 0)
		if e != 0 {
			return e
		}
		return nil
	}())
	try("fchmod 06755", func() error {
		f, err := os.Open(file("fchmod"))
		if err != nil {
			return err
		}
		defer f.Close()
		return unix.Fchmod(int(f.Fd()), 0o6755)
	}())
	closed := func(fd int, err error) error {
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	try("openat O_CREAT 04755", closed(unix.Open(filepath.Join(dir, "creat"), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o4755)))
	try("openat O_TMPFILE 02755", closed(unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o2755)))
	try("openat2 O_CREAT 04755", closed(unix.Openat2(unix.AT_FDCWD, filepath.Join(dir, "openat2"), &unix.OpenHow{Flags: unix.O_CREAT | unix.O_WRONLY | unix.O_CLOEXEC, Mode: 0o4755})))
	try("mkdirat 02755", unix.Mkdir(filepath.Join(dir, "mkdir"), 0o2755))
	try("mknodat 04755", unix.Mknod(filepath.Join(dir, "mknod"), unix.S_IFREG|0o4755, 0))
	return got
}

// setCoreLimitRaw sets RLIMIT_CORE, soft and hard, to n with the
// setrlimit system call itself (libc and Go use prlimit64).
func setCoreLimitRaw(n uint64) error {
	lim := unix.Rlimit{Cur: n, Max: n}
	return rawErr(unix.SYS_SETRLIMIT, unix.RLIMIT_CORE, uintptr(unsafe.Pointer(&lim)), 0)
}

func rawErr(nr, a, b, c uintptr) error {
	_, _, e := unix.Syscall(nr, a, b, c)
	if e != 0 {
		return e
	}
	return nil
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

// holdEpollWatches takes epoll watches until the kernel refuses one
// (fs.epoll.max_user_watches, counted per user), writes dir/filled, and
// holds them until dir/release exists (two minutes at most). Its
// watches are 1,000 pipe ends added to one epoll instance after
// another, so it needs a nofile of a few thousand.
func holdEpollWatches(dir string) string {
	// Go's poller is set up first: it cannot be once the watches are
	// taken (the runtime's own epoll_ctl then fails, and it dies).
	r, w, err := os.Pipe()
	if err != nil {
		return "os.Pipe: " + errName(err)
	}
	r.Close()
	w.Close()
	var ends []int
	for range 500 {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return "pipe: " + errName(err)
		}
		ends = append(ends, p[0], p[1])
	}
	n := 0
fill:
	for {
		ep, e := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if e != nil {
			err = fmt.Errorf("epoll_create1: %s", errName(e))
			break
		}
		for _, fd := range ends {
			if e := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN}); e != nil {
				err = e
				break fill
			}
			n++
		}
	}
	if fd, e := unix.Open(filepath.Join(dir, "filled"), unix.O_WRONLY|unix.O_CREAT|unix.O_CLOEXEC, 0o644); e == nil {
		unix.Close(fd)
	}
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, e := os.Stat(filepath.Join(dir, "release")); e == nil {
			break
		}
	}
	return fmt.Sprintf("%d watches, then %s", n, errName(err))
}

// fill writes mib MiB to a new file at p, a MiB at a time (the file's
// pages are the cell's, not the probe's heap).
func fill(p string, mib int) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for i := 0; i < mib && err == nil; i++ {
		_, err = f.Write(buf)
	}
	return errors.Join(err, f.Close())
}

// probeMqueue is the POSIX message queue the probe leaves (ipcleave) and
// looks for (ipcsee); mq_open's system call takes the name without its
// leading slash.
const probeMqueue = "cellgate-probe-left"

// probeIPCLeave makes a SysV semaphore set, a SysV message queue (unless
// mqueueOnly) and a POSIX message queue and leaves them: into ipc, "sem",
// "msg" and "mqueue", "ok" or the error.
func probeIPCLeave(ipc map[string]string, mqueueOnly bool) {
	if !mqueueOnly {
		_, _, e := unix.Syscall(unix.SYS_SEMGET, unix.IPC_PRIVATE, 1, unix.IPC_CREAT|0o600)
		ipc["sem"] = errName(errnoErr(e))
		_, _, e = unix.Syscall(unix.SYS_MSGGET, unix.IPC_PRIVATE, unix.IPC_CREAT|0o600, 0)
		ipc["msg"] = errName(errnoErr(e))
	}
	name, _ := unix.BytePtrFromString(probeMqueue)
	fd, _, e := unix.Syscall6(unix.SYS_MQ_OPEN, uintptr(unsafe.Pointer(name)), unix.O_CREAT|unix.O_RDWR, 0o600, 0, 0, 0)
	if e == 0 {
		unix.Close(int(fd))
	}
	ipc["mqueue"] = errName(errnoErr(e))
}

// probeIPCSee reports into ipc the SysV semaphore sets and message
// queues this process sees ("sems" and "msgs", their count in
// /proc/sysvipc), its IPC namespace ("ns") and whether it can open the
// POSIX message queue probeIPCLeave leaves ("mqueue-open", "ok" or the
// error).
func probeIPCSee(ipc map[string]string) {
	for key, file := range map[string]string{"sems": "/proc/sysvipc/sem", "msgs": "/proc/sysvipc/msg"} {
		b, err := os.ReadFile(file)
		if err != nil {
			ipc[key] = errName(err)
			continue
		}
		ipc[key] = strconv.Itoa(strings.Count(strings.TrimSpace(string(b)), "\n")) // the first line is a header
	}
	ipc["ns"], _ = os.Readlink("/proc/self/ns/ipc")
	name, _ := unix.BytePtrFromString(probeMqueue)
	fd, _, e := unix.Syscall6(unix.SYS_MQ_OPEN, uintptr(unsafe.Pointer(name)), unix.O_RDONLY, 0, 0, 0, 0)
	if e == 0 {
		unix.Close(int(fd))
	}
	ipc["mqueue-open"] = errName(errnoErr(e))
}

// errnoErr is e as an error, nil for 0.
func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// initStart is the start time of PID 1 of the caller's PID namespace
// (startTicks), or the error.
func initStart() string {
	ticks, err := startTicks("/proc/1/stat")
	if err != nil {
		return errName(err)
	}
	return strconv.FormatInt(ticks, 10)
}

// startTicks is a process's start time from its stat file: the 22nd
// field, the 20th after the command (in parentheses, which may hold
// spaces), in clock ticks after boot.
func startTicks(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	ticks, err := statStart(b)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return ticks, nil
}

// statStart is the start time in a /proc/PID/stat text (startTicks).
func statStart(b []byte) (int64, error) {
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("%d fields after the command, want 20", len(f))
	}
	return strconv.ParseInt(f[19], 10, 64)
}

// processAgeMs is how long ago this process was started (its clone, which
// an execve does not change), from /proc/self/stat's start time and
// /proc/uptime, in milliseconds; -1 when they cannot be read.
func processAgeMs() int64 {
	ticks, err1 := startTicks("/proc/self/stat")
	up, err2 := os.ReadFile("/proc/uptime")
	if err1 != nil || err2 != nil {
		return -1
	}
	secs, err := strconv.ParseFloat(strings.Fields(string(up))[0], 64)
	if err != nil {
		return -1
	}
	return int64(secs*1000) - ticks*1000/100 // USER_HZ is 100 on Linux
}

// runProbe is the probe role: a CGI program.
func runProbe() int {
	q, _ := url.ParseQuery(os.Getenv("QUERY_STRING"))
	r := probeReply{Read: map[string]string{}, OpenW: map[string]string{}, Connect: map[string]string{}, Fill: map[string]string{}, Syscalls: map[string]string{},
		Cat: map[string]string{}, UID: os.Getuid(), GID: os.Getgid()}
	r.ShmID = -1
	r.IPC = map[string]string{}
	if q.Has("state") {
		r.State = nsState()
	}
	if q.Has("alter") {
		r.Alter = alterCell()
	}
	if q.Has("ipcleave") {
		probeIPCLeave(r.IPC, q.Get("ipcleave") == "mqueue")
	}
	if q.Has("ipcsee") {
		probeIPCSee(r.IPC)
	}
	if q.Has("shmget") {
		if id, err := unix.SysvShmGet(unix.IPC_PRIVATE, 4096, unix.IPC_CREAT|0o600); err == nil {
			r.ShmID = id
		}
	}
	for _, p := range q["cat"] {
		b, err := os.ReadFile(p)
		r.Cat[p] = string(b)
		if err != nil {
			r.Cat[p] = errName(err)
		}
	}
	if q.Has("fds") {
		ents, _ := os.ReadDir("/proc/self/fd")
		for _, e := range ents {
			link, _ := os.Readlink("/proc/self/fd/" + e.Name())
			r.FDs = append(r.FDs, e.Name()+" "+link)
		}
	}
	if q.Has("rootdev") {
		var st unix.Stat_t
		if unix.Stat("/", &st) == nil {
			r.RootDev = st.Dev
		}
	}
	r.Hostname, _ = os.Hostname()
	for _, p := range q["read"] {
		_, err := os.ReadFile(p)
		r.Read[p] = errName(err)
	}
	for _, p := range q["openw"] {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err == nil {
			f.Close()
		}
		r.OpenW[p] = errName(err)
	}
	for _, a := range q["connect"] {
		c, err := net.Dial("tcp", a)
		if err == nil {
			c.Close()
		}
		r.Connect[a] = errName(err)
	}
	if d := q.Get("deep"); d != "" { // a file below 40 directories, deeper than an init's wipe goes
		dir := d + strings.Repeat("/d", 40)
		err := os.MkdirAll(dir, 0o755)
		if err == nil {
			err = os.WriteFile(dir+"/file", []byte("left"), 0o644)
		}
		r.Fill["deep"] = errName(err)
	}
	if q.Has("unkillable") {
		// Wait (a minute at most) until the test has made this process
		// one the OOM killer passes over (root may lower its
		// oom_score_adj; it may not), so that it must choose another.
		for end := time.Now().Add(time.Minute); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			if b, _ := os.ReadFile("/proc/self/oom_score_adj"); strings.TrimSpace(string(b)) == "-1000" {
				break
			}
		}
	}
	for _, f := range q["fill"] { // PATH:MiB
		p, mib, _ := strings.Cut(f, ":")
		n, _ := strconv.Atoi(mib)
		r.Fill[p] = errName(fill(p, n))
	}
	if q.Has("procs") {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
				r.Procs = append(r.Procs, e.Name()+" "+strings.ReplaceAll(string(b), "\x00", " "))
				b, _ = os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
				r.Comms = append(r.Comms, e.Name()+" "+strings.TrimSuffix(string(b), "\n"))
			}
		}
	}
	if d := q.Get("setid"); d != "" {
		r.SetID = probeSetID(d)
	}
	if d := q.Get("epollhold"); d != "" {
		r.Epoll = holdEpollWatches(d)
	}
	if q.Has("syscalls") {
		for _, s := range probeSyscalls {
			r.Syscalls[s.name] = errName(s.call())
		}
	}
	if q.Has("sysvshm") {
		b, err := os.ReadFile("/proc/sysvipc/shm")
		r.SysVShm = string(b)
		if err != nil {
			r.SysVShm = errName(err)
		}
	}
	if q.Has("timewait") {
		r.TimeWait = errName(timeWait())
	}
	if q.Has("netns") {
		r.Netns, _ = os.Readlink("/proc/self/ns/net")
	}
	if q.Has("pidns") {
		// The namespace's link and the start of its PID 1: the kernel
		// gives a freed namespace's inode number to a later one, so the
		// link alone can name a new cell's namespace as an ended one's.
		ns, _ := os.Readlink("/proc/self/ns/pid")
		r.Pidns = ns + " pid 1 started " + initStart()
	}
	if q.Has("age") {
		r.AgeMs = processAgeMs()
	}
	if q.Has("leave") { // a process that outlives the request, its streams not the response's
		null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err == nil {
			var p *os.Process
			p, err = os.StartProcess("/bin/sleep", []string{"sleep", "1000"}, &os.ProcAttr{Files: []*os.File{null, null, null}})
			if err == nil {
				p.Release()
			}
			null.Close()
		}
		r.Left = errName(err)
	}
	if q.Has("sockets") {
		for _, t := range socketTables {
			b, err := os.ReadFile("/proc/self/net/" + t)
			if err != nil {
				r.Sockets = -1
				break
			}
			r.Sockets += strings.Count(string(b), "\n") - 1
		}
	}
	if v := q.Get("setttl"); v != "" {
		if err := os.WriteFile(ttlSetting, []byte(v), 0); err != nil {
			r.TTL = errName(err)
		}
	}
	if q.Has("ttl") && r.TTL == "" {
		r.TTL = defaultTTL()
	}
	r.MLock = map[string]string{}
	for _, kib := range q["mlock"] {
		n, _ := strconv.Atoi(kib)
		r.MLock[kib] = errName(lockOwnPages(n << 10))
	}
	if q.Has("socket") {
		r.Socket = openSockets()
	}
	if q.Has("huge") {
		r.Huge = hugePageCalls(q.Get("hugefs"))
	}
	if q.Has("oom") {
		b, err := os.ReadFile("/proc/self/oom_score_adj")
		adj, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if err == nil {
			err = os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(adj-1)), 0)
		}
		r.OOMAdj = strings.TrimSpace(string(b)) + ", lower: " + errName(err)
	}
	if q.Has("sched") {
		policy, _, _ := unix.RawSyscall(unix.SYS_SCHED_GETSCHEDULER, 0, 0, 0)
		prio := int32(1)
		_, _, errno := unix.RawSyscall(unix.SYS_SCHED_SETSCHEDULER, 0, unix.SCHED_RR, uintptr(unsafe.Pointer(&prio)))
		var err error
		if errno != 0 {
			err = errno
		}
		ioprio, _, _ := unix.RawSyscall(unix.SYS_IOPRIO_GET, 1, 0, 0) // IOPRIO_WHO_PROCESS, this thread
		kprio, _ := unix.Getpriority(unix.PRIO_PROCESS, 0)            // the kernel's 20 - nice
		r.Sched = &schedReply{Policy: int(policy), RR: errName(err), IOClass: int(ioprio >> 13), Nice: 20 - kprio}
	}
	if q.Has("crash") {
		// Dies of SIGABRT, which dumps core, after lowering its core
		// limit to 0 if it may (it may not: the filter refuses).
		unix.Prlimit(0, unix.RLIMIT_CORE, &unix.Rlimit{}, nil)
		setCoreLimitRaw(0)
		debug.SetTraceback("crash")
		panic("the probe crashes, as asked")
	}
	b, _ := json.Marshal(r)
	fmt.Printf("Content-Type: application/json\r\n\r\n%s", b)
	return 0
}

// confineGate starts serve with routes running the probe: "probe" under
// the default confinement (tenant a), "nethost" with network: host.
func confineGate(t *testing.T, extra string, args ...string) *gate {
	t.Helper()
	return startGate(t, gateOptions{policy: confinePolicy(t, extra), args: args})
}

// confinePolicy is confineGate's policy, with the extra routes.
func confinePolicy(t *testing.T, extra string) string {
	t.Helper()
	w := workerBinary(t)
	return fmt.Sprintf(`version: 1
defaults: {memory: 64Mi, cpu: 1, pids: 64, timeout: 60s}
tenants:
  - {name: a, memory: 256Mi, queue: 100, queue_timeout: 120s, gid: 3000}
  - {name: b, memory: 256Mi, queue: 100, queue_timeout: 120s}
  - {name: t, memory: 96Mi, queue: 100, queue_timeout: 120s}
routes:
  - {name: probe, match: {path: /probe}, tenant: a, program: %[1]q, env: {%[2]s: probe}}
  - {name: nethost, match: {path: /nethost}, tenant: b, program: %[1]q, env: {%[2]s: probe}, network: host}
%[3]s`, w, cellHelperEnv, extra)
}

// probe sends the query to the route and decodes the reply.
func (g *gate) probe(t *testing.T, route string, q url.Values) probeReply {
	t.Helper()
	code, _, body := g.get("/" + route + "?" + q.Encode())
	if code != http.StatusOK {
		t.Fatalf("GET /%s?%s: %d %s\nlog:\n%s", route, q.Encode(), code, body, g.log())
	}
	var r probeReply
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("probe reply %q: %v", body, err)
	}
	return r
}

// TestConfineFilesystem: a cell cannot read another tenant's files (0644
// and 0640 both), /root, /home, cellgate's policy file or a TLS key, while
// it reads the system directories and its own program.
func TestConfineFilesystem(t *testing.T) {
	other := t.TempDir()
	os.Chmod(other, 0o755)
	open, group := filepath.Join(other, "public.txt"), filepath.Join(other, "group.txt")
	key := filepath.Join(other, "tls.key")
	for f, mode := range map[string]os.FileMode{open: 0o644, group: 0o640, key: 0o600} {
		if err := os.WriteFile(f, []byte("secret"), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(f, mode)
	}
	// The group file belongs to the tenant's own gid: file modes alone
	// would let the cell read it.
	os.Chown(group, 0, 3000)
	g := confineGate(t, "")
	r := g.probe(t, "probe", url.Values{"read": {open, group, key, "/root/.profile", "/home", g.policyPath, "/etc/passwd", workerBinary(t)}})
	for _, p := range []string{open, group, key, "/root/.profile", "/home", g.policyPath} {
		if r.Read[p] == "ok" {
			t.Errorf("the cell read %s", p)
		}
	}
	for _, p := range []string{"/etc/passwd", workerBinary(t)} {
		if r.Read[p] != "ok" {
			t.Errorf("the cell cannot read %s (%s): the system directories and its own program must be visible", p, r.Read[p])
		}
	}
	if r.GID != 3000 || r.UID < 2000000000 {
		t.Errorf("the cell ran as uid %d gid %d, want a per-cell uid and its tenant's gid 3000", r.UID, r.GID)
	}
	if r.Hostname != "cell" {
		t.Errorf("hostname %q, want the cell's own (cell)", r.Hostname)
	}
}

// TestConfineHostSubmounts: a file system the host mounts below a
// directory a route binds, or inside its rootfs, comes into the view with
// the bind (binds are recursive) and with the bind's safety: below a
// read-only mount or in a rootfs it is read-only, and below any mount
// nosuid and nodev, in resident and fresh cells (before, it kept the
// host's flags: a cell wrote through a read-only mount and opened device
// nodes there; and no rootfs route's cell started: the init found no
// mount point for /dev's nodes in it). The control: the test itself
// writes there and opens the device.
func TestConfineHostSubmounts(t *testing.T) {
	requireMicroVM(t)
	submount := func() string {
		dir := openTempDir(t, "cellgate-submount-", 0o755)
		mounttest.Below(t, dir)
		return dir
	}
	ro, rw, rootfs := submount(), submount(), submount()
	mounttest.Chroot(t, rootfs)
	for _, f := range []string{filepath.Join(ro, "sub/null"), filepath.Join(ro, "sub/f")} {
		fd, err := os.OpenFile(f, os.O_WRONLY, 0)
		if err != nil {
			t.Fatalf("control: open %s for writing: %v", f, err)
		}
		fd.Close()
	}
	w := workerBinary(t)
	// The program's directory is bound at its own path: a rootfs holds
	// its mount point.
	if err := os.MkdirAll(filepath.Join(rootfs, filepath.Dir(w)), 0o755); err != nil {
		t.Fatal(err)
	}
	g := confineGate(t, fmt.Sprintf(`  - {name: subro, match: {path: /subro}, tenant: a, program: %[1]q, env: {%[2]s: probe}, mounts: [{source: %[3]s, target: /ro}]}
  - {name: subfresh, match: {path: /subfresh}, tenant: a, program: %[1]q, env: {%[2]s: probe}, cells: fresh, mounts: [{source: %[3]s, target: /ro}]}
  - {name: subrw, match: {path: /subrw}, tenant: b, program: %[1]q, env: {%[2]s: probe}, mounts: [{source: %[4]s, target: /rw, writable: true}]}
  - {name: subroot, match: {path: /subroot}, tenant: a, program: %[1]q, env: {%[2]s: probe}, rootfs: %[5]s}
`, w, cellHelperEnv, ro, rw, rootfs))
	options := func(mountinfo, point string) string {
		for line := range strings.Lines(mountinfo) {
			if f := strings.Fields(line); len(f) > 5 && f[4] == point {
				return f[5]
			}
		}
		return "not mounted"
	}
	for _, c := range []struct{ route, dir, write, opts string }{
		{"subro", "/ro/sub", "EROFS", "ro,nosuid,nodev,relatime"},
		{"subfresh", "/ro/sub", "EROFS", "ro,nosuid,nodev,relatime"},
		{"subrw", "/rw/sub", "ok", "rw,nosuid,nodev,relatime"},
		{"subroot", "/sub", "EROFS", "ro,nosuid,nodev,relatime"},
	} {
		r := g.probe(t, c.route, url.Values{"openw": {c.dir + "/f"}, "read": {c.dir + "/null"}, "cat": {"/proc/self/mountinfo"}})
		if got := r.OpenW[c.dir+"/f"]; got != c.write {
			t.Errorf("%s: open %s/f for writing: %s, want %s", c.route, c.dir, got, c.write)
		}
		if got := r.Read[c.dir+"/null"]; got == "ok" {
			t.Errorf("%s: read the device %s/null: ok, want it refused (nodev)", c.route, c.dir)
		}
		if got := options(r.Cat["/proc/self/mountinfo"], c.dir); got != c.opts {
			t.Errorf("%s: the host's tmpfs at %s is mounted %s in the cell, want %s", c.route, c.dir, got, c.opts)
		}
	}
}

// TestConfineTmpfsGone: files written to /dev/shm and /tmp vanish with the
// cell and their memory is not left charged to the tenant: after 20
// requests that each leave 64 MiB in both (2.5 GiB in all, against a
// tenant budget of 256 MiB), the tenant's memory.current is back near its
// baseline and a request that needs 64 MiB of its own gets 200.
func TestConfineTmpfsGone(t *testing.T) {
	g := confineGate(t, `  - {name: fill, match: {path: /fill}, tenant: a, program: "`+workerBinary(t)+`", env: {`+cellHelperEnv+`: probe}, memory: 200Mi, tmpfs_size: 80Mi}
  - {name: hog, match: {path: /hog}, tenant: a, program: "{{.CGI}}/memhog", memory: 128Mi}
`)
	g.probe(t, "probe", url.Values{}) // warm up: page cache of the program
	current := func() int64 {
		n, err := strconv.ParseInt(readTrim(t, filepath.Join(g.tenantDir("a"), "memory.current")), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	base := current()
	leaks := []string{"/dev/shm/leak", "/tmp/leak"}
	for i := 0; i < 20; i++ {
		r := g.probe(t, "fill", url.Values{"fill": {"/dev/shm/leak:64", "/tmp/leak:64"}})
		for _, p := range leaks {
			if res := r.Fill[p]; res != "ok" {
				t.Fatalf("request %d: writing 64 MiB to %s: %q (all: %v)", i, p, res, r.Fill)
			}
		}
	}
	if now := current(); now > base+32<<20 {
		t.Errorf("tenant memory.current %d after 20 requests, baseline %d: files of ended cells stay charged", now, base)
	}
	if code, _, body := g.get("/hog?mb=64"); code != http.StatusOK {
		t.Errorf("a 64 MiB request after them: %d %s", code, body)
	}
	r := g.probe(t, "probe", url.Values{"read": leaks})
	for _, p := range leaks {
		if res, tried := r.Read[p]; !tried || res == "ok" {
			t.Errorf("a later cell reading %s: %q (tried: %v); want it refused: the file must not outlive its cell", p, res, tried)
		}
	}
}

// TestConfinePIDsAndIPC: a cell's /proc lists only the cell's processes
// (its init and itself, not cellgate), and a SysV shared memory segment
// of the host is invisible to it.
func TestConfinePIDsAndIPC(t *testing.T) {
	id := hostShmSegment(t)
	g := confineGate(t, "")
	r := g.probe(t, "probe", url.Values{"procs": {"1"}, "sysvshm": {"1"}})
	if len(r.Procs) != 2 || !strings.HasPrefix(r.Procs[0], "1 cellgate-init") {
		t.Errorf("the cell's /proc lists %q, want its init as 1 and the probe", r.Procs)
	}
	initNamed(t, r)
	for _, p := range r.Procs {
		if strings.Contains(p, "serve") {
			t.Errorf("the cell sees cellgate: %q", p)
		}
	}
	if strings.Contains(r.SysVShm, " "+strconv.Itoa(id)+" ") {
		t.Errorf("the cell sees the host's SysV segment %d:\n%s", id, r.SysVShm)
	}
	// The control route shares nothing but the network: its /proc is still
	// its own.
	if h := g.probe(t, "nethost", url.Values{"procs": {"1"}}); len(h.Procs) != 2 {
		t.Errorf("network: host cell lists %q", h.Procs)
	}
}

// hostShmSegment creates a SysV shared memory segment of the host for the
// test's duration, checks that the host's /proc/sysvipc/shm lists it, and
// returns its id.
func hostShmSegment(t *testing.T) int {
	t.Helper()
	id, err := unix.SysvShmGet(unix.IPC_PRIVATE, 4096, unix.IPC_CREAT|0o644)
	if err != nil {
		t.Fatalf("shmget: %v", err)
	}
	t.Cleanup(func() { unix.SysvShmCtl(id, unix.IPC_RMID, nil) })
	host, err := os.ReadFile("/proc/sysvipc/shm")
	if err != nil || !strings.Contains(string(host), " "+strconv.Itoa(id)+" ") {
		t.Fatalf("control: the host's /proc/sysvipc/shm does not list segment %d (%v):\n%s", id, err, host)
	}
	return id
}

// TestConfineNetwork: with network: none a cell reaches neither
// cellgate's admin port nor a loopback listener of the host; with network:
// host it reaches both.
func TestConfineNetwork(t *testing.T) {
	listener := loopbackListener(t)
	g := confineGate(t, "")
	checkNetworkSplit(t, g, "probe", "nethost", "cell", listener)
}

// checkNetworkSplit probes cellgate's admin port and the host's loopback
// listener from route none (network: none), which must reach neither,
// and from route host (network: host), which must reach both; what names
// the confined thing in messages.
func checkNetworkSplit(t *testing.T, g *gate, none, host, what, listener string) {
	t.Helper()
	targets := []string{strings.TrimPrefix(g.admin, "http://"), listener}
	n := g.probe(t, none, url.Values{"connect": targets})
	h := g.probe(t, host, url.Values{"connect": targets})
	for _, a := range targets {
		if n.Connect[a] == "ok" {
			t.Errorf("a network: none %s connected to %s", what, a)
		}
		if h.Connect[a] != "ok" {
			t.Errorf("a network: host %s could not connect to %s: %s", what, a, h.Connect[a])
		}
	}
}

// loopbackListener listens on a loopback port of the host, accepting and
// closing connections until the test ends, and returns its address.
func loopbackListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// initNamed checks that the cell's init, started from an fd, is named
// cellgate-init (its comm: what ps, top and the kernel's OOM reports
// show), not that fd's number.
func initNamed(t *testing.T, r probeReply) {
	t.Helper()
	if len(r.Comms) == 0 || r.Comms[0] != "1 "+confine.InitArg0 {
		t.Errorf("the cell's processes are named %q, want its init, 1, named %s", r.Comms, confine.InitArg0)
	}
}

// TestConfineGoInit: the init in Go (confine.Init), which serve runs when
// cellgate-init (C, the default) is not installed, confines a cell as the
// C one does: the probe's view, /proc, network and filter checks, with
// serve told to start cellgate itself as the init. Both inits are compared
// frame by frame without namespaces in confine's TestInitsAgree.
func TestConfineGoInit(t *testing.T) {
	other := t.TempDir()
	os.Chmod(other, 0o755)
	secret := filepath.Join(other, "public.txt")
	if err := os.WriteFile(secret, []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(secret, 0o644)
	g := confineGate(t, "", "--init", cellgateBin(t))
	admin := strings.TrimPrefix(g.admin, "http://")
	r := g.probe(t, "probe", url.Values{"read": {secret, "/etc/passwd"}, "connect": {admin}, "procs": {"1"}, "syscalls": {"1"}, "cat": {"/proc/self/status"}})
	if thp, _ := statusField(r.Cat["/proc/self/status"], "THP_enabled"); thp != "0" {
		t.Errorf("THP_enabled %q under the Go init, want 0 (huge_pages: off)", thp)
	}
	if r.Read[secret] == "ok" || r.Read["/etc/passwd"] != "ok" {
		t.Errorf("reads %v: want the host's file hidden and the system directories visible", r.Read)
	}
	if r.Connect[admin] == "ok" {
		t.Errorf("the cell reached the admin listener %s", admin)
	}
	if len(r.Procs) != 2 || !strings.HasPrefix(r.Procs[0], "1 cellgate-init") {
		t.Errorf("the cell's /proc lists %q, want its init as 1 and the probe", r.Procs)
	}
	initNamed(t, r)
	for _, s := range probeSyscalls {
		if got := r.Syscalls[s.name]; got != "EPERM" {
			t.Errorf("%s under the Go init: %s, want EPERM", s.name, got)
		}
	}
}

// TestConfineLauncherClosed: the init's executable, which the daemon
// passes to each init it starts as the fd after the init's own
// (confine.Launcher.Attach), is held by no init once started (the
// spawner, resident inits, a fresh cell's init, the Go init) and reaches
// no program.
func TestConfineLauncherClosed(t *testing.T) {
	bin := cellgateBin(t)
	launchers := []string{bin, filepath.Join(filepath.Dir(bin), confine.InitArg0)}
	fresh := `  - {name: fresh, match: {path: /fresh}, tenant: a, program: ` + strconv.Quote(workerBinary(t)) + `, env: {` + cellHelperEnv + `: probe}, cells: fresh}
`
	for _, tc := range []struct {
		init string
		args []string
	}{{confine.InitArg0, nil}, {"the Go init", []string{"--init", bin}}} {
		g := confineGate(t, fresh, tc.args...)
		for _, route := range []string{"probe", "fresh"} {
			r := g.probe(t, route, url.Values{"fds": {"1"}})
			if len(r.FDs) == 0 {
				t.Fatalf("%s, route %s: the probe listed no fds", tc.init, route)
			}
			for _, fd := range r.FDs {
				if _, target, _ := strings.Cut(fd, " "); contains(launchers, target) {
					t.Errorf("%s, route %s: the program holds the init's executable as fd %s", tc.init, route, fd)
				}
			}
		}
		inits := processesWith(confine.InitArg0 + "\x00")
		if len(inits) == 0 {
			t.Fatalf("%s: no init runs after the requests", tc.init)
		}
		// An init the daemon has just executed holds the fd until its
		// main closes it: one that still holds it after a minute keeps it.
		holding := func(pids []string) (held []string) {
			for _, pid := range pids {
				dir := filepath.Join("/proc", pid, "fd")
				ents, _ := os.ReadDir(dir)
				for _, e := range ents {
					if target, _ := os.Readlink(filepath.Join(dir, e.Name())); contains(launchers, target) {
						held = append(held, pid)
						break
					}
				}
			}
			return held
		}
		held := holding(inits)
		for end := time.Now().Add(time.Minute); len(held) > 0 && time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			held = holding(held)
		}
		for _, pid := range held {
			cmd, _ := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
			t.Errorf("%s: init %s (%q) still holds its executable a minute after it was seen holding it", tc.init, pid, cmd)
		}
		g.stop()
	}
}

// TestConfineDaemonFilesHidden: serve's policy file is out of a cell's
// reach whatever its mode, even where a route's view shows its directory
// (here a mount of it; a policy in /etc is shown by the default view):
// the plan covers it, while the directory's other files stay readable.
func TestConfineDaemonFilesHidden(t *testing.T) {
	conf := `tenant: a, program: ` + strconv.Quote(workerBinary(t)) + `, env: {` + cellHelperEnv + `: probe}, mounts: [{source: "{{.Dir}}", target: /conf}]`
	g := confineGate(t, `  - {name: conf, match: {path: /conf}, `+conf+`}
  - {name: confwarm, match: {path: /confwarm}, `+conf+`, cells: fresh}
  - {name: confcold, match: {path: /confcold}, `+conf+`, seccomp: off}
`)
	if err := os.Chmod(g.policyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	public := filepath.Join(filepath.Dir(g.policyPath), "public.txt")
	if err := os.WriteFile(public, []byte("public"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(g.policyPath), 0o755)
	os.Chmod(public, 0o644)
	r := g.probe(t, "conf", url.Values{"read": {"/conf/policy.yaml", "/conf/public.txt"}})
	if r.Read["/conf/policy.yaml"] == "ok" || r.Read["/conf/public.txt"] != "ok" {
		t.Errorf("reads %v: want the policy file refused and the file beside it read", r.Read)
	}
	t.Logf("the policy file in the cell: %s", r.Read["/conf/policy.yaml"])
	// The policy file replaced by rename (an editor's save, 0644): the
	// kernel detaches the cover in every view made before (its mount point
	// unlinked in another mount namespace), so no request may start in
	// one: not a resident init's (conf), a warm cell's from a template
	// (confwarm) or of its own (confcold), nor a template's.
	for _, route := range []string{"conf", "confwarm", "confcold"} {
		g.probe(t, route, nil) // each route's views made ahead
	}
	time.Sleep(time.Second)
	replaceByRename(t, g.policyPath)
	for _, route := range []string{"conf", "confwarm", "confcold"} {
		for i := range 3 {
			if r := g.probe(t, route, url.Values{"read": {"/conf/policy.yaml"}}); r.Read["/conf/policy.yaml"] == "ok" {
				t.Errorf("%s, request %d after the policy file was replaced: a cell read it", route, i+1)
			}
		}
	}
	// A policy file gone since the plan was made fails no cell: the
	// cover is bound only where the file still is (confcold has no mount
	// template, so each of its cells builds its view; the first few
	// requests take cells set up ahead, before the move).
	if err := os.Rename(g.policyPath, g.policyPath+".away"); err != nil {
		t.Fatal(err)
	}
	defer os.Rename(g.policyPath+".away", g.policyPath)
	for range 8 {
		if r := g.probe(t, "confcold", url.Values{"read": {"/conf/public.txt"}}); r.Read["/conf/public.txt"] != "ok" {
			t.Errorf("with the policy file moved away: reads %v", r.Read)
		}
	}
	if _, err := os.Stat(g.policyPath); err == nil {
		t.Errorf("a cell's view made a file at %s", g.policyPath)
	}
}

// TestConfineSeccomp: every denied call fails with EPERM, and the request
// still answers.
func TestConfineSeccomp(t *testing.T) {
	g := confineGate(t, "")
	r := g.probe(t, "probe", url.Values{"syscalls": {"1"}})
	for _, s := range probeSyscalls {
		if got := r.Syscalls[s.name]; got != "EPERM" {
			t.Errorf("%s in the cell: %s, want EPERM", s.name, got)
		}
	}
}

// TestConfineNoCoreDump: a program crashing in a cell, resident or
// fresh, starts no core dump, even where the host's core_pattern pipes
// cores to a helper (the kernel starts it whatever the core limit, but
// for 1: confine.CoreLimit) and even when the program tries to lower its
// limit to 0 first (the filter refuses). The control: a process of the
// host crashing the same way with its limit 0 has the helper started.
func TestConfineNoCoreDump(t *testing.T) {
	requireMicroVM(t)
	g := freshProbeGate(t)
	log := kernelHelper(t, "/proc/sys/kernel/core_pattern", "|", ` %p %e`, `echo "$1 $2"`)
	dumped := func() []string { return strings.Split(strings.TrimSpace(log()), "\n") }
	ctl := exec.Command("/bin/sh", "-c", "ulimit -c 0; kill -ABRT $$")
	if err := ctl.Run(); err == nil {
		t.Fatal("the control did not die of its signal")
	}
	for end := time.Now().Add(10 * time.Second); log() == "" && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
	}
	control := dumped()
	if len(control) != 1 || !strings.HasSuffix(control[0], " sh") {
		t.Fatalf("a host process crashing with its core limit 0: the helper wrote %q, want one line (core_pattern is a pipe): the test cannot see a dump", control)
	}

	for _, route := range []string{"probe", "fresh"} {
		for i := range 2 { // a resident cell's second request runs in its first's init
			if code, _, body := g.get("/" + route + "?crash=1"); code == http.StatusOK {
				t.Errorf("%s, crash %d: 200 %s, want the program's death", route, i, body)
			}
		}
		r := g.probe(t, route, url.Values{"syscalls": {"1"}})
		for _, name := range []string{"setrlimit(RLIMIT_CORE)", "prlimit64(RLIMIT_CORE)"} {
			if got := r.Syscalls[name]; got != "EPERM" {
				t.Errorf("%s: %s: %s, want EPERM", route, name, got)
			}
		}
	}
	// The helper, had it been started, runs on after the crash's end:
	// give it time to write.
	time.Sleep(2 * time.Second)
	if got := dumped(); len(got) != 1 {
		t.Errorf("the helper wrote %q after the cells' crashes, want only the control's line: a cell's crash started the host's core_pattern helper", got)
	}
	if n := strings.Count(g.log(), "killed by signal 6 (aborted)"); n != 4 {
		t.Errorf("serve's log names SIGABRT for %d requests, want the 4 crashes:\n%s", n, g.log())
	}
}

// TestConfineNoModuleLoad: a cell, resident or fresh, cannot have the
// kernel load a module by asking for a socket of a family or protocol
// not loaded yet (the filter answers as a kernel without it), while the
// sockets a web program opens work. The kernel's modprobe is a script of
// the test's that notes each request; the control: the same sockets
// opened by the test itself have their modules requested.
func TestConfineNoModuleLoad(t *testing.T) {
	requireMicroVM(t)
	g := freshProbeGate(t)
	g.probe(t, "probe", url.Values{}) // serve's first cells, and whatever modules they ask for, before the helper
	requested := kernelHelper(t, "/proc/sys/kernel/modprobe", "", "", `echo "$*"; exit 1`)
	control := openSockets()
	for _, s := range probeSockets {
		if s.alias != "" && !strings.Contains(requested(), s.alias) {
			t.Fatalf("the test's own socket %s (%s) had no module requested (%q): the test cannot see a request", s.name, control[s.name], requested())
		}
	}
	before := requested()
	for _, route := range []string{"probe", "fresh"} {
		got := g.probe(t, route, url.Values{"socket": {"1"}}).Socket
		for _, s := range probeSockets {
			if got[s.name] != s.want {
				t.Errorf("%s: socket %s: %s, want %s", route, s.name, got[s.name], s.want)
			}
		}
	}
	if after := requested(); after != before {
		t.Errorf("the cells' sockets had modules requested: %q", strings.TrimPrefix(after, before))
	}
}

// TestConfineRlimits: a cell's program, resident or fresh, has the limits
// the plan sets (confine.CoreLimit, confine.MemLockLimit, nofile's
// 1024), and cannot lock more of the host's page cache than the limit
// (locked pages stay charged to whoever read them first), while it can
// lock that much.
func TestConfineRlimits(t *testing.T) {
	g := freshProbeGate(t)
	want := map[string]string{"Max core file size": "1 1", "Max locked memory": "65536 65536", "Max open files": "1024 1024"}
	for _, route := range []string{"probe", "fresh"} {
		r := g.probe(t, route, url.Values{"cat": {"/proc/self/limits"}, "mlock": {"32", "1024"}})
		got := procLimits(r.Cat["/proc/self/limits"])
		for name, l := range want {
			if got[name] != l {
				t.Errorf("%s: %s %q, want %q", route, name, got[name], l)
			}
		}
		if r.MLock["32"] != "ok" || r.MLock["1024"] != "ENOMEM" {
			t.Errorf("%s: locking 32 KiB of its binary: %s (want ok), 1 MiB: %s (want ENOMEM)", route, r.MLock["32"], r.MLock["1024"])
		}
	}
}

// TestConfineNoHugePages: a cell, resident or fresh, cannot take pages of
// the host's huge page pool (not charged to its memory.max): each way
// fails ENOMEM, as on a host with none free, and the pool stays whole.
// Without the hugetlb controller (as under systemd, which does not
// delegate it) the seccomp filter refuses them, and a cell of a route
// with seccomp: off, the control, takes one in each way; where the
// controller reaches cellgate's base, it refuses them to that cell too.
// The test itself, the other control, takes one in each way. A file of
// a hugetlbfs a route binds takes huge pages without any flag the filter
// sees: its cell gets one unless the controller closes the pool, and
// serve warns of the mount where it does not.
func TestConfineNoHugePages(t *testing.T) {
	requireMicroVM(t)
	const pages = 4
	nr := "/proc/sys/vm/nr_hugepages"
	setSysctl(t, nr, strconv.Itoa(pages))
	// SysV segments of huge pages are the kernel's to refuse a process
	// without CAP_IPC_LOCK outside this group (EPERM): tenant a's gid, so
	// that only cellgate refuses them.
	setSysctl(t, "/proc/sys/vm/hugetlb_shm_group", "3000")
	pool := func() (total, free string) {
		m := procMeminfo(t)
		return m["HugePages_Total"], m["HugePages_Free"]
	}
	if total, free := pool(); total != strconv.Itoa(pages) || free != total {
		t.Fatalf("the host's pool after %s=%d: %s pages, %s free", nr, pages, total, free)
	}
	want := func(t *testing.T, who string, got map[string]string, errno string) {
		t.Helper()
		for _, way := range []string{"mmap", "shmget", "memfd"} {
			if got[way] != errno {
				t.Errorf("%s: a huge page by %s: %s, want %s", who, way, got[way], errno)
			}
		}
	}
	hugefs := openTempDir(t, "cellgate-hugetlbfs-", 0o755)
	if err := unix.Mount("cellgate-test", hugefs, "hugetlbfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		t.Fatalf("mount a hugetlbfs on %s: %v", hugefs, err)
	}
	t.Cleanup(func() { unix.Unmount(hugefs, unix.MNT_DETACH) })
	if got := hugePageCalls(hugefs); got["file"] != "ok" {
		t.Fatalf("the test itself: a huge page by a file of a hugetlbfs: %s, want ok", got["file"])
	}
	want(t, "the test itself", hugePageCalls(""), "ok")
	routes := freshRoute(t) + fmt.Sprintf(`  - {name: nofilter, match: {path: /nofilter}, tenant: a, program: %[1]q, env: {%[2]s: probe}, seccomp: off}
  - {name: hugefs, match: {path: /hugefs}, tenant: a, program: %[1]q, env: {%[2]s: probe}, mounts: [{source: %[3]s, target: /huge, writable: true}]}
`, workerBinary(t), cellHelperEnv, hugefs)
	hugefsWarning := "route hugefs binds mounts[0] (" + hugefs + "), which shows the hugetlbfs at " + hugefs + ": its cells map huge pages of the host's pool"

	for _, tc := range []struct {
		name       string
		controller bool
		nofilter   string // what the cell of the route with seccomp: off gets, and the hugefs route's by its file
	}{{"filter", false, "ok"}, {"controller", true, "ENOMEM"}} {
		t.Run(tc.name, func(t *testing.T) {
			o := gateOptions{policy: confinePolicy(t, routes)}
			if tc.controller {
				// Down to the gate's base, as on a host whose init
				// delegates it; disabled again in the test's own group
				// once the groups below are gone.
				own, err := ownGroup()
				if err != nil {
					t.Fatal(err)
				}
				mnt, err := cgroup2Mount()
				if err != nil {
					t.Fatal(err)
				}
				ctl := filepath.Join(mnt, own, "cgroup.subtree_control")
				if b, err := os.ReadFile(ctl); err == nil && !strings.Contains(string(b), "hugetlb") {
					t.Cleanup(func() { os.WriteFile(ctl, []byte("-hugetlb"), 0) })
				}
				parent := requireKernel(t)
				for _, c := range []string{ctl, filepath.Join(parent, "cgroup.subtree_control")} {
					if err := os.WriteFile(c, []byte("+hugetlb"), 0); err != nil {
						t.Fatalf("enable hugetlb in %s: %v", c, err)
					}
				}
				o.base = filepath.Join(parent, "gate")
			}
			g := startGate(t, o)
			if closed := strings.Contains(g.log(), "features.hugetlb_closed=true"); closed != tc.controller {
				t.Fatalf("serve's features: hugetlb_closed=%v, want %v", closed, tc.controller)
			}
			for _, route := range []string{"probe", "fresh"} {
				want(t, route, g.probe(t, route, url.Values{"huge": {"1"}}).Huge, "ENOMEM")
			}
			want(t, "a cell with seccomp: off", g.probe(t, "nofilter", url.Values{"huge": {"1"}}).Huge, tc.nofilter)
			// A file of a bound hugetlbfs takes huge pages without any flag
			// the filter sees: only the controller closes it, and serve
			// warns of the mount where it does not.
			if got := g.probe(t, "hugefs", url.Values{"huge": {"1"}, "hugefs": {"/huge"}}).Huge["file"]; got != tc.nofilter {
				t.Errorf("a cell with a hugetlbfs bound: a huge page by its file: %s, want %s", got, tc.nofilter)
			}
			if warned := strings.Contains(g.log(), hugefsWarning); warned == tc.controller {
				t.Errorf("serve warns of the route's hugetlbfs mount: %v, want %v (the pool is closed: %v)\n%s", warned, !tc.controller, tc.controller, g.log())
			}
			if total, free := pool(); free != total {
				t.Errorf("the host's pool after the cells: %s pages, %s free", total, free)
			}
		})
	}
}

// TestConfineRoot: a route run as root (allow_root) cannot change the
// host's kernel from its cell, nor read the host's root-only files.
// By default its program is root of a user namespace of its own: uid 0
// there, one uid of the range on the host (the route's every cell the
// same), every capability but only in that namespace, so that
// /etc/shadow (root's, 0640) is closed to it and the kernel's settings
// refuse it (EACCES, or EROFS where its /proc has them read-only). With
// host_namespaces: [user] it is the host's root: it reads /etc/shadow
// (the control), keeps only confine.RootCaps of root's capabilities
// (none of CAP_SYS_ADMIN, CAP_SYS_RAWIO, CAP_NET_ADMIN, CAP_MKNOD, ...),
// and the sysctls and the SysRq key are read-only in its /proc: the
// kernel lets uid 0 write kernel.core_pattern and kernel.modprobe, which
// start a program of its choice as root on the host, without any
// capability, and so the dynamic debug control (every pr_debug of the
// kernel logged) and the ACPI wakeup devices. The rest of its /proc is as
// writable as any cell's. Resident and fresh cells; the control for the
// kernel's settings is this process, root on the host, which may open
// them.
//
// Root of a user namespace of its own can change nothing of its cell's
// other namespaces (the host's user namespace owns them): its hostname,
// domain name, loopback, default TTL and /tmp's mode stay as they were,
// and its resident cell serves the route's next request (the same PID
// namespace), which finds them unchanged. The host's root changes /tmp's
// mode (the control: the probe's changes take where allowed), and its
// resident cell ends with its request (cellgate_resident_ended_total
// {reason="root"}), the next request served by another.
func TestConfineRoot(t *testing.T) {
	requireMicroVM(t)
	w := workerBinary(t)
	g := confineGate(t, fmt.Sprintf(`  - {name: proberoot, match: {path: /proberoot}, tenant: a, program: %[1]q, env: {%[2]s: probe}, user: root, allow_root: true}
  - {name: freshroot, match: {path: /freshroot}, tenant: a, program: %[1]q, env: {%[2]s: probe}, user: root, allow_root: true, cells: fresh}
  - {name: hostroot, match: {path: /hostroot}, tenant: a, program: %[1]q, env: {%[2]s: probe}, user: root, allow_root: true, host_namespaces: [user]}
  - {name: hostfresh, match: {path: /hostfresh}, tenant: a, program: %[1]q, env: {%[2]s: probe}, user: root, allow_root: true, host_namespaces: [user], cells: fresh}
`, w, cellHelperEnv), "--resident-cells", "1")
	kernel := []string{"/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/proc/sys/vm/drop_caches", "/proc/sysrq-trigger",
		"/proc/dynamic_debug/control", "/proc/acpi/wakeup"}
	for _, p := range kernel {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatalf("control: open %s to append: %v", p, err)
		}
		f.Close()
	}
	const shadow = "/etc/shadow"
	if st, err := os.Stat(shadow); err != nil || st.Mode().Perm()&0o004 != 0 {
		t.Fatalf("%s: %v, mode %v: want a file others cannot read", shadow, err, st.Mode())
	}
	all := fmt.Sprintf("%016x", uint64(1)<<(capLast(t)+1)-1)
	q := url.Values{"openw": append(slices.Clone(kernel), "/proc/self/comm"), "cat": {"/proc/self/status", "/proc/self/uid_map", "/proc/self/gid_map"}, "read": {shadow}}
	hostUIDs := map[string]string{}
	replies := map[string][]probeReply{}
	for _, route := range []string{"proberoot", "freshroot", "proberoot", "hostroot", "hostfresh", "hostroot"} {
		q := maps.Clone(q)
		q["pidns"], q["state"] = []string{"1"}, []string{"1"}
		if len(replies[route]) == 0 {
			q["alter"] = []string{"1"}
		}
		r := g.probe(t, route, q)
		replies[route] = append(replies[route], r)
		host := strings.HasPrefix(route, "host")
		if r.UID != 0 || r.GID != 0 {
			t.Fatalf("%s: uid %d gid %d, want 0 and 0", route, r.UID, r.GID)
		}
		uidMap, gidMap := strings.Fields(r.Cat["/proc/self/uid_map"]), strings.Fields(r.Cat["/proc/self/gid_map"])
		caps := procStatus(r.Cat["/proc/self/status"])
		if host {
			if r.Read[shadow] != "ok" {
				t.Errorf("%s: the control, the host's root, cannot read %s: %s", route, shadow, r.Read[shadow])
			}
			if got := strings.Join(uidMap, " "); got != "0 0 4294967295" {
				t.Errorf("%s: uid_map %q, want the host's (0 0 4294967295)", route, got)
			}
			for _, p := range kernel {
				if r.OpenW[p] != "EROFS" {
					t.Errorf("%s: open %s to append: %s, want EROFS", route, p, r.OpenW[p])
				}
			}
			for _, set := range []string{"CapBnd", "CapPrm", "CapEff"} {
				checkRootCaps(t, route+": "+set, caps[set])
			}
		} else {
			if r.Read[shadow] == "ok" {
				t.Errorf("%s: root of its own user namespace reads %s", route, shadow)
			}
			if len(uidMap) != 3 || uidMap[0] != "0" || uidMap[2] != "1" || uidMap[1] == "0" || len(gidMap) != 3 || gidMap[0] != "0" || gidMap[2] != "1" {
				t.Errorf("%s: uid_map %q, gid_map %q: want uid 0 and gid 0 alone, mapped to a host uid other than 0", route, uidMap, gidMap)
			} else if u, ok := hostUIDs[route]; ok && u != uidMap[1] {
				t.Errorf("%s: root is host uid %s, and %s in an earlier cell: want the route's one uid", route, uidMap[1], u)
			} else {
				hostUIDs[route] = uidMap[1]
			}
			for _, p := range kernel {
				if got := r.OpenW[p]; got != "EACCES" && got != "EROFS" {
					t.Errorf("%s: open %s to append: %s, want EACCES or EROFS", route, p, got)
				}
			}
			for _, set := range []string{"CapBnd", "CapPrm", "CapEff"} {
				if caps[set] != all {
					t.Errorf("%s: %s %s, want every capability (%s), in its own user namespace", route, set, caps[set], all)
				}
			}
		}
		if r.OpenW["/proc/self/comm"] != "ok" {
			t.Errorf("%s: open /proc/self/comm to append: %s, want ok (only the kernel's settings are closed)", route, r.OpenW["/proc/self/comm"])
		}
	}
	if hostUIDs["proberoot"] == hostUIDs["freshroot"] {
		t.Errorf("two routes run as root share host uid %s for root: want one of the range each", hostUIDs["proberoot"])
	}

	for _, route := range []string{"proberoot", "hostroot"} {
		first, next := replies[route][0], replies[route][1]
		if len(first.State) != 5 || first.State["lo"] == "error" {
			t.Fatalf("%s: control: the probe read %v of its cell's namespaces, want 5 settings", route, first.State)
		}
		if !maps.Equal(next.State, first.State) {
			t.Errorf("%s: the next request finds %v, the first found %v before it changed what it could (%v)", route, next.State, first.State, first.Alter)
		}
		kept := next.Pidns == first.Pidns
		if route == "proberoot" {
			for what, res := range first.Alter {
				if res == "ok" {
					t.Errorf("%s: root of its own user namespace changed its cell's %s", route, what)
				}
			}
			if !kept {
				t.Errorf("%s: the next request runs in PID namespace %s, the first in %s: the resident cell of root of its own user namespace was not kept; resident cells ended:\n%s",
					route, next.Pidns, first.Pidns, regexp.MustCompile(`(?m)^cellgate_resident_ended_total.*$`).FindAllString(g.metrics(), -1))
			}
		} else {
			if first.Alter["tmp"] != "ok" {
				t.Errorf("%s: control: the host's root could not change /tmp's mode: %s", route, first.Alter["tmp"])
			}
			if kept {
				t.Errorf("%s: the next request runs in the cell of the first (PID namespace %s), which the host's root ran in", route, first.Pidns)
			}
		}
	}
	if n := metric(g.metrics(), "cellgate_resident_ended_total", map[string]string{"reason": "root"}); n != 2 {
		t.Errorf("cellgate_resident_ended_total{reason=\"root\"} %v after two requests run as the host's root and two as root of a user namespace, want 2", n)
	}
}

// capLast is the guest kernel's highest capability.
func capLast(t *testing.T) int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestServeOutlivesAcceptFailures: the kernel counts epoll watches per
// user (fs.epoll.max_user_watches, root not exempt), and cellgate's are
// uid 0's. A program run as root of its own user namespace (the default
// for a route run as root) counts against its host uid: while it holds
// every watch it may, serve answers a connection. One run as the host's
// root (host_namespaces: [user]) takes uid 0's, which makes cellgate's
// accept fail, since Go registers each accepted connection with its
// poller: serve must back off and accept again (net/http's retry of a
// temporary error), not take that connection's failure for its
// listener's and shut down; once the cell ends it serves as before. The
// control that the watches were really taken: a connection made while
// that cell holds them gets no answer.
func TestServeOutlivesAcceptFailures(t *testing.T) {
	requireMicroVM(t)
	nsDir, hostDir := openTempDir(t, "cellgate-epoll-", 0o777), openTempDir(t, "cellgate-epoll-", 0o777)
	g := confineGate(t, fmt.Sprintf(`  - {name: epollns, match: {path: /epollns}, tenant: a, program: %[1]q, env: {%[2]s: probe}, user: root, allow_root: true, memory: 192Mi, nofile: 4096, mounts: [{source: %[3]s, target: /data, writable: true}]}
  - {name: epollhost, match: {path: /epollhost}, tenant: a, program: %[1]q, env: {%[2]s: probe}, user: root, allow_root: true, host_namespaces: [user], memory: 192Mi, nofile: 4096, mounts: [{source: %[4]s, target: /data, writable: true}]}
`, workerBinary(t), cellHelperEnv, nsDir, hostDir))
	// This process is uid 0 as well: its connections are made without
	// epoll.
	const get = "GET /probe HTTP/1.1\r\nHost: cellgate\r\nConnection: close\r\n\r\n"
	addr := strings.TrimPrefix(g.url, "http://")

	got, err := holdingWatches(t, g, "epollns", nsDir, func() (string, error) { return rawExchange(addr, get) })
	if !strings.HasPrefix(got, "HTTP/1.1 200") {
		t.Errorf("a connection while root of its own user namespace holds its watches: %q, %v; want it answered (its watches are its host uid's)", got, err)
	}

	got, err = holdingWatches(t, g, "epollhost", hostDir, func() (string, error) { return rawExchange(addr, get) })
	if strings.HasPrefix(got, "HTTP/") {
		t.Fatalf("the control: a connection made while the host's root holds uid 0's epoll watches was answered (%q): the watches were not taken", got)
	}
	t.Logf("a connection while the host's root holds uid 0's watches: %q, %v", got, err)
	select {
	case <-g.exited:
		t.Fatalf("serve exited (%v) after an accept failed:\n%s", g.err, g.log())
	default:
	}
	if code, _, body := g.get("/probe"); code != http.StatusOK {
		t.Fatalf("after the root cell: GET /probe %d %s\nlog:\n%s", code, body, g.log())
	}
	if log := g.log(); !strings.Contains(log, "Accept error") || !strings.Contains(log, "no space left on device") || strings.Contains(log, "listener failed") {
		t.Errorf("serve's log should say the failed accept and its retry, and no listener failure:\n%s", log)
	}
}

// holdingWatches sends route the request that takes every epoll watch
// its cell may (holdEpollWatches, with dir the host directory of its
// /data), calls during while they are held, then releases them and
// checks the cell took them until ENOSPC. It returns during's results.
func holdingWatches(t *testing.T, g *gate, route, dir string, during func() (string, error)) (string, error) {
	t.Helper()
	type answer struct {
		code int
		body string
		err  error
	}
	held := make(chan answer, 1)
	go func() {
		resp, err := g.client.Get(g.url + "/" + route + "?epollhold=/data")
		if err != nil {
			held <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		held <- answer{resp.StatusCode, string(b), err}
	}()
	release := func() { os.WriteFile(filepath.Join(dir, "release"), nil, 0o644) }
	defer release()
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "filled")); err == nil {
			break
		}
		select {
		case a := <-held:
			t.Fatalf("%s answered before taking the watches: %d %q %v\nlog:\n%s", route, a.code, a.body, a.err, g.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s took no watches in 3 minutes\nlog:\n%s", route, g.log())
		}
	}
	got, err := during()
	release()
	var a answer
	select {
	case a = <-held:
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s did not answer within 2 minutes of its release\nlog:\n%s", route, g.log())
	}
	if a.err != nil || a.code != http.StatusOK {
		t.Fatalf("%s: %d %q %v\nlog:\n%s", route, a.code, a.body, a.err, g.log())
	}
	var r probeReply
	if err := json.Unmarshal([]byte(a.body), &r); err != nil || !strings.HasSuffix(r.Epoll, "then ENOSPC") {
		t.Fatalf("%s's watches: %q (%v), want them taken until ENOSPC", route, r.Epoll, err)
	}
	t.Logf("%s: %s", route, r.Epoll)
	return got, err
}

// rawExchange sends req to addr (IPv4 HOST:PORT) over a connection made
// with plain system calls, no epoll, and returns what came back until
// the peer closed, with the error that ended the read, if any.
func rawExchange(addr, req string) (string, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "", err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 30}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return "", err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		return "", err
	}
	if _, err := unix.Write(fd, []byte(req)); err != nil {
		return "", err
	}
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if n > 0 {
			out = append(out, buf[:n]...)
		}
		if err != nil || n <= 0 {
			return string(out), err
		}
	}
}

// TestConfineSetID: no program in a cell, run as root or not, resident
// or fresh, can leave a set-uid or set-gid file or directory in a
// writable mount, whichever call it sets the mode with (EPERM; openat2,
// whose mode the filter cannot read, ENOSYS), while it sets an ordinary
// mode. Run as root, such a file would run as root for whoever executes it
// on the host, where the directory's host mount is not nosuid. The
// control: a route with seccomp: off leaves one, seen from the host.
func TestConfineSetID(t *testing.T) {
	requireMicroVM(t)
	w := workerBinary(t)
	routes := []struct{ name, keys string }{
		{"setidroot", "user: root, allow_root: true, host_namespaces: [user]"},
		{"setidfresh", "user: root, allow_root: true, cells: fresh"},
		{"setiduser", "cells: resident"},
		{"setidoff", "user: root, allow_root: true, host_namespaces: [user], seccomp: off"},
	}
	dirs := map[string]string{}
	var extra strings.Builder
	for _, r := range routes {
		dirs[r.name] = openTempDir(t, "cellgate-"+r.name+"-", 0o777)
		fmt.Fprintf(&extra, "  - {name: %[1]s, match: {path: /%[1]s}, tenant: a, program: %[2]q, env: {%[3]s: probe}, %[4]s, mounts: [{source: %[5]s, target: /data, writable: true}]}\n",
			r.name, w, cellHelperEnv, r.keys, dirs[r.name])
	}
	g := confineGate(t, extra.String())
	setIDFiles := func(dir string) []string {
		var found []string
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if info, err := os.Lstat(p); err == nil && info.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0 && p != dir {
				found = append(found, fmt.Sprintf("%s %v", p, info.Mode()))
			}
			return nil
		})
		return found
	}
	for _, r := range routes {
		got := g.probe(t, r.name, url.Values{"setid": {"/data"}}).SetID
		if got["chmod 0700"] != "ok" {
			t.Errorf("%s: chmod 0700: %s, want ok (the control: an ordinary mode)", r.name, got["chmod 0700"])
		}
		left := setIDFiles(dirs[r.name])
		if r.name == "setidoff" {
			if got["chmod 04755"] != "ok" || len(left) == 0 {
				t.Errorf("%s (seccomp: off, the control): chmod 04755: %s, set-id files on the host %q; want ok and the file: the probe cannot make one", r.name, got["chmod 04755"], left)
			}
			continue
		}
		for name, res := range got {
			want := "EPERM"
			switch name {
			case "chmod 0700":
				continue
			case "openat2 O_CREAT 04755":
				want = "ENOSYS"
			}
			if res != want {
				t.Errorf("%s: %s: %s, want %s", r.name, name, res, want)
			}
		}
		if len(got) != 10 {
			t.Errorf("%s: %d tries reported, want 10: %v", r.name, len(got), got)
		}
		if len(left) > 0 {
			t.Errorf("%s: set-uid or set-gid files left on the host: %q", r.name, left)
		}
	}
}

// TestConfineRootWithoutSetpcap: where cellgate lacks CAP_SETPCAP (a
// bounding set cut further, as a unit's CapabilityBoundingSet can), the
// inits could not cut the capabilities of a program run as the host's
// root: serve refuses a policy with a route run as root with
// host_namespaces: [user], naming the route and the capability, and so
// does cellgate run --user root --host-namespaces user; a command run as
// root of a user namespace of its own (the default) needs no cut and
// runs there, as does one under a uid of its own.
func TestConfineRootWithoutSetpcap(t *testing.T) {
	kernel := requireKernel(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("setpriv (util-linux): %v", err)
	}
	dir := t.TempDir()
	policyPath := filepath.Join(dir, "policy.yaml")
	pol := fmt.Sprintf("version: 1\nroutes:\n  - {name: proberoot, match: {path: /proberoot}, program: %q, env: {%s: probe}, user: root, allow_root: true, host_namespaces: [user]}\n", workerBinary(t), cellHelperEnv)
	if err := os.WriteFile(policyPath, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	withoutSetpcap := func(name string, args ...string) (int, string) {
		t.Helper()
		base := filepath.Join(kernel, "nosetpcap-"+name)
		trackBase(base)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		argv := append([]string{"--bounding-set", "-setpcap", cellgateBin(t), args[0], "--cgroup-base", base}, args[1:]...)
		out, err := exec.CommandContext(ctx, setpriv, argv...).CombinedOutput()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: still running after a minute\n%s", name, out)
		}
		t.Logf("%s: %s", name, out)
		if exit != nil {
			return exit.ExitCode(), string(out)
		}
		return 0, string(out)
	}
	if status, out := withoutSetpcap("serve", "serve", "--policy", policyPath, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"); status == 0 || !strings.Contains(out, "routes[proberoot].user") || !strings.Contains(out, "fix: add CAP_SETPCAP") {
		t.Errorf("serve without CAP_SETPCAP, a route run as the host's root: exit %d, want it refused with the route and CAP_SETPCAP named:\n%s", status, out)
	}
	if status, out := withoutSetpcap("runhostroot", "run", "--user", "root", "--host-namespaces", "user", "--", "/bin/true"); status == 0 || !strings.Contains(out, "CAP_SETPCAP") {
		t.Errorf("run --user root --host-namespaces user without CAP_SETPCAP: exit %d, want it refused with CAP_SETPCAP named:\n%s", status, out)
	}
	if status, out := withoutSetpcap("runroot", "run", "--user", "root", "--", "/bin/true"); status != 0 {
		t.Errorf("run --user root (root of its own user namespace) without CAP_SETPCAP: exit %d, want 0:\n%s", status, out)
	}
	if status, out := withoutSetpcap("run", "run", "--", "/bin/true"); status != 0 {
		t.Errorf("run under a uid of its own without CAP_SETPCAP: exit %d, want 0:\n%s", status, out)
	}
}

// hostRootCaps is the capability set a program run as the host's root
// keeps (confine.RootCaps), as /proc/PID/status shows it, written out
// rather than computed from confine.RootCaps: CAP_CHOWN (0),
// CAP_DAC_OVERRIDE (1), CAP_FOWNER (3), CAP_FSETID (4), CAP_KILL (5),
// CAP_SETGID (6), CAP_SETUID (7), CAP_SETPCAP (8), CAP_SYS_CHROOT (18).
const hostRootCaps = "00000000000401fb"

// hostRootNever are capabilities with which root changes the host's
// kernel or devices from its cell: never in a set of a program run as the
// host's root, whatever else changes.
var hostRootNever = map[string]uint{"CAP_NET_ADMIN": 12, "CAP_SYS_RAWIO": 17, "CAP_SYS_ADMIN": 21, "CAP_MKNOD": 27}

// checkRootCaps fails the test unless set (a /proc/PID/status set of a
// program run as the host's root) is hostRootCaps and holds none of
// hostRootNever.
func checkRootCaps(t *testing.T, what, set string) {
	t.Helper()
	if set != hostRootCaps {
		t.Errorf("%s: %q, want %s (confine.RootCaps)", what, set, hostRootCaps)
	}
	mask, err := strconv.ParseUint(set, 16, 64)
	if err != nil {
		t.Errorf("%s: %q is not a capability set: %v", what, set, err)
		return
	}
	for name, bit := range hostRootNever {
		if mask&(1<<bit) != 0 {
			t.Errorf("%s: %s holds %s", what, set, name)
		}
	}
}

// procStatus reads a /proc/PID/status text: each field -> its value.
func procStatus(text string) map[string]string {
	out := map[string]string{}
	for line := range strings.Lines(text) {
		if name, v, ok := strings.Cut(line, ":"); ok {
			out[name] = strings.TrimSpace(v)
		}
	}
	return out
}

// TestConfineNotInherited: what a cell's program would inherit from a
// daemon set up to be favoured, it does not. Under serve run real-time
// (SCHED_FIFO, as systemd's CPUSchedulingPolicy= gives it) with a
// real-time rlimit, a cell's program, resident or fresh, runs under
// SCHED_OTHER with RLIMIT_RTPRIO 0 and cannot take a real-time policy
// (cpu.max bounds only SCHED_OTHER's time); under serve in the real-time
// I/O class, it is in another. Under serve protected from the
// OOM killer (oom_score_adj -500, a unit's OOMScoreAdjust=), the program
// is its first choice (1000) and cannot lower that. Under serve keeping
// its capabilities across a change of uid (SecureBits=no-setuid-fixup)
// with CAP_SYS_ADMIN ambient and inheritable, the program has none, and
// one run as the host's root only RootCaps. Under serve at nice -5
// (a unit's Nice=) with RLIMIT_NICE 40 and without address space
// randomisation (setarch -R), the program runs at nice 0 with RLIMIT_NICE
// 0 and randomised. The control: the probe started directly the way
// serve is, which keeps them all.
func TestConfineNotInherited(t *testing.T) {
	var tools []string
	for _, tool := range []string{"chrt", "prlimit", "ionice", "setpriv", "nice", "setarch"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatalf("%s (util-linux): %v", tool, err)
		}
		tools = append(tools, p)
	}
	// A shell lowers its oom_score_adj as root and executes the rest.
	const lowerOOM = `echo -500 > /proc/self/oom_score_adj && exec "$@"`
	favoured := []string{"/bin/sh", "-c", lowerOOM, "sh", tools[0], "-f", "1", tools[1], "--rtprio=99:99", "--nice=40:40", "--", tools[2], "-c", "1", "-n", "4",
		tools[4], "-n", "-5", tools[5], "-R",
		tools[3], "--securebits", "+no_setuid_fixup", "--inh-caps", "+sys_admin", "--ambient-caps", "+sys_admin", "--"}
	wrapper := filepath.Join(t.TempDir(), "cellgate-favoured")
	script := fmt.Sprintf("#!/bin/sh\necho -500 > /proc/self/oom_score_adj && exec %s %s \"$@\"\n", strings.Join(favoured[4:], " "), cellgateBin(t))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	query := url.Values{"sched": {"1"}, "oom": {"1"}, "cat": {"/proc/self/limits", "/proc/self/status", "/proc/self/personality"}}
	control := exec.Command(favoured[0], append(favoured[1:], workerBinary(t))...)
	control.Env = []string{cellHelperEnv + "=probe", "QUERY_STRING=" + query.Encode(), "REQUEST_METHOD=GET"}
	out, err := control.Output()
	if err != nil {
		t.Fatalf("%v: %v", control.Args, err)
	}
	_, body, _ := strings.Cut(string(out), "\r\n\r\n")
	var c probeReply
	if err := json.Unmarshal([]byte(body), &c); err != nil || c.Sched == nil {
		t.Fatalf("the control's reply %q: %v", out, err)
	}
	if rt := procLimits(c.Cat["/proc/self/limits"])["Max realtime priority"]; c.Sched.Policy != unix.SCHED_FIFO || c.Sched.RR != "ok" || rt != "99 99" || !strings.HasPrefix(c.OOMAdj, "-500,") || c.Sched.IOClass != 1 {
		t.Fatalf("the control: policy %d, SCHED_RR %s, RLIMIT_RTPRIO %q, oom_score_adj %q, I/O class %d: want SCHED_FIFO, ok, 99 99, -500, 1 (real-time)", c.Sched.Policy, c.Sched.RR, rt, c.OOMAdj, c.Sched.IOClass)
	}
	if rn, persona := procLimits(c.Cat["/proc/self/limits"])["Max nice priority"], strings.TrimSpace(c.Cat["/proc/self/personality"]); c.Sched.Nice != -5 || rn != "40 40" || persona != "00040000" {
		t.Fatalf("the control: nice %d, RLIMIT_NICE %q, personality %s: want -5, 40 40, 00040000 (ADDR_NO_RANDOMIZE)", c.Sched.Nice, rn, persona)
	}
	hostRoot := fmt.Sprintf(`  - {name: hostroot, match: {path: /hostroot}, tenant: a, program: %q, env: {%s: probe}, user: root, allow_root: true, host_namespaces: [user]}
`, workerBinary(t), cellHelperEnv)
	g := startGate(t, gateOptions{policy: confinePolicy(t, freshRoute(t)+hostRoot), bin: wrapper})
	// A program run as the host's root gets at its execve its bounding
	// set, cut to RootCaps, and the inheritable set: none of serve's
	// inheritable CAP_SYS_ADMIN.
	caps := procStatus(g.probe(t, "hostroot", query).Cat["/proc/self/status"])
	checkRootCaps(t, "hostroot: CapEff", caps["CapEff"])
	if caps["CapInh"] != "0000000000000000" {
		t.Errorf("hostroot: capabilities inheritable %s, want none", caps["CapInh"])
	}
	for _, route := range []string{"probe", "fresh"} {
		r := g.probe(t, route, query)
		if r.Sched == nil || r.Sched.Policy != unix.SCHED_NORMAL || r.Sched.RR != "EPERM" || r.Sched.IOClass == 1 {
			t.Errorf("%s: %+v, want policy SCHED_OTHER (0), SCHED_RR refused (EPERM) and an I/O class other than real-time (1)", route, r.Sched)
		}
		if got := procLimits(r.Cat["/proc/self/limits"])["Max realtime priority"]; got != "0 0" {
			t.Errorf("%s: RLIMIT_RTPRIO %q, want 0 0", route, got)
		}
		if rn, persona := procLimits(r.Cat["/proc/self/limits"])["Max nice priority"], strings.TrimSpace(r.Cat["/proc/self/personality"]); r.Sched.Nice != 0 || rn != "0 0" || persona != "00000000" {
			t.Errorf("%s: nice %d, RLIMIT_NICE %q, personality %s: want 0, 0 0 and 00000000 (address space randomisation)", route, r.Sched.Nice, rn, persona)
		}
		if caps := procStatus(r.Cat["/proc/self/status"]); caps["CapEff"] != "0000000000000000" || caps["CapAmb"] != "0000000000000000" {
			t.Errorf("%s: capabilities effective %s, ambient %s: want none", route, caps["CapEff"], caps["CapAmb"])
		}
		if r.OOMAdj != "1000, lower: EACCES" {
			t.Errorf("%s: oom_score_adj %q, want 1000, and EACCES below it", route, r.OOMAdj)
		}
	}
}

// setSysctl writes v to the sysctl file until the test ends.
func setSysctl(t *testing.T, file, v string) {
	t.Helper()
	old, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(v), 0); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	t.Cleanup(func() { os.WriteFile(file, old, 0) })
}

// procMeminfo reads /proc/meminfo: each field -> its value, without unit.
func procMeminfo(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if name, v, ok := strings.Cut(line, ":"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				out[name] = f[0]
			}
		}
	}
	return out
}

// procLimits reads a /proc/PID/limits text: each limit's name -> "SOFT HARD".
func procLimits(text string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(text, "\n")[1:] { // a header first
		if len(line) < 26 {
			continue
		}
		if f := strings.Fields(line[26:]); len(f) >= 2 { // the name is the first 26 columns
			out[strings.TrimSpace(line[:26])] = f[0] + " " + f[1]
		}
	}
	return out
}

// freshProbeGate is confineGate with a route "fresh" beside "probe": the
// probe too, in tenant a, each request in a cell of its own from its
// init up (cells: fresh) where probe's are resident.
func freshProbeGate(t *testing.T) *gate {
	t.Helper()
	return confineGate(t, freshRoute(t))
}

// freshRoute is freshProbeGate's route "fresh".
func freshRoute(t *testing.T) string {
	return fmt.Sprintf(`  - {name: fresh, match: {path: /fresh}, tenant: a, program: %q, env: {%s: probe}, cells: fresh}
`, workerBinary(t), cellHelperEnv)
}

// kernelHelper points the kernel's helper setting at sysctl (its
// core_pattern, its modprobe) at a script of the test's, written with
// prefix and suffix around its path, until the test ends; the script
// runs body with its output appended to a log, which the returned
// function reads. Only in the microVM (requireMicroVM).
func kernelHelper(t *testing.T, sysctl, prefix, suffix, body string) (log func() string) {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	script, out := filepath.Join(dir, "helper"), filepath.Join(dir, "log")
	if err := os.WriteFile(script, []byte(fmt.Sprintf("#!/bin/sh\n{ %s; } >> %s\n", body, out)), 0o755); err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(sysctl)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sysctl, []byte(prefix+script+suffix), 0); err != nil {
		t.Fatalf("%s: %v", sysctl, err)
	}
	t.Cleanup(func() { os.WriteFile(sysctl, old, 0) })
	return func() string {
		b, _ := os.ReadFile(out)
		return string(b)
	}
}

// The scale of TestConfineNothingLeft. The issue asks for 1,000
// sequential and 200 concurrent cells. In the emulated microVM on a host
// shared with other VMs (load ~8 on 2 cores) 100 sequential confined
// requests took 40 s, 200 took 116-167 s, and 200 concurrent ones 74-82
// s, so the sequential default is 100, which keeps the test near 2-3
// minutes there; the flag runs the full count (-confine.sequential 1000).
var (
	leakSequential = flag.Int("confine.sequential", 100, "sequential requests in TestConfineNothingLeft (the issue's figure: 1000)")
	leakConcurrent = flag.Int("confine.concurrent", 200, "requests sent at once in TestConfineNothingLeft")
)

// TestConfineNothingLeft: after many sequential requests and many at
// once, everything of the cells is gone while serve runs on: no process in
// a cell (the tenant's pids.current is 0, no cellgate-init, no process of
// a cell's uid, no zombie of serve's), no namespace that was not there
// before, no mount left in serve's mount namespace, serve's fd count back
// to where it was, and no cell directory but the pool's idle ones. After
// serve's exit no init runs and no mount of a cell shows in the host's
// mount table (serve's own exit checks that its groups are gone).
func TestConfineNothingLeft(t *testing.T) {
	mountsBefore := mountCount(t)
	// Cells set up on their requests: the cold path is what this test
	// counts (idle warm cells are processes in the tenant's group;
	// TestConfineWarmCells has them).
	g := confineGate(t, `  - {name: hello, match: {path: /hello}, program: "{{.CGI}}/hello"}
`, "--max-conns-per-ip", strconv.Itoa(2**leakConcurrent), "--warm-cells", "0", "--resident-cells", "0")
	pid := g.cmd.Process.Pid
	tenant := g.tenantDir(policy.DefaultTenant)
	// Warm up (the pool's idle cells, the runtime's threads and fds),
	// then take the baseline once the pool is full again.
	checkAll(t, "warm-up", load(g.client, 8, 4, getter(g.url+"/hello")), http.StatusOK)
	// Idle keep-alive connections are fds of serve's too.
	g.client.CloseIdleConnections()
	base := settledCellState(t, pid, tenant, nil)
	t.Logf("baseline: %+v", base)

	start := time.Now()
	for i := 0; i < *leakSequential; i++ {
		if code, _, body := g.get("/hello"); code != http.StatusOK {
			t.Fatalf("sequential request %d: %d %s", i, code, body)
		}
	}
	t.Logf("%d sequential requests took %s", *leakSequential, time.Since(start).Round(time.Millisecond))
	g.client.CloseIdleConnections()
	settledCellState(t, pid, tenant, &base)

	start = time.Now()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *leakConcurrent, DisableCompression: true}, Timeout: 5 * time.Minute}
	rs := load(client, *leakConcurrent, *leakConcurrent, getter(g.url+"/hello"))
	client.CloseIdleConnections()
	t.Logf("%d concurrent requests took %s, p50 %s", *leakConcurrent, time.Since(start).Round(time.Millisecond), quantile(rs, .5).Round(time.Millisecond))
	// Every request is answered, and with 200: a response pipe whose
	// write end another request's clone still holds (the clone of an init
	// with new namespaces takes the kernel seconds under this load) must
	// not hold the answer (sandbox.OutputPipe); it did, and up to 32 of
	// 200 got a 500.
	errs, not200 := 0, 0
	for i, r := range rs {
		switch {
		case r.err != nil:
			if errs < 5 {
				t.Errorf("concurrent request %d: %v", i, r.err)
			}
			errs++
		case r.status != http.StatusOK:
			if not200 < 5 {
				t.Errorf("concurrent request %d: status %d, want 200 (see serve's log)", i, r.status)
			}
			not200++
		}
	}
	if errs+not200 > 0 {
		t.Errorf("%d of %d concurrent requests failed, %d with an error status", errs+not200, len(rs), not200)
	}
	settledCellState(t, pid, tenant, &base)
	// The network namespaces serve holds by fd (not in FDs above): its
	// own, those made ahead (--net-namespaces, 8) and those waiting for
	// reuse (8 times that, one tenant may hold them all), and the routes'
	// mount templates: fewer than the 200 cells that just ended.
	if ns := fdsOf(t, pid, true); len(ns) > 1+8+8*8+2 {
		t.Errorf("serve holds %d namespaces by fd, want at most 75 (its own, the network namespaces made ahead and waiting for reuse, a route's mount templates): %v", len(ns), ns)
	}

	g.stop()
	if n := initsRunning(); n > 0 {
		t.Errorf("%d cellgate-init processes left", n)
	}
	if n := mountCount(t); n != mountsBefore {
		t.Errorf("the host's mount table has %d entries, %d before: a cell's mounts leaked", n, mountsBefore)
	}
}

// cellState is what cells could leave behind, seen from outside serve.
type cellState struct {
	FDs        int // serve's open fds
	Mounts     int // lines of serve's mountinfo
	Namespaces int // distinct namespaces of every process
	Inits      int // cellgate-init processes
	CellUIDs   int // processes running as a per-cell uid
	Zombies    int // unreaped children of serve
	Pids       int // the tenant's pids.current: processes in its cells
	Cells      int // cell directories under the tenant
	Populated  int // of those, cells with a process in them
}

// settledCellState waits (up to a minute: ending a cell and refilling the
// pool are asynchronous) until the state stops changing, or, with want,
// until it is back to want (with no more cells than then, none
// populated), and fails the test with the difference if it is not.
func settledCellState(t *testing.T, pid int, tenant string, want *cellState) cellState {
	t.Helper()
	back := func(s cellState) bool {
		w := *want
		w.Cells = s.Cells
		return s == w && s.Cells <= want.Cells
	}
	var prev, s cellState
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(250 * time.Millisecond) {
		s = readCellState(t, pid, tenant)
		if want == nil && s == prev && s.Pids == 0 && s.Populated == 0 {
			return s
		}
		if want != nil && back(s) {
			return s
		}
		prev = s
		if time.Now().After(deadline) {
			break
		}
	}
	if want == nil {
		t.Fatalf("serve's cells did not settle in a minute: %+v", s)
	}
	t.Errorf("a minute after the requests: %+v, want %+v (cells at most %d, none populated): the cells left something", s, *want, want.Cells)
	return s
}

// fdsOf lists the fds of process pid: those that hold a network or
// mount namespace (network namespaces made ahead, sandbox/netns.go, and
// mount templates, sandbox/templates.go, remade while in use), or all
// the others.
func fdsOf(t *testing.T, pid int, netns bool) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("serve's fds: %v", err)
	}
	var out []string
	for _, fd := range fds {
		link, _ := os.Readlink(filepath.Join(dir, fd.Name()))
		if (strings.HasPrefix(link, "net:[") || strings.HasPrefix(link, "mnt:[")) == netns {
			out = append(out, link)
		}
	}
	return out
}

func readCellState(t *testing.T, pid int, tenant string) cellState {
	t.Helper()
	var s cellState
	s.FDs = len(fdsOf(t, pid, false))
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatalf("serve's mounts: %v", err)
	}
	s.Mounts = strings.Count(string(mi), "\n")
	namespaces := map[string]bool{}
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		ns, _ := os.ReadDir(filepath.Join(dir, "ns"))
		for _, n := range ns {
			if link, err := os.Readlink(filepath.Join(dir, "ns", n.Name())); err == nil {
				namespaces[link] = true
			}
		}
		status, err := os.ReadFile(filepath.Join(dir, "status"))
		if err != nil {
			continue // gone meanwhile
		}
		if uid, ok := statusField(string(status), "Uid"); ok {
			r := sandbox.DefaultUIDRange
			if v, err := strconv.ParseUint(uid, 10, 32); err == nil && v >= uint64(r.First) && v < uint64(r.First)+uint64(r.Count) {
				s.CellUIDs++
			}
		}
		if st, _ := statusField(string(status), "State"); strings.HasPrefix(st, "Z") {
			if pp, _ := statusField(string(status), "PPid"); pp == strconv.Itoa(pid) {
				s.Zombies++
			}
		}
	}
	s.Namespaces = len(namespaces)
	s.Inits = initsRunning()
	cur, err := strconv.Atoi(readTrim(t, filepath.Join(tenant, "pids.current")))
	if err != nil {
		t.Fatal(err)
	}
	s.Pids = cur
	cells, err := os.ReadDir(tenant)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cells {
		if c.IsDir() {
			s.Cells++
			// A cell the pool removes meanwhile has no cgroup.events.
			ev, err := os.ReadFile(filepath.Join(tenant, c.Name(), "cgroup.events"))
			if err == nil && strings.Contains(string(ev), "populated 1") {
				s.Populated++
			}
		}
	}
	return s
}

// statusField is the first word of a /proc/PID/status field.
func statusField(status, name string) (string, bool) {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				return f[0], true
			}
		}
	}
	return "", false
}

// TestConfineWarmCells: with cells set up ahead (--warm-cells), or
// resident (--resident-cells, the default), each request still runs under
// its own uid, with a /proc listing only its init and itself, and a /tmp
// without the files of the request before, and has its own accounting;
// serve's exit ends the idle cells.
func TestConfineWarmCells(t *testing.T) {
	t.Run("warm", func(t *testing.T) { testKeptCells(t, "--warm-cells", "2", "--resident-cells", "0") })
	t.Run("resident", func(t *testing.T) { testKeptCells(t, "--resident-cells", "2") })
}

func testKeptCells(t *testing.T, args ...string) {
	g := confineGate(t, "", args...)
	uids := map[int]bool{}
	for i := 0; i < 6; i++ {
		r := g.probe(t, "probe", url.Values{"read": {"/tmp/mark"}, "fill": {"/tmp/mark:1"}, "procs": {"1"}})
		if r.Read["/tmp/mark"] == "ok" {
			t.Errorf("request %d reads the /tmp file of an earlier request", i)
		}
		if r.Fill["/tmp/mark"] != "ok" {
			t.Errorf("request %d: write /tmp/mark: %s", i, r.Fill["/tmp/mark"])
		}
		if len(r.Procs) != 2 || !strings.HasPrefix(r.Procs[0], "1 cellgate-init") {
			t.Errorf("request %d: /proc lists %q", i, r.Procs)
		}
		uids[r.UID] = true
	}
	if len(uids) < 2 {
		t.Errorf("6 requests ran under %d uid(s), want a uid per cell", len(uids))
	}
	g.stop()
	// Each record was written once its cell's accounting was read, after
	// the answer; serve's exit waited for the last one.
	recs := g.recordsFor("probe")
	if len(recs) != 6 {
		t.Errorf("access log: %d records of route probe after serve's exit, want 6", len(recs))
	}
	for i, rec := range recs {
		if rec.Cell == nil || rec.Cell.CPUUsageUsec == 0 || rec.Cell.MemoryPeak == 0 {
			t.Errorf("access-log record %d has no accounting: %+v", i, rec.Cell)
		}
	}
	if n := initsRunning(); n > 0 {
		t.Errorf("%d cellgate-init processes left after serve's exit", n)
	}
}

func mountCount(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

func initsRunning() int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.HasPrefix(string(b), "cellgate-init\x00") {
			n++
		}
	}
	return n
}

// TestConfineOOMBudget: a request OOM-killed because its tenant's budget
// ran out, under its own limit, is reported as that (503, outcome
// oom_budget), not as having exceeded its own memory limit. The tenant's
// budget is eaten by a file a filesystem: host cell left on a tmpfs of the
// host, which stays charged to the tenant after its cell is gone.
func TestConfineOOMBudget(t *testing.T) {
	shared := openTempDir(t, "cellgate-oom-", 0o777)
	g := confineGate(t, `  - {name: leak, match: {path: /leak}, tenant: t, program: "`+workerBinary(t)+`", env: {`+cellHelperEnv+`: probe}, filesystem: host, memory: 80Mi}
  - {name: hog, match: {path: /hog}, tenant: t, program: "{{.CGI}}/memhog", memory: 80Mi}
`)
	left := filepath.Join(shared, "left")
	t.Cleanup(func() { os.Remove(left) })
	if r := g.probe(t, "leak", url.Values{"fill": {left + ":56"}}); r.Fill[left] != "ok" {
		t.Fatalf("leave 56 MiB in %s: %s", left, r.Fill[left])
	}
	code, _, body := g.get("/hog?mb=60")
	if code != http.StatusServiceUnavailable || strings.Contains(body, "exceeded its memory limit") {
		t.Errorf("a 60 MiB request (limit 80Mi) in a tenant of 96Mi with 56 MiB left charged: %d %q, want 503 for the tenant's budget", code, body)
	}
	recs := g.waitRecords("hog", 1, time.Minute)
	if recs[0].Outcome != "oom_budget" {
		t.Errorf("access log outcome %q, want oom_budget", recs[0].Outcome)
	}
	// Control: with the file gone the same request fits.
	os.Remove(left)
	if code, _, body := g.get("/hog?mb=60"); code != http.StatusOK {
		t.Errorf("the same request with the budget free: %d %q", code, body)
	}
}

// TestResidentInitOOMBudget: when its tenant's budget runs out and the
// kernel OOM-kills a resident cell's init (here the one killable process
// of the request: its program made unkillable), the end of the init's
// PID namespace kills the program, and the request is reported as ended
// for the budget (503, outcome oom_budget), as when the program is the
// one chosen. Before, it was reported as a crash (502, outcome signal):
// only the program's cell's memory.events were read, and the kill was
// counted in the init's.
func TestResidentInitOOMBudget(t *testing.T) {
	shared := openTempDir(t, "cellgate-oom-", 0o777)
	w := workerBinary(t)
	g := confineGate(t, `  - {name: leak, match: {path: /leak}, tenant: t, program: "`+w+`", env: {`+cellHelperEnv+`: probe}, filesystem: host, memory: 80Mi}
  - {name: filler, match: {path: /filler}, tenant: t, program: "`+w+`", env: {`+cellHelperEnv+`: probe}, memory: 80Mi, tmpfs_size: 80Mi}
`, "--resident-cells", "1")
	left := filepath.Join(shared, "left")
	t.Cleanup(func() { os.Remove(left) })
	if r := g.probe(t, "leak", url.Values{"fill": {left + ":56"}}); r.Fill[left] != "ok" {
		t.Fatalf("leave 56 MiB in %s: %s", left, r.Fill[left])
	}
	// Control: the route's requests run in resident cells.
	if r := g.probe(t, "filler", url.Values{"pidns": {"1"}}); r.Pidns == "" {
		t.Fatalf("control: the filler's probe ran without a PID namespace")
	}
	got := make(chan reply, 1)
	go func() {
		got <- g.getReply("/filler?" + url.Values{"unkillable": {"1"}, "fill": {"/dev/shm/fill:60"}}.Encode())
	}()
	probe := ""
	for end := time.Now().Add(time.Minute); probe == "" && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		for _, pid := range processesWith(w + "\x00") {
			if b, _ := os.ReadFile("/proc/" + pid + "/cgroup"); strings.Contains(string(b), "/cells/t/") {
				probe = pid
			}
		}
	}
	if probe == "" {
		t.Fatalf("the filler's program did not start in a minute:\n%s", g.log())
	}
	if err := os.WriteFile("/proc/"+probe+"/oom_score_adj", []byte("-1000"), 0o644); err != nil {
		t.Fatalf("make the program %s unkillable: %v", probe, err)
	}
	r := <-got
	if r.err != nil || r.status != http.StatusServiceUnavailable || strings.Contains(r.body, "exceeded its memory limit") {
		t.Errorf("a request whose init the kernel chose at its tenant's budget: %d %q (%v), want 503 for the tenant's budget", r.status, r.body, r.err)
	}
	if recs := g.waitRecords("filler", 2, time.Minute); recs[1].Outcome != "oom_budget" {
		t.Errorf("access log outcome %q, want oom_budget\nlog:\n%s", recs[1].Outcome, g.log())
	}
	// Control: with the file gone the same request fits.
	os.Remove(left)
	if r := g.probe(t, "filler", url.Values{"fill": {"/dev/shm/fill:60"}}); r.Fill["/dev/shm/fill"] != "ok" {
		t.Errorf("the same request with the budget free: %v", r.Fill)
	}
}

// TestConfineRunLeavesNothing: a confined run returns at its init's last
// report and leaves the cell's teardown to the background, yet what the
// program left is gone when Run returns: a process it left in a session
// of its own (killed and reaped by the init of its PID namespace), so the
// cell holds at most its exiting init. Once the teardowns end, every uid
// is back and no init runs.
func TestConfineRunLeavesNothing(t *testing.T) {
	cellgateBin(t)
	r := newBenchEnvWarm(t, 0)
	w := workerBinary(t)
	prep := defaultPlan(t, w)
	sleepArg := fmt.Sprintf("3600.%d", os.Getpid()) // names this test's sleepers
	for i := 0; i < 5; i++ {
		var out bytes.Buffer
		var cell string
		spec := sandbox.Spec{Path: w, Args: []string{w, sleepArg}, Env: []string{cellHelperEnv + "=orphan"},
			Confine: prep, Stdout: &out, Started: func(p string, _ uint64) { cell = p }}
		res, err := r.Run(context.Background(), spec)
		if err != nil || res.Cause != sandbox.CauseOK || strings.TrimSpace(out.String()) != "left" {
			t.Fatalf("run %d: %v, cause %s, output %q", i, err, res.Cause, out.String())
		}
		if pids := processesWith("sleep\x00" + sleepArg + "\x00"); len(pids) > 0 {
			t.Errorf("run %d: the process the program left (pid %v) runs after Run returned", i, pids)
		}
		// The background teardown may remove the cell at any time: gone
		// before the open (ENOENT) or between the open and the read
		// (ENODEV), it holds nothing.
		b, err := os.ReadFile(filepath.Join(cell, "cgroup.procs"))
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENODEV) {
			t.Fatal(err)
		}
		for _, f := range strings.Fields(string(b)) {
			cmd, _ := os.ReadFile(filepath.Join("/proc", f, "cmdline"))
			if len(cmd) > 0 && !strings.HasPrefix(string(cmd), "cellgate-init\x00") {
				t.Errorf("run %d: cell %s still holds pid %s (%q) after Run returned", i, cell, f, cmd)
			}
		}
	}
	for end := time.Now().Add(time.Minute); r.TeardownsPending() > 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := r.TeardownsPending(); n > 0 {
		t.Fatalf("%d teardowns still pending after a minute", n)
	}
	if n := r.UIDsInFlight(); n != 0 {
		t.Errorf("%d uids handed out after every teardown ended", n)
	}
	if n := initsRunning(); n > 0 {
		t.Errorf("%d cellgate-init processes left after every teardown ended", n)
	}
}

// TestConfineLateUsage: a confined run with Spec.LateUsage whose program
// exits 0 returns before its cell's accounting is read (serve answers so),
// and Account then gives the kernel's figures for the whole cell: the
// memory its program touched, both of its processes (init and program).
// A run that ends otherwise has its accounting read before Run returns.
func TestConfineLateUsage(t *testing.T) {
	cellgateBin(t)
	r := newBenchEnvWarm(t, 0)
	w := workerBinary(t)
	prep := defaultPlan(t, w)
	// A host without the memory and pids controllers (a native run) has
	// no peaks, and Missing names them; make test's kernel has both, and
	// there a peak missing fails.
	missing := func(u cgroup.Usage, file string) bool {
		return !required() && slices.Contains(u.Missing, file)
	}
	for i := 0; i < 3; i++ {
		spec := sandbox.Spec{Path: w, Args: []string{w, "16"}, Env: []string{cellHelperEnv + "=touch"},
			Confine: prep, LateUsage: true}
		res, err := r.Run(context.Background(), spec)
		if err != nil || res.Cause != sandbox.CauseOK {
			t.Fatalf("run %d: %v, cause %s", i, err, res.Cause)
		}
		if !res.Late() || res.Usage.CPUUsageUsec != 0 || res.Usage.MemoryPeak != 0 {
			t.Errorf("run %d: Late %v with Usage %+v, want the accounting left for later", i, res.Late(), res.Usage)
		}
		if err := res.Account(); err != nil {
			t.Errorf("run %d: Account: %v", i, err)
		}
		u := res.Usage
		peakOK := u.MemoryPeak >= 16<<20 || missing(u, "memory.peak")
		pidsOK := u.PidsPeak >= 2 || missing(u, "pids.peak")
		if res.Late() || u.CPUUsageUsec == 0 || !peakOK || !pidsOK {
			t.Errorf("run %d: after Account, Late %v, Usage %+v: want the CPU used, a peak of >= 16 MiB and 2 processes", i, res.Late(), u)
		}
	}
	spec := sandbox.Spec{Path: w, Args: []string{w}, Env: []string{cellHelperEnv + "=no-such-role"},
		Confine: prep, LateUsage: true}
	res, err := r.Run(context.Background(), spec)
	if err != nil || res.Cause != sandbox.CauseExit {
		t.Fatalf("a failing program: %v, cause %s", err, res.Cause)
	}
	if res.Late() || res.Usage.CPUUsageUsec == 0 || (res.Usage.PidsPeak == 0 && !missing(res.Usage, "pids.peak")) {
		t.Errorf("a failing program: Late %v, Usage %+v: want the accounting read before Run returned", res.Late(), res.Usage)
	}
}

// TestConfineBlockingStdio: a confined program's stdin, stdout and
// stderr are blocking, as a program that is not Go expects (a C or shell
// program's read or write is not retried on EAGAIN): a shell reads a
// request body larger than a pipe's buffer and writes a response larger
// than it to a reader that starts late, and its descriptors' flags have no
// O_NONBLOCK, with and without the init spawner and from a warm cell. The
// warm cells' hand-off had passed the proxy's non-blocking pipes on.
func TestConfineBlockingStdio(t *testing.T) {
	cellgateBin(t)
	prep := defaultPlan(t, "/bin/sh")
	body := bytes.Repeat([]byte("b"), 200<<10)
	const script = `grep -h flags /proc/self/fdinfo/0 /proc/self/fdinfo/1 /proc/self/fdinfo/2 >&2; wc -c | tr -d ' '; head -c 1048576 /dev/zero`
	for _, c := range []struct {
		name   string
		cfg    sandbox.Config
		osPipe bool // stdout an os.Pipe, which Go makes non-blocking
	}{
		{"init-forked", sandbox.Config{}, false},
		{"init-spawner", sandbox.Config{InitSpawner: true}, false},
		{"warm", sandbox.Config{InitSpawner: true, WarmCells: 1}, false},
		{"os-pipe", sandbox.Config{InitSpawner: true}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newConfinedEnv(t, c.cfg)
			for i := 0; i < 3; i++ {
				var pr io.ReadCloser
				var pw *os.File
				var writersGone func()
				if c.osPipe {
					rd, wr, err := os.Pipe()
					if err != nil {
						t.Fatal(err)
					}
					pr, pw, writersGone = rd, wr, func() {}
				} else {
					rd, wr, err := sandbox.OutputPipe()
					if err != nil {
						t.Fatal(err)
					}
					pr, pw, writersGone = rd, wr, rd.WritersGone
				}
				out := make(chan []byte)
				go func() {
					time.Sleep(200 * time.Millisecond) // the program fills the pipe first
					b, _ := io.ReadAll(pr)
					out <- b
				}()
				var stderr bytes.Buffer
				res, err := r.Run(context.Background(), sandbox.Spec{Path: "/bin/sh", Args: []string{"sh", "-c", script},
					Confine: prep, Stdin: bytes.NewReader(body), Stdout: pw, Stderr: &stderr})
				pw.Close()
				writersGone()
				got := <-out
				pr.Close()
				if err != nil || res.Cause != sandbox.CauseOK {
					t.Errorf("run %d: %v, cause %s, exit %d; stderr %q", i, err, res.Cause, res.ExitCode, stderr.String())
				}
				want := fmt.Sprintf("%d\n", len(body))
				if !bytes.HasPrefix(got, []byte(want)) || len(got) != len(want)+1<<20 {
					t.Errorf("run %d: %d bytes of output starting %q, want %q and 1 MiB", i, len(got), got[:min(len(got), 16)], want)
				}
				lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
				if len(lines) != 3 {
					t.Errorf("run %d: stderr %q, want the flags of fds 0, 1 and 2", i, stderr.String())
				}
				for _, line := range lines {
					f := strings.Fields(line)
					if len(f) != 2 || f[0] != "flags:" {
						t.Errorf("run %d: stderr line %q", i, line)
						continue
					}
					if fl, err := strconv.ParseUint(f[1], 8, 32); err != nil || fl&unix.O_NONBLOCK != 0 {
						t.Errorf("run %d: a standard stream of the program has flags %s: O_NONBLOCK (%v)", i, f[1], err)
					}
				}
			}
		})
	}
}

// TestConfineShellBody: through serve, a shell CGI program in a confined
// cell (warm, as by default) reads a POST body larger than a pipe's buffer
// and writes a response larger than it: each whole, every time.
func TestConfineShellBody(t *testing.T) {
	dir := openTempDir(t, "cellgate-sh-", 0o755)
	script := filepath.Join(dir, "count.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nwc -c | tr -d ' '\nhead -c 1048576 /dev/zero\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	g := confineGate(t, fmt.Sprintf("  - {name: count, match: {path: /count}, tenant: a, program: %q}\n", script))
	body := bytes.Repeat([]byte("b"), 200<<10)
	want := fmt.Sprintf("%d\n", len(body))
	for i := 0; i < 5; i++ {
		req, err := http.NewRequest(http.MethodPost, g.url+"/count", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		code, _, got := g.do(req)
		if code != http.StatusOK || !strings.HasPrefix(got, want) || len(got) != len(want)+1<<20 {
			t.Errorf("POST %d: %d, %d bytes starting %q; want 200, %q and 1 MiB\nlog:\n%s", i, code, len(got), got[:min(len(got), 16)], want, g.log())
		}
	}
}

// TestConfineScriptRuntimes: CGI scripts of the system's Python and Perl
// run in confined cells (the default view and filter, warm cells) and
// read a POST body whole, held in memory (a pipe) or spooled to a file
// by the proxy, and write a response of a MiB: the runtimes start in the
// view, and their standard streams behave as they expect.
func TestConfineScriptRuntimes(t *testing.T) {
	dir := openTempDir(t, "cellgate-scripts-", 0o755)
	scripts := map[string]string{
		"/usr/bin/python3": `#!/usr/bin/python3
import hashlib, os, sys
data = sys.stdin.buffer.read(int(os.environ.get("CONTENT_LENGTH") or 0))
out = sys.stdout.buffer
out.write(b"Content-Type: text/plain\r\n\r\n")
out.write(b"%d %s\n" % (len(data), hashlib.sha256(data).hexdigest().encode()))
out.write(b"x" * (1 << 20))
`,
		"/usr/bin/perl": `#!/usr/bin/perl
use Digest::SHA qw(sha256_hex);
binmode STDIN; binmode STDOUT;
my $n = $ENV{CONTENT_LENGTH} || 0; my $d = "";
while (length($d) < $n) { my $r = read(STDIN, $d, $n - length($d), length($d)); last unless $r; }
print "Content-Type: text/plain\r\n\r\n", length($d), " ", sha256_hex($d), "\n", "x" x (1 << 20);
`,
	}
	var routes strings.Builder
	var names []string
	probes := map[string][]string{"/usr/bin/python3": {"-c", "import hashlib"}, "/usr/bin/perl": {"-MDigest::SHA", "-e1"}}
	for interp, text := range scripts {
		if err := exec.Command(interp, probes[interp]...).Run(); err != nil {
			skipOrFail(t, "%s %s: %v (Debian's python3 and perl)", interp, strings.Join(probes[interp], " "), err)
		}
		name := filepath.Base(interp)
		path := filepath.Join(dir, name+".cgi")
		if err := os.WriteFile(path, []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&routes, "  - {name: %s, match: {path: /%s}, tenant: a, program: %q}\n", name, name, path)
		names = append(names, name)
	}
	g := confineGate(t, routes.String())
	for _, name := range names {
		for _, size := range []int{100 << 10, 400 << 10} { // in memory, spooled to a file
			body := bytes.Repeat([]byte("0123456789abcdef"), size/16)
			sum := sha256.Sum256(body)
			want := fmt.Sprintf("%d %x\n", len(body), sum)
			req, err := http.NewRequest(http.MethodPost, g.url+"/"+name, bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			code, _, got := g.do(req)
			if code != http.StatusOK || !strings.HasPrefix(got, want) || len(got) != len(want)+1<<20 {
				t.Errorf("%s, a body of %d bytes: %d, %d bytes starting %q; want 200, %q and 1 MiB\nlog:\n%s",
					name, size, code, len(got), got[:min(len(got), 80)], want, g.log())
			}
		}
	}
}

// openTempDir makes a temporary directory other uids may enter (mode
// perm), removed at the test's end: not t.TempDir(), whose parent is
// closed to them.
func openTempDir(t testing.TB, pattern string, perm os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestConfineHugePages: a cgi route's program runs without transparent
// huge pages (its init's PR_SET_THP_DISABLE, kept across the program's
// execve) unless the route says huge_pages: system, from a warm cell and
// from a cold one.
func TestConfineHugePages(t *testing.T) {
	// With the route's key the program has the daemon's setting, which is
	// this process's: the system's.
	own, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	system, _ := statusField(string(own), "THP_enabled")
	if system != "1" {
		skipOrFail(t, "THP_enabled %q in this process: transparent huge pages are off already", system)
	}
	for _, warm := range []string{"4", "0"} {
		t.Run("warm-cells="+warm, func(t *testing.T) {
			g := confineGate(t, `  - {name: thp, match: {path: /thp}, tenant: a, program: "`+workerBinary(t)+`", env: {`+cellHelperEnv+`: probe}, huge_pages: system}
`, "--warm-cells", warm)
			for route, want := range map[string]string{"probe": "0", "thp": system} {
				for i := 0; i < 2; i++ {
					r := g.probe(t, route, url.Values{"cat": {"/proc/self/status"}})
					if thp, _ := statusField(r.Cat["/proc/self/status"], "THP_enabled"); thp != want {
						t.Errorf("route %s, request %d: THP_enabled %q, want %s", route, i, thp, want)
					}
				}
			}
		})
	}
}

// processesWith lists the pids whose command line starts with prefix.
func processesWith(prefix string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.HasPrefix(string(b), prefix) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// TestConfineNetnsAhead: with network namespaces made ahead
// (Config.NetNamespaces), a confined cell still gets one of its own, not
// the daemon's, with loopback up, and cells take them from the pool.
// (Inode numbers of namespaces are reused once one is gone, so that two
// sequential cells never share one is not observable here: a namespace
// made ahead is taken once, by netnsPool.take.)
func TestConfineNetnsAhead(t *testing.T) {
	cellgateBin(t)
	r := newConfinedEnv(t, sandbox.Config{NetNamespaces: 2})
	w := workerBinary(t)
	prep := defaultPlan(t, w)
	host, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	// At least 8 cells, and more until one found a namespace made ahead
	// (the pool fills in the background), for up to a minute.
	runs := 0
	for end := time.Now().Add(time.Minute); runs < 8 || time.Now().Before(end); runs++ {
		if hits, _ := r.NetnsStats(); runs >= 8 && hits > 0 {
			break
		}
		runNetns(t, r, prep, w, host, fmt.Sprintf("run %d", runs))
		time.Sleep(50 * time.Millisecond) // let the pool refill: the test is about the pooled ones
	}
	if hits, misses := r.NetnsStats(); hits == 0 || hits+misses != uint64(runs) {
		t.Errorf("%d cells took a namespace made ahead, %d made their own; want some of the first, %d in all", hits, misses, runs)
	}

	// A namespace made ahead that the init cannot be started in (here
	// each one's fd made /dev/null's, setns refusing it): the init makes
	// its own, and the request is served.
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	spoilt := 0
	for _, e := range ents {
		if link, _ := os.Readlink("/proc/self/fd/" + e.Name()); strings.HasPrefix(link, "net:") && link != host {
			fd, _ := strconv.Atoi(e.Name())
			if err := unix.Dup3(int(null.Fd()), fd, unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			spoilt++
		}
	}
	if spoilt == 0 {
		t.Fatal("control: no namespace made ahead among this process's fds")
	}
	runNetns(t, r, prep, w, host, "a cell whose namespace made ahead cannot be entered")
}

// TestConfineNetnsReuse: a network namespace made ahead serves later
// cells of the same tenant once its cell is gone, and only then: never a
// cell of another tenant, never after a cell that left a socket in it
// (here a connection in TIME_WAIT); a program run as root cannot change
// the namespace's settings (here its default TTL: /proc/sys is read-only
// for it, and root of a user namespace of its own has no capability over
// the namespace). The namespace of a program run as root of its own user
// namespace serves the tenant's next cell (the last given back is the
// first taken); that of one run as the host's root is not reused.
func TestConfineNetnsReuse(t *testing.T) {
	w := workerBinary(t)
	g := confineGate(t, fmt.Sprintf(`  - {name: probeb, match: {path: /probeb}, tenant: b, program: %[1]q, env: {%[2]s: probe}}
  - {name: proberoot, match: {path: /proberoot}, tenant: a, program: %[1]q, env: {%[2]s: probe}, user: root, allow_root: true}
  - {name: hostroot, match: {path: /hostroot}, tenant: a, program: %[1]q, env: {%[2]s: probe}, user: root, allow_root: true, host_namespaces: [user]}
`, w, cellHelperEnv), "--warm-cells", "0", "--resident-cells", "0", "--net-namespaces", "2")
	// Each request waits for the teardown of the one before, which gives
	// its namespace back.
	settled := func() {
		t.Helper()
		for end := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if strings.Contains(g.metrics(), "\ncellgate_cell_teardowns 0\n") {
				return
			}
			if time.Now().After(end) {
				t.Fatalf("teardowns still running after 30s:\n%s", g.metrics())
			}
		}
	}
	probe := func(route string, q url.Values) probeReply {
		t.Helper()
		r := g.probe(t, route, q)
		settled()
		return r
	}
	check := url.Values{"netns": {""}, "sockets": {""}, "ttl": {""}}
	clean := func(what string, r probeReply) {
		t.Helper()
		if r.Sockets != 0 || r.TTL != "64" {
			t.Errorf("%s: the cell's network namespace has %d sockets and default TTL %s; want 0 and 64 (what an earlier cell left)", what, r.Sockets, r.TTL)
		}
	}
	probe("probe", check)
	time.Sleep(time.Second) // the pool's first namespaces

	seenA := map[string]int{}
	reusedA := 0
	for i := range 6 {
		r := probe("probe", check)
		clean(fmt.Sprintf("tenant a, request %d", i), r)
		if seenA[r.Netns] > 0 {
			reusedA++
		}
		seenA[r.Netns]++
	}
	if reusedA < 3 {
		t.Errorf("%d of 6 sequential requests of one tenant reused a namespace (%v); want most", reusedA, seenA)
	}
	if !regexp.MustCompile(`\ncellgate_netns_reused_total [1-9]`).MatchString(g.metrics()) {
		t.Errorf("cellgate_netns_reused_total is 0 after reuse:\n%s", g.metrics())
	}
	for i := range 4 {
		r := probe("probeb", check)
		clean(fmt.Sprintf("tenant b, request %d", i), r)
		if seenA[r.Netns] > 1 { // one tenant a reused is held by the pool: its id is not recycled
			t.Errorf("tenant b, request %d: in %s, a namespace of tenant a's", i, r.Netns)
		}
	}

	if r := probe("probe", url.Values{"timewait": {""}}); r.TimeWait != "ok" {
		t.Fatalf("leave a connection in TIME_WAIT: %s", r.TimeWait)
	}
	for i := range 4 {
		clean(fmt.Sprintf("tenant a after a TIME_WAIT, request %d", i), probe("probe", check))
	}
	for _, route := range []string{"proberoot", "hostroot"} {
		root := probe(route, url.Values{"setttl": {"33"}, "ttl": {""}, "netns": {""}})
		if root.TTL != "EROFS" && root.TTL != "EACCES" || root.UID != 0 {
			t.Fatalf("%s: uid %d, setting the default TTL to 33: %s, want EACCES or EROFS", route, root.UID, root.TTL)
		}
		for i := range 4 {
			r := probe("probe", check)
			clean(fmt.Sprintf("tenant a after a request of %s, request %d", route, i), r)
			switch reused := r.Netns == root.Netns; {
			case i == 0 && route == "proberoot" && !reused:
				t.Errorf("the request after one run as root of its own user namespace runs in %s, not in its namespace %s", r.Netns, root.Netns)
			case route == "hostroot" && reused:
				t.Errorf("tenant a, request %d after one run as the host's root: in its namespace %s", i, root.Netns)
			}
		}
	}
}

// dataDir makes dir with a file f holding content.
func dataDir(t *testing.T, dir, content string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replaceByRename replaces a file as an editor saves it: a copy, mode
// 0644, renamed over it.
func replaceByRename(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".new", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// TestConfineViewAge: a view made ahead serves no request 20 s after it
// was made, however long its cell waited (a warm cell is taken last in
// first out, so one at the bottom of a set under a trickle of requests
// used to wait for as long as the route was used): a directory swapped in
// by rename is then seen by a warm cell's request and a resident init's.
func TestConfineViewAge(t *testing.T) {
	w := workerBinary(t)
	data := filepath.Join(t.TempDir(), "data")
	dataDir(t, data, "one")
	route := `tenant: a, program: ` + strconv.Quote(w) + `, env: {` + cellHelperEnv + `: probe}, mounts: [{source: ` + strconv.Quote(data) + `, target: /srv/data}]`
	g := confineGate(t, `  - {name: datawarm, match: {path: /datawarm}, `+route+`, cells: fresh}
  - {name: datares, match: {path: /datares}, `+route+`}
`)
	cat := func(route string) string {
		return g.probe(t, route, url.Values{"cat": {"/srv/data/f"}}).Cat["/srv/data/f"]
	}
	for _, route := range []string{"datawarm", "datares"} {
		if got := cat(route); got != "one" {
			t.Fatalf("%s reads %q, want \"one\"", route, got)
		}
	}
	time.Sleep(time.Second) // the warm cell and the resident init ready again
	if err := os.Rename(data, data+".old"); err != nil {
		t.Fatal(err)
	}
	dataDir(t, data, "two")
	time.Sleep(21 * time.Second) // sandbox's viewMaxAge, 20 s, and a margin
	for _, route := range []string{"datawarm", "datares"} {
		if got := cat(route); got != "two" {
			t.Errorf("%s, 21 s after its directory was replaced: a cell reads %q, want the new directory's \"two\"", route, got)
		}
	}
}

// TestConfineMountTemplate: the cells of a route copy its view from one
// mount template (the same tmpfs root; counted as hits), which serve makes
// again while the route is used, so a path of the view that comes to name
// another directory is seen by new cells; what cells share of it cannot
// be written, even by root; and --mount-templates=false has none.
func TestConfineMountTemplate(t *testing.T) {
	w := workerBinary(t)
	data := filepath.Join(t.TempDir(), "data")
	dataDir(t, data, "one")
	extra := fmt.Sprintf(`  - {name: data, match: {path: /data}, tenant: a, program: %[1]q, env: {%[2]s: probe}, mounts: [{source: %[3]q, target: /srv/data}]}
  - {name: proberoot, match: {path: /proberoot}, tenant: a, program: %[1]q, env: {%[2]s: probe}, user: root, allow_root: true}
`, w, cellHelperEnv, data)
	// roots returns the root devices of two successive cells of the
	// route once they are one (the route's template made, which the
	// first request asks for), or the last two after a minute.
	roots := func(g *gate, route string) (uint64, uint64) {
		g.probe(t, route, url.Values{"rootdev": {""}})
		for end := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
			a, b := g.probe(t, route, url.Values{"rootdev": {""}}).RootDev, g.probe(t, route, url.Values{"rootdev": {""}}).RootDev
			if a == b && a != 0 || time.Now().After(end) {
				return a, b
			}
		}
	}

	hits := func(g *gate) string {
		m := regexp.MustCompile(`(?m)^cellgate_mount_templates_total\{result="hit"\} (\S+)$`).FindStringSubmatch(g.metrics())
		if m == nil {
			return "absent"
		}
		return m[1]
	}
	g := confineGate(t, extra, "--warm-cells", "0", "--resident-cells", "0")
	first, second := roots(g, "data")
	if first != second || first == 0 {
		t.Errorf("a minute on, two cells of a route have roots on devices %d and %d; want one template's", first, second)
	}
	if h := hits(g); h == "0" || h == "absent" {
		t.Errorf("cellgate_mount_templates_total{result=\"hit\"} = %s after cells from a template", h)
	}
	if a, b := roots(g, "proberoot"); a != b || a == 0 || a == first {
		t.Errorf("a minute on, two cells of the root route have roots on devices %d and %d (the data route's on %d); want a template of its own", a, b, first)
	}
	r := g.probe(t, "proberoot", url.Values{"fill": {"/dev/x:1", "/x:1"}, "rootdev": {""}})
	if r.RootDev == 0 || r.RootDev == first {
		t.Errorf("the root route's cell has its root on device %d (the data route's on %d); want a template of its own", r.RootDev, first)
	}
	for _, p := range []string{"/dev/x", "/x"} {
		if r.UID != 0 || r.Fill[p] != "EROFS" {
			t.Errorf("root (uid %d) writing %s shared by the route's cells: %s, want EROFS", r.UID, p, r.Fill[p])
		}
	}
	// The data directory is replaced: new cells see the new one once the
	// template is made again (within 10 s of a request).
	if err := os.Rename(data, data+".old"); err != nil {
		t.Fatal(err)
	}
	dataDir(t, data, "two")
	var got string
	for end := time.Now().Add(45 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		if got = g.probe(t, "data", url.Values{"cat": {"/srv/data/f"}}).Cat["/srv/data/f"]; got == "two" {
			break
		}
	}
	if got != "two" {
		t.Errorf("45 s after its directory was replaced, a cell reads %q from /srv/data/f; want the new directory's \"two\"", got)
	}
	// With no request, the templates are let go once too old to serve
	// (10 s after their making): none holds the routes' mounts (a volume
	// the operator unmounts on the host would stay busy).
	held := func() []string { return nsFDs(t, g.cmd.Process.Pid, "mnt:") }
	for end := time.Now().Add(time.Minute); len(held()) > 0 && time.Now().Before(end); time.Sleep(time.Second) {
	}
	if h := held(); len(h) > 0 {
		t.Errorf("a minute after the last request serve still holds mount namespaces %v", h)
	}
	g.stop()

	g = confineGate(t, extra, "--warm-cells", "0", "--resident-cells", "0", "--mount-templates=false")
	for range 3 {
		g.probe(t, "data", url.Values{"rootdev": {""}})
	}
	if h := hits(g); h != "0" {
		t.Errorf("with --mount-templates=false, cellgate_mount_templates_total{result=\"hit\"} = %s, want 0", h)
	}
}

// nsFDs lists the fds of process pid that name a namespace of the kind
// (its link's prefix, "mnt:" or "net:").
func nsFDs(t *testing.T, pid int, kind string) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(l, kind) {
			out = append(out, e.Name()+" -> "+l)
		}
	}
	return out
}

// defaultPlan is the default confinement of a route running program.
func defaultPlan(t testing.TB, program string) *confine.Prepared {
	t.Helper()
	plan, err := confine.Build(confine.Options{Programs: filepath.Dir(program)}, confine.OSFS{})
	if err != nil {
		t.Fatal(err)
	}
	prep, err := confine.Prepare(plan)
	if err != nil {
		t.Fatal(err)
	}
	return prep
}

// TestConfineInitSpawner: with the init spawner (Config.InitSpawner,
// serve's default) confined cells' inits are cloned by one long-lived
// cellgate-init, the daemon's child, and are the daemon's children
// (CLONE_PARENT), reaped by it: no zombie is left. A spawner killed
// between requests is replaced, and every request is served meanwhile.
func TestConfineInitSpawner(t *testing.T) {
	cellgateBin(t)
	r := newConfinedEnv(t, sandbox.Config{InitSpawner: true, NetNamespaces: 2, MountTemplates: true})
	w := workerBinary(t)
	prep := defaultPlan(t, w)
	host, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	run := func(what string) { t.Helper(); runNetns(t, r, prep, w, host, what) }
	run("the first cell")
	// The cell's PID 1 is a clone of the spawner: its argv is the
	// spawner's, "spawner" blanked; an init the daemon executed has its
	// own ("cellgate-init" and its mode).
	fromSpawner := strconv.Quote("cellgate-init" + strings.Repeat("\x00", 9))
	if got := pid1(t, r, prep, w); got != fromSpawner {
		t.Errorf("the cell's /proc/1/cmdline is %s, want %s (an init cloned by the spawner)", got, fromSpawner)
	}
	first := spawners(t)
	if len(first) != 1 {
		t.Fatalf("%d spawners are this process's children after a confined cell, want 1", len(first))
	}
	for i := 0; i < 5; i++ {
		run(fmt.Sprintf("cell %d", i))
	}
	if now := spawners(t); len(now) != 1 || now[0] != first[0] {
		t.Errorf("spawners %v after 5 more cells, want the first, %d, alone", now, first[0])
	}
	if hits, _ := r.NetnsStats(); hits == 0 {
		t.Error("no cell took a network namespace made ahead: the spawner was not handed one")
	}
	// (The worker lives under /tmp, a private tmpfs of the cell, so this
	// plan has no template; TestConfineMountTemplate, through serve,
	// where the spawner is on by default, has the spawner hand one over.)
	if err := syscall.Kill(first[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		run(fmt.Sprintf("cell %d after the spawner was killed", i))
	}
	if now := spawners(t); len(now) != 1 || now[0] == first[0] {
		t.Errorf("spawners %v after the first, %d, was killed; want one new one", now, first[0])
	}
	for end := time.Now().Add(time.Minute); r.TeardownsPending() > 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if z := zombieChildren(t); len(z) > 0 {
		t.Errorf("zombie children left: %v", z)
	}
	if n := initsRunning(); n != 1 {
		t.Errorf("%d cellgate-init processes once every cell ended, want the spawner alone", n)
	}

	// An init without the spawner mode (the Go init) never says hello:
	// cells start their inits from the daemon, and no spawner is left.
	l, err := confine.OpenLauncher(cellgateBin(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	goInit := newConfinedEnv(t, sandbox.Config{Launcher: l, InitSpawner: true})
	for i := 0; i < 3; i++ {
		runNetns(t, goInit, prep, w, host, fmt.Sprintf("cell %d with the Go init", i))
	}
	if got := pid1(t, goInit, prep, w); got == fromSpawner {
		t.Errorf("with the Go init the cell's /proc/1/cmdline is %s, a spawner's", got)
	}
	if now := spawners(t); len(now) != 1 || now[0] == first[0] {
		t.Errorf("spawners %v with a Go init asked for one too; want the other runner's alone", now)
	}
}

// pid1 runs the worker w's pid1 helper in a confined cell of r and
// returns what it printed: the cell's /proc/1/cmdline, quoted.
func pid1(t *testing.T, r *sandbox.Runner, prep *confine.Prepared, w string) string {
	t.Helper()
	return runHelperCell(t, r, prep, w, "pid1", "pid1")
}

// runHelperCell runs the worker w's helper mode in a confined cell of r,
// requires it to end well, and returns what it printed, trimmed.
func runHelperCell(t *testing.T, r *sandbox.Runner, prep *confine.Prepared, w, mode, what string) string {
	t.Helper()
	var out bytes.Buffer
	spec := sandbox.Spec{Path: w, Args: []string{w}, Env: []string{cellHelperEnv + "=" + mode}, Confine: prep, Stdout: &out}
	if res, err := r.Run(context.Background(), spec); err != nil || res.Cause != sandbox.CauseOK {
		t.Fatalf("%s: %v, cause %s, output %q", what, err, res.Cause, out.String())
	}
	return strings.TrimSpace(out.String())
}

// runNetns runs the worker w's netns helper in a confined cell of r and
// checks that it has a network namespace of its own with loopback up.
func runNetns(t *testing.T, r *sandbox.Runner, prep *confine.Prepared, w, host, what string) {
	t.Helper()
	ns, lo, _ := strings.Cut(runHelperCell(t, r, prep, w, "netns", what), " ")
	if ns == host {
		t.Errorf("%s: the cell is in the daemon's network namespace %s", what, ns)
	}
	if lo != "up" {
		t.Errorf("%s: listen on 127.0.0.1 in the cell: %s", what, lo)
	}
}

// spawners are the pids of this process's children that are init
// spawners (cellgate-init spawner).
func spawners(t *testing.T) []int {
	var out []int
	for _, pid := range childrenOf(t) {
		if isSpawner(strconv.Itoa(pid)) {
			out = append(out, pid)
		}
	}
	return out
}

// isSpawner reports whether process pid is an init spawner, by its
// argv: cellgate-init spawner.
func isSpawner(pid string) bool {
	b, err := os.ReadFile("/proc/" + pid + "/cmdline")
	return err == nil && string(b) == "cellgate-init\x00spawner\x00"
}

// onlyCellgate reports whether procs, a cgroup.procs, lists cellgate's
// pid and nothing else but, once a confined cell ran, its init spawner
// (its child, in its group): nothing of a cell.
func onlyCellgate(procs, pid string) bool {
	found := false
	for _, f := range strings.Fields(procs) {
		if f == pid {
			found = true
			continue
		}
		ppid := ""
		if st, err := os.ReadFile("/proc/" + f + "/status"); err == nil {
			ppid, _ = statusField(string(st), "PPid")
		}
		if !isSpawner(f) || ppid != pid {
			return false
		}
	}
	return found
}

// zombieChildren are the pids of this process's children that exited
// and were not reaped.
func zombieChildren(t *testing.T) []int {
	var out []int
	for _, pid := range childrenOf(t) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if st, _ := statusField(string(b), "State"); err == nil && strings.HasPrefix(st, "Z") {
			out = append(out, pid)
		}
	}
	return out
}

// childrenOf lists the children of every thread of this process.
func childrenOf(t *testing.T) []int {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, task := range tasks {
		b, _ := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}

// residentRunner is a Runner keeping one resident cell of a fully
// confined plan (as serve runs them: mount templates, the init spawner),
// ready, and the plan.
func residentRunner(t *testing.T) (*sandbox.Runner, *confine.Prepared) {
	t.Helper()
	return residentRunnerOf(t, filepath.Dir(noopBinary(t)))
}

// residentRunnerOf is residentRunner with the route's programs in dir.
func residentRunnerOf(t *testing.T, dir string) (*sandbox.Runner, *confine.Prepared) {
	t.Helper()
	r, prep := residentWarming(t, dir)
	for end := time.Now().Add(30 * time.Second); r.WarmReady() < 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("no resident cell ready within 30s")
		}
	}
	return r, prep
}

// residentWarming is residentRunnerOf returning as soon as the route's
// resident cell is being set up.
func residentWarming(t *testing.T, dir string) (*sandbox.Runner, *confine.Prepared) {
	t.Helper()
	cellgateBin(t) // the init is beside it
	r := newConfinedEnv(t, sandbox.Config{ResidentCells: 1, MountTemplates: true, InitSpawner: true})
	plan, err := confine.Build(confine.Options{Programs: dir}, confine.OSFS{})
	if err != nil {
		t.Fatal(err)
	}
	prep, err := confine.Prepare(plan)
	if err != nil {
		t.Fatal(err)
	}
	r.Warm(nil, prep)
	return r, prep
}

// runAll runs spec on r n times, one after the other, each to succeed.
func runAll(t *testing.T, r *sandbox.Runner, spec sandbox.Spec, n int) {
	t.Helper()
	for i := range n {
		res, err := r.Run(context.Background(), spec)
		if err != nil || res.Cause != sandbox.CauseOK {
			t.Fatalf("request %d: %v, cause %s", i, err, res.Cause)
		}
	}
}

// TestResidentWaitsForSetup: a request that comes while its route's
// resident cell is being set up (warmed as serve starts) waits for it
// rather than start an init of its own, which would end as surplus once
// the one set up is ready. (A request that comes before the refill has
// begun the setup starts the init itself, and the refill then sets up
// none: no surplus either way.)
func TestResidentWaitsForSetup(t *testing.T) {
	r, prep := residentWarming(t, filepath.Dir(noopBinary(t)))
	const n = 5
	runAll(t, r, sandbox.Spec{Path: noopBinary(t), Confine: prep}, n)
	if hits, misses := r.WarmStats(); hits < n-1 {
		t.Errorf("%d of %d requests found the resident cell, %d started one; want all but at most the first", hits, n, misses)
	}
	if surplus := r.ResidentEnded(sandbox.EndSurplus); surplus != 0 {
		t.Errorf("%d resident cells ended as surplus, want 0", surplus)
	}
}

// TestResidentBackToBack: a request that comes as soon as the one before
// it has its Result finds the resident cell that served that one, on its
// way back to its set (putBackLater): requests back to back are served by
// the route's one resident init, not each by an init of its own started
// because the last one's was not back yet.
//
// Under load too (the daemon's threads busy: goroutines spinning beside
// the requests, processes spinning on every CPU), when a put back takes
// the scheduler's time slices to end: the request waits for it rather
// than start an init, however long it takes.
func TestResidentBackToBack(t *testing.T) {
	for _, loaded := range []bool{false, true} {
		t.Run(map[bool]string{false: "idle", true: "loaded"}[loaded], func(t *testing.T) {
			r, prep := residentRunner(t)
			if loaded {
				spin(t)
			}
			const n = 20
			runAll(t, r, sandbox.Spec{Path: noopBinary(t), Confine: prep}, n)
			if hits, misses := r.WarmStats(); hits < n-1 {
				t.Errorf("%d of %d requests back to back found the resident cell (%d started one), want all but at most one", hits, n, misses)
			}
		})
	}
}

// spin keeps the machine's CPUs and this process's threads busy until
// the test ends: a goroutine spinning for each of the process's Ps and
// two processes spinning for each CPU.
func spin(t *testing.T) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	var spinners []*exec.Cmd
	for range 2 * runtime.NumCPU() {
		c := exec.Command("/bin/sh", "-c", "while :; do :; done")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		spinners = append(spinners, c)
	}
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
		for _, c := range spinners {
			c.Process.Kill()
			c.Wait()
		}
	})
}

// TestResidentProgramUnderTmp: a route whose program lies below a
// directory that is a private tmpfs in the cell (/tmp) has the
// directories leading to it in that tmpfs, the view's own, not a
// request's leftovers: its resident cell serves request after request
// (it was ended after each as unclean), and what a request leaves beside
// them is still gone for the next.
func TestResidentProgramUnderTmp(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "cellgate-programs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	// Below a directory of its own: /tmp's entry is then a directory
	// the init made in the cell's tmpfs, not the bind's mount point.
	dir = filepath.Join(dir, "bin")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	noop := filepath.Join(dir, "noop")
	if err := os.WriteFile(noop, noopELF(), 0o755); err != nil {
		t.Fatal(err)
	}
	r, prep := residentRunnerOf(t, dir)
	const n = 10
	runAll(t, r, sandbox.Spec{Path: noop, Confine: prep}, n)
	if hits, misses := r.WarmStats(); hits < n-1 {
		t.Errorf("%d of %d requests found the resident cell (%d started one), want all but at most one", hits, n, misses)
	}
	// A file left in /tmp beside the program's directories is the
	// request's: gone for the next one.
	sh := sandbox.Spec{Path: "/bin/sh", Args: []string{"sh", "-c", "test ! -e /tmp/left && echo x > /tmp/left && echo ok"}, Env: []string{"PATH=/usr/bin:/bin"}, Confine: prep}
	for i := range 2 {
		var out bytes.Buffer
		sh.Stdout = &out
		res, err := r.Run(context.Background(), sh)
		if err != nil || res.Cause != sandbox.CauseOK || out.String() != "ok\n" {
			t.Errorf("request %d leaving /tmp/left: %v, cause %s, output %q (the last request's file left?)", i, err, res.Cause, out.String())
		}
	}
}

// stubOf returns the pid of the one process a resident init started
// ahead for its next request (a child of the init of a PID namespace, in
// that namespace, while no request runs), waiting for it up to 10 s.
func stubOf(t *testing.T) int {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if stubs := stubsBelow(""); len(stubs) == 1 {
			return stubs[0]
		}
	}
	t.Fatal("no single process started ahead by a resident init within 10 s")
	return 0
}

// stubsBelow returns the host pids of the processes resident inits
// started ahead for their next request (children of the init of a PID
// namespace, in that namespace), those in a group below the cgroupfs
// directory dir alone unless dir is "".
func stubsBelow(dir string) []int {
	// status returns pid's parent and its pid in its own PID namespace.
	status := func(pid string) (ppid, nspid string) {
		b, _ := os.ReadFile("/proc/" + pid + "/status")
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PPid:"); ok {
				ppid = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(l, "NSpid:"); ok && len(strings.Fields(v)) > 1 {
				f := strings.Fields(v)
				nspid = f[len(f)-1]
			}
		}
		return ppid, nspid
	}
	var in map[string]bool
	if dir != "" {
		in = map[string]bool{}
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
				for _, pid := range strings.Fields(string(b)) {
					in[pid] = true
				}
			}
			return nil
		})
	}
	var stubs []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || in != nil && !in[d.Name()] {
			continue
		}
		ppid, nspid := status(d.Name())
		if _, parent := status(ppid); nspid != "" && nspid != "1" && parent == "1" {
			stubs = append(stubs, pid)
		}
	}
	return stubs
}

// residentStub waits up to a minute for the one process a resident init
// of a cell below dir started ahead for its next request (stubsBelow)
// and returns its host pid.
func residentStub(t *testing.T, dir string) int {
	t.Helper()
	var stubs []int
	for end := time.Now().Add(time.Minute); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if stubs = stubsBelow(dir); len(stubs) == 1 {
			return stubs[0]
		}
	}
	t.Fatalf("no single process started ahead by a resident init below %s within a minute (%v)", dir, stubs)
	return 0
}

// TestResidentStubGone: the process a resident cell started ahead for the
// next request dies (its group's OOM kill, here a SIGKILL): while it
// waits, once its init has reported its end, the request passes over the
// cell; after its exec frame was sent and before it took it, nothing
// ran, and the request runs once more on another cell. Either way the
// request is served, once.
func TestResidentStubGone(t *testing.T) {
	// gone kills pid and waits until its init has reaped it and reported
	// its end: the init then waits for its next frame (recvmsg).
	gone := func(pid int) {
		initPid := parentOf(pid)
		if initPid == "" {
			t.Fatalf("no parent of %d", pid)
		}
		unix.Kill(pid, unix.SIGKILL)
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
				sc, _ := os.ReadFile("/proc/" + initPid + "/syscall")
				if strings.HasPrefix(string(sc), fmt.Sprintf("%d ", unix.SYS_RECVMSG)) {
					return
				}
			}
		}
		t.Fatalf("the killed process %d was not reaped and reported by its init %s within 10 s", pid, initPid)
	}
	for _, tc := range []struct {
		name      string
		inHandOff bool
		env       []string
	}{
		{"killed while waiting", false, nil},
		{"killed after the hand-off", true, nil},
		// An exec frame over the stub socket's room: the send waits
		// for room until the init reports the stub's end (the daemon
		// holds both ends of the pair, so no hang-up ends it).
		{"killed in the hand-off of a frame over the socket's room", true, bigEnv(4, 100<<10)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, prep := residentRunner(t)
			stub := stubOf(t)
			if !tc.inHandOff {
				gone(stub)
			}
			var out bytes.Buffer
			starts := 0
			res, err := r.Run(context.Background(), sandbox.Spec{
				Path: "/bin/cat", Env: tc.env, Confine: prep, Stdin: strings.NewReader("abcde"), Stdout: &out,
				Started: func(string, uint64) {
					if starts++; starts == 1 && tc.inHandOff {
						// Stopped, it cannot take the frame, which the
						// kernel holds for it; killed once the frame is
						// sent.
						unix.Kill(stub, unix.SIGSTOP)
						go func() {
							time.Sleep(300 * time.Millisecond)
							unix.Kill(stub, unix.SIGKILL)
						}()
					}
				},
			})
			if err != nil || res.Cause != sandbox.CauseOK || out.String() != "abcde" {
				t.Fatalf("Run: %v, cause %s, output %q; want the request served with its body", err, res.Cause, out.String())
			}
			wantStarts := 1
			if tc.inHandOff {
				wantStarts = 2
			}
			if starts != wantStarts {
				t.Errorf("%d starts, want %d", starts, wantStarts)
			}
		})
	}
}

// bigEnv returns n environment variables of size bytes each.
func bigEnv(n, size int) []string {
	env := make([]string, n)
	for i := range env {
		env[i] = fmt.Sprintf("BIG%d=%s", i, strings.Repeat("x", size))
	}
	return env
}

// parentOf returns the host pid of pid's parent ("" if pid is gone).
func parentOf(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "PPid:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// stubUnder waits (up to 10 s) for a stub of the resident init whose
// host pid is initPid, other than not, and returns it.
func stubUnder(t *testing.T, initPid string, not int) int {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		dirs, _ := os.ReadDir("/proc")
		for _, d := range dirs {
			if pid, err := strconv.Atoi(d.Name()); err == nil && pid != not && parentOf(pid) == initPid {
				return pid
			}
		}
	}
	t.Fatalf("the resident init %s started no next stub within 10 s (ended?)", initPid)
	return 0
}

// TestResidentStubSocket: a resident init's stubs wait on one socket
// pair, which the daemon makes once and keeps (its making and freeing
// per request were a tenth of the daemon's CPU in the microVM): the
// next request's stub holds the same socket as the last one's. A stub
// killed after its exec frame was sent, before it took it, leaves the
// frame (and the request's streams sent with it) in that socket: the
// pair is dropped, the init's next stub gets a new one, and the
// requests it serves then get their own frames.
func TestResidentStubSocket(t *testing.T) {
	r, prep := residentRunner(t)
	socketOf := func(pid int) string {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", pid))
		if err != nil || !strings.HasPrefix(link, "socket:") {
			t.Fatalf("the stub %d's fd 3: %q, %v; want its socket", pid, link, err)
		}
		return link
	}
	stubUnder := func(initPid string, not int) int { return stubUnder(t, initPid, not) }
	cat := func(in string) (sandbox.Result, string, error) {
		var out bytes.Buffer
		res, err := r.Run(context.Background(), sandbox.Spec{Path: "/bin/cat", Confine: prep, Stdin: strings.NewReader(in), Stdout: &out})
		return res, out.String(), err
	}
	first := stubOf(t)
	initPid, pair := parentOf(first), socketOf(first)
	if res, out, err := cat("one"); err != nil || res.Cause != sandbox.CauseOK || out != "one" {
		t.Fatalf("Run: %v, cause %s, output %q; want %q", err, res.Cause, out, "one")
	}
	second := stubUnder(initPid, first)
	if got := socketOf(second); got != pair {
		t.Errorf("the next stub waits on %s, the last one on %s: want the same socket", got, pair)
	}

	// Stopped, the stub cannot take the frame, which the kernel holds
	// for it; killed once the frame is sent. The request runs once more
	// elsewhere (TestResidentStubGone).
	starts := 0
	var out bytes.Buffer
	res, err := r.Run(context.Background(), sandbox.Spec{
		Path: "/bin/cat", Confine: prep, Stdin: strings.NewReader("two"), Stdout: &out,
		Started: func(string, uint64) {
			if starts++; starts == 1 {
				unix.Kill(second, unix.SIGSTOP)
				go func() {
					time.Sleep(300 * time.Millisecond)
					unix.Kill(second, unix.SIGKILL)
				}()
			}
		},
	})
	if err != nil || res.Cause != sandbox.CauseOK || out.String() != "two" || starts != 2 {
		t.Fatalf("Run: %v, cause %s, output %q, %d starts; want %q served on its second start", err, res.Cause, out.String(), starts, "two")
	}
	third := stubUnder(initPid, second)
	if got := socketOf(third); got == pair {
		t.Errorf("the stub after one killed before it took its frame waits on the same socket %s: want a new pair", got)
	}
	// Requests until one is served by that init (its stub changes), each
	// with its own input and output.
	for i := 0; ; i++ {
		in := fmt.Sprintf("request %d", i)
		if res, out, err := cat(in); err != nil || res.Cause != sandbox.CauseOK || out != in {
			t.Fatalf("Run: %v, cause %s, output %q; want %q", err, res.Cause, out, in)
		}
		if next := stubUnder(initPid, -1); next != third {
			break
		}
		if i == 10 {
			t.Fatalf("the resident init %s served none of %d requests", initPid, i+1)
		}
	}
}

// TestResidentStubSharesInit: on amd64 a resident init's stub runs in
// the init's own memory (clone3 CLONE_VM | CLONE_VFORK on a stack of its
// own), so that no copy of the init is made, faulted in and torn down per
// request; elsewhere it is a copy. What a stub allocates (its frame, in
// a mapping of its own) goes when it is done: requests with an
// environment of 400 KB leave the init's address space no larger than
// one small request did, and each gets its own environment.
func TestResidentStubSharesInit(t *testing.T) {
	r, prep := residentRunner(t)
	stub := stubOf(t)
	initPid, err := strconv.Atoi(parentOf(stub))
	if err != nil {
		t.Fatalf("the stub %d's parent: %v", stub, err)
	}
	initID := strconv.Itoa(initPid)
	const kcmpVM = 1 // KCMP_VM
	same, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(initPid), uintptr(stub), kcmpVM, 0, 0, 0)
	if errno != 0 {
		t.Fatalf("kcmp(%d, %d, KCMP_VM): %v", initPid, stub, errno)
	}
	if shares := same == 0; shares != (runtime.GOARCH == "amd64") {
		t.Errorf("the stub shares its init's memory: %v on %s, want %v", shares, runtime.GOARCH, runtime.GOARCH == "amd64")
	}

	// vmSize is the init's address space, in KiB: a stub's frame left
	// mapped (2.4 MiB for each request below) adds to it.
	vmSize := func() int {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", initPid))
		if err != nil {
			t.Fatalf("the init %d's status: %v", initPid, err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmSize:"); ok {
				n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
				if err != nil {
					t.Fatalf("the init's VmSize %q: %v", v, err)
				}
				return n
			}
		}
		t.Fatalf("no VmSize in the init's status %q", b)
		return 0
	}
	env := func(i int) []string {
		return append(bigEnv(4, 100<<10), fmt.Sprintf("REQUEST=%d", i))
	}
	run := func(i int, env []string) {
		t.Helper()
		var out bytes.Buffer
		res, err := r.Run(context.Background(), sandbox.Spec{Path: "/bin/sh", Args: []string{"sh", "-c", `echo "$REQUEST ${#BIG3}"`}, Env: env, Confine: prep, Stdout: &out})
		want := fmt.Sprintf("%d %d\n", i, 100<<10)
		if len(env) < 2 {
			want = fmt.Sprintf("%d 0\n", i)
		}
		if err != nil || res.Cause != sandbox.CauseOK || out.String() != want {
			t.Fatalf("request %d: %v, cause %s, output %q; want %q", i, err, res.Cause, out.String(), want)
		}
	}
	// Each request is sent once the init's next stub waits (the init
	// back in its set), and is served by it (its stub changes).
	run(0, []string{"REQUEST=0"})
	stub = stubUnder(t, initID, stub)
	before := vmSize()
	for i := 1; i <= 5; i++ {
		run(i, env(i))
		stub = stubUnder(t, initID, stub)
	}
	// A MiB of slack for the init's own heap.
	if after := vmSize(); after > before+1024 {
		t.Errorf("the init's address space is %d KiB after 5 requests of 400 KB, %d KiB after one small one: a stub's frame outlived it", after, before)
	}
}

// TestResidentExecFails: a program the process started ahead cannot
// execute fails its request with the errno (nothing ran), and the
// resident cell serves the next request.
func TestResidentExecFails(t *testing.T) {
	r, prep := residentRunner(t)
	notExec := filepath.Join(filepath.Dir(noopBinary(t)), "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := r.Run(context.Background(), sandbox.Spec{Path: notExec, Confine: prep})
	if !errors.Is(err, sandbox.ErrSpawn) || !errors.Is(err, unix.EACCES) {
		t.Fatalf("Run of a file without x: %v, want ErrSpawn and EACCES", err)
	}
	hits, _ := r.WarmStats()
	res, err := r.Run(context.Background(), sandbox.Spec{Path: noopBinary(t), Confine: prep})
	if err != nil || res.Cause != sandbox.CauseOK {
		t.Fatalf("the next request: %v, cause %s", err, res.Cause)
	}
	if after, _ := r.WarmStats(); after != hits+1 {
		t.Errorf("the next request did not find the resident cell (%d hits before, %d after)", hits, after)
	}
}

// TestConfineResident: successive requests of a route are served by one
// resident cell (the same PID namespace: the same init), each program in
// a group of its own, and none finds anything of the request before it:
// not a process it left running, not a file of the private tmpfs, not a
// SysV object or a POSIX message queue (in the cell's IPC namespace,
// which its init empties between them). A route with cells: fresh gets a
// cell per request. A
// cell not kept is counted by why (cellgate_resident_ended_total).
//
// One resident cell per route: with more, a miss (a request that came
// before the route's cell was set up and waited for it in vain) doubles
// the set's target, and a second init set up by the refill serves the
// requests after it is ready (the last one ready is taken).
func TestConfineResident(t *testing.T) {
	g := confineGate(t, `  - {name: fresh, match: {path: /fresh}, tenant: a, program: "`+workerBinary(t)+`", env: {`+cellHelperEnv+`: probe}, cells: fresh}
`, "--resident-cells", "1")
	ended := func(reason string) int {
		return int(metric(g.metrics(), "cellgate_resident_ended_total", map[string]string{"reason": reason}))
	}
	first := g.probe(t, "probe", url.Values{"pidns": {"1"}, "leave": {"1"}, "shmget": {"1"}, "sysvshm": {"1"},
		"ipcleave": {"1"}, "ipcsee": {"1"}, "fill": {"/tmp/left:1", "/dev/shm/left:1"}, "cat": {"/proc/self/cgroup"}})
	if first.Left != "ok" || first.ShmID < 0 || first.Fill["/tmp/left"] != "ok" || first.Fill["/dev/shm/left"] != "ok" ||
		first.IPC["sem"] != "ok" || first.IPC["msg"] != "ok" || first.IPC["mqueue"] != "ok" {
		t.Fatalf("control: the first request could not leave its traces: %+v", first)
	}
	if !strings.Contains(first.SysVShm, " "+strconv.Itoa(first.ShmID)+" ") {
		t.Fatalf("control: the first request does not see its own SysV segment %d:\n%s", first.ShmID, first.SysVShm)
	}
	if first.IPC["sems"] != "1" || first.IPC["msgs"] != "1" || first.IPC["mqueue-open"] != "ok" {
		t.Fatalf("control: the first request does not see the IPC objects it made: %v", first.IPC)
	}
	for i := range 3 {
		r := g.probe(t, "probe", url.Values{"pidns": {"1"}, "procs": {"1"}, "sysvshm": {"1"}, "ipcsee": {"1"},
			"read": {"/tmp/left", "/dev/shm/left"}, "cat": {"/proc/self/cgroup"}})
		if r.IPC["sems"] != "0" || r.IPC["msgs"] != "0" || r.IPC["mqueue-open"] != "ENOENT" {
			t.Errorf("request %d sees IPC objects the first left (semaphore sets, message queues, its POSIX queue): %v", i+2, r.IPC)
		}
		// The cell's IPC namespace, emptied by the init after each
		// request, not one made for each program.
		if r.IPC["ns"] != first.IPC["ns"] {
			t.Errorf("request %d runs in IPC namespace %s, the first in %s: want the resident cell's, emptied between them", i+2, r.IPC["ns"], first.IPC["ns"])
		}
		if r.Pidns != first.Pidns {
			t.Errorf("request %d: PID namespace %s, the first's %s: not served by the resident cell; resident cells ended:\n%s",
				i+2, r.Pidns, first.Pidns, regexp.MustCompile(`(?m)^cellgate_resident_ended_total.*$`).FindAllString(g.metrics(), -1))
		}
		if r.Cat["/proc/self/cgroup"] == first.Cat["/proc/self/cgroup"] {
			t.Errorf("request %d runs in the first request's group %q", i+2, first.Cat["/proc/self/cgroup"])
		}
		if len(r.Procs) != 2 || !strings.HasPrefix(r.Procs[0], "1 cellgate-init") {
			t.Errorf("request %d: the cell's /proc lists %q, want its init as 1 and the probe (the first request's sleep ended)", i+2, r.Procs)
		}
		for _, p := range []string{"/tmp/left", "/dev/shm/left"} {
			if res, tried := r.Read[p]; !tried || res == "ok" {
				t.Errorf("request %d reading %s, the first request's file: %q (tried: %v), want it refused", i+2, p, res, tried)
			}
		}
		if strings.Contains(r.SysVShm, " "+strconv.Itoa(first.ShmID)+" ") || strings.Count(strings.TrimSpace(r.SysVShm), "\n") != 0 {
			t.Errorf("request %d sees SysV segments (the first left %d):\n%s", i+2, first.ShmID, r.SysVShm)
		}
	}
	// A POSIX message queue left alone (the init finds it by the size of
	// the queues' directory, not by the SysV counts).
	mq := g.probe(t, "probe", url.Values{"ipcleave": {"mqueue"}, "ipcsee": {"1"}})
	if mq.IPC["mqueue"] != "ok" || mq.IPC["mqueue-open"] != "ok" {
		t.Fatalf("control: leave a POSIX message queue: %v", mq.IPC)
	}
	if r := g.probe(t, "probe", url.Values{"ipcsee": {"1"}}); r.IPC["mqueue-open"] != "ENOENT" || r.IPC["ns"] != mq.IPC["ns"] {
		t.Errorf("after a request left a POSIX message queue alone, the next opens it: %s, want ENOENT in the same IPC namespace (%s, the first's %s)",
			r.IPC["mqueue-open"], r.IPC["ns"], mq.IPC["ns"])
	}
	// A request that leaves a tree deeper than the init's wipe goes: the
	// init ends rather than serve another request with it.
	deep := g.probe(t, "probe", url.Values{"pidns": {"1"}, "deep": {"/tmp/deep"}})
	if deep.Fill["deep"] != "ok" {
		t.Fatalf("control: leave a deep tree: %s", deep.Fill["deep"])
	}
	deepFile := "/tmp/deep" + strings.Repeat("/d", 40) + "/file"
	afterDeep := g.probe(t, "probe", url.Values{"pidns": {"1"}, "read": {deepFile}})
	if afterDeep.Pidns == deep.Pidns {
		t.Errorf("the cell that held a tree deeper than the wipe served the next request")
	}
	if n := ended("unclean"); n != 1 {
		t.Errorf("cellgate_resident_ended_total{reason=\"unclean\"} %d after one request left a deep tree, want 1", n)
	}
	if res, tried := afterDeep.Read[deepFile]; !tried || res == "ok" {
		t.Errorf("the next request reading the deep tree's file: %q (tried: %v), want it refused", res, tried)
	}
	// A request that leaves a loopback connection in TIME_WAIT: its
	// cell's network namespace is not empty, so the cell is not kept, and
	// the next request finds no socket.
	tw := g.probe(t, "probe", url.Values{"pidns": {"1"}, "timewait": {"1"}})
	if tw.TimeWait != "ok" {
		t.Fatalf("control: leave a connection in TIME_WAIT: %s", tw.TimeWait)
	}
	next := g.probe(t, "probe", url.Values{"pidns": {"1"}, "sockets": {"1"}})
	if next.Pidns == tw.Pidns || next.Sockets != 0 {
		t.Errorf("after a request left a connection in TIME_WAIT: the next runs in its cell (%v) and sees %d sockets", next.Pidns == tw.Pidns, next.Sockets)
	}
	if n := ended("sockets"); n != 1 {
		t.Errorf("cellgate_resident_ended_total{reason=\"sockets\"} %d after one request left a connection in TIME_WAIT, want 1", n)
	}
	// A cell ended at its put back is replaced off the request's path:
	// once the replacement's init has started the next request's process
	// (the only cell of the route holding one), the next request finds it
	// set up.
	if tw := g.probe(t, "probe", url.Values{"timewait": {"1"}}); tw.TimeWait != "ok" {
		t.Fatalf("control: leave a connection in TIME_WAIT: %s", tw.TimeWait)
	}
	residentStub(t, g.tenantDir("a"))
	warm := func(result string) float64 {
		return metric(g.metrics(), "cellgate_warm_cells_total", map[string]string{"result": result})
	}
	hits, misses := warm("hit"), warm("miss")
	g.probe(t, "probe", url.Values{})
	if n := ended("sockets"); n != 2 {
		t.Errorf("control: cellgate_resident_ended_total{reason=\"sockets\"} %d after two requests left a connection in TIME_WAIT, want 2", n)
	}
	if warm("hit") != hits+1 || warm("miss") != misses {
		t.Errorf("after a cell ended at its put back was replaced, the next request did not find one set up (hits %v -> %v, misses %v -> %v)",
			hits, warm("hit"), misses, warm("miss"))
	}
	// The next request's process is started ahead (its stub: cloned into
	// its cell, filter loaded) when the cell is put back: the process
	// that answers the next request is the one seen waiting before it was
	// sent (its pid in the cell's PID namespace, its start time).
	g.probe(t, "probe", url.Values{})
	stub := residentStub(t, g.tenantDir("a"))
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", stub))
	nspids := strings.Fields(procStatus(string(status))["NSpid"])
	stubStart, err2 := startTicks(fmt.Sprintf("/proc/%d/stat", stub))
	if err != nil || err2 != nil || len(nspids) < 2 {
		t.Fatalf("the process started ahead, host pid %d: status %v, start %v, NSpid %q", stub, err, err2, nspids)
	}
	stat := g.probe(t, "probe", url.Values{"cat": {"/proc/self/stat"}}).Cat["/proc/self/stat"]
	pid, _, _ := strings.Cut(stat, " ")
	start, err := statStart([]byte(stat))
	if pid != nspids[len(nspids)-1] || err != nil || start != stubStart {
		t.Errorf("the request was answered by pid %s started at %d (%v) in its cell; the process started ahead before it was sent was pid %s started at %d: not prepared ahead",
			pid, start, err, nspids[len(nspids)-1], stubStart)
	}
	a := g.probe(t, "fresh", url.Values{"pidns": {"1"}})
	b := g.probe(t, "fresh", url.Values{"pidns": {"1"}})
	if a.Pidns == b.Pidns {
		t.Errorf("cells: fresh: two requests in one PID namespace %s", a.Pidns)
	}
}

// TestConfineReusedGroups: the requests of a resident route with groups:
// reused run in groups handed on from the requests before them, each
// request's accounting still its own: the OOM kill of one is not the
// next one's, and the peaks the kernel cannot reset are left out
// (pids.peak; memory.peak before 6.12); a request that leaves more than
// an eighth of its memory.max charged (a file in a writable mount) has
// its group removed, not handed on. (That a route of the same tenant
// and limits without the key never gets such a group is the pool's:
// TestPoolRecycleRefused.)
func TestConfineReusedGroups(t *testing.T) {
	data := openTempDir(t, "cellgate-reuse-", 0o777)
	g := confineGate(t, `  - {name: reused, match: {path: /reused}, tenant: a, program: "`+workerBinary(t)+`", env: {`+cellHelperEnv+`: probe}, groups: reused, mounts: [{source: `+data+`, target: /data, writable: true}]}
  - {name: hog, match: {path: /hog}, tenant: a, program: "{{.CGI}}/memhog", memory: 32Mi, groups: reused}
`, "--resident-cells", "1")
	reused := func() float64 {
		return metric(g.metrics(), "cellgate_pool_gets_total", map[string]string{"result": "reused"})
	}
	group := func(q url.Values) string {
		q.Set("cat", "/proc/self/cgroup")
		return strings.TrimSpace(g.probe(t, "reused", q).Cat["/proc/self/cgroup"])
	}
	const n = 8
	groups := map[string]bool{}
	var order []string // each request's group
	for range n {
		order = append(order, group(url.Values{}))
		groups[order[len(order)-1]] = true
	}
	// The next request's group is taken when the cell is put back, beside
	// the removal of the one before: two groups, or three, take turns.
	if len(groups) > n/2 || reused() == 0 {
		t.Errorf("%d requests ran in %d groups (%d handed on): want their groups reused", n, len(groups), int(reused()))
	}
	// A request in a group an earlier one ran in has its pids.peak (the
	// group's, since its making) left out, and said missing.
	again := 0
	for i, r := range g.waitRecords("reused", n, time.Minute)[:n] {
		if !slices.Contains(order[:i], order[i]) {
			continue
		}
		again++
		if r.Cell == nil || r.Cell.PidsPeak != nil || !slices.Contains(r.Cell.Missing, "pids.peak") {
			t.Errorf("request %d, in the group of an earlier one (%s): record %+v, want pids_peak left out and said missing", i+1, order[i], r.Cell)
		}
	}
	if again < n/2 {
		t.Errorf("%d of %d requests ran in a group an earlier one had: want %d or more", again, n, n/2)
	}

	// A request that leaves 16 MiB charged (over 64Mi/8) in a file of
	// its writable mount: its group is not handed on.
	left := group(url.Values{"fill": {"/data/left:16"}})
	t.Cleanup(func() { os.Remove(filepath.Join(data, "left")) })
	for i := range n {
		if got := group(url.Values{}); got == left {
			t.Fatalf("request %d after one left 16 MiB charged runs in its group %s", i+1, left)
		}
	}

	// An OOM kill in a reused group, then requests that fit: none is
	// reported as OOM-killed, and their peaks are their own or left out.
	before := reused()
	if code, _, body := g.get("/hog?mb=48"); code == http.StatusOK {
		t.Fatalf("control: 48 MiB in a 32Mi cell answered 200: %q", body)
	}
	const after = 4 // requests after the OOM kill
	for i := range after {
		if code, _, body := g.get("/hog?mb=1"); code != http.StatusOK {
			t.Errorf("request %d after an OOM kill: %d %q", i+1, code, body)
		}
	}
	if reused() < before+3 {
		t.Errorf("the hog route's %d requests were handed %d groups used before, want 3 or more", after+1, int(reused()-before))
	}
	resetPeak := strings.Contains(g.log(), "memory_peak_reset=true")
	recs := g.waitRecords("hog", after+1, time.Minute)
	leftOut := 0
	for i, r := range recs[1:] {
		if r.Outcome != "ok" || r.Cell.OOMKilled {
			t.Errorf("request %d after an OOM kill: outcome %s, oom_killed %v, want the OOM kill of the request before not counted", i+1, r.Outcome, r.Cell.OOMKilled)
		}
		if r.Cell.PidsPeak == nil {
			leftOut++
			if !slices.Contains(r.Cell.Missing, "pids.peak") {
				t.Errorf("request %d: no pids_peak and none said missing: %v", i+1, r.Cell.Missing)
			}
		}
		switch {
		case r.Cell.PidsPeak != nil:
		case resetPeak && r.Cell.MemoryPeak > 8<<20:
			t.Errorf("request %d of 1 MiB in a reused group: memory.peak %d, not its own", i+1, r.Cell.MemoryPeak)
		case !resetPeak && (r.Cell.MemoryPeak != 0 || !slices.Contains(r.Cell.Missing, "memory.peak")):
			t.Errorf("request %d in a reused group on a kernel without the memory.peak reset: peak %d, missing %v, want it left out",
				i+1, r.Cell.MemoryPeak, r.Cell.Missing)
		}
	}
	// Which of them ran in a reused group cannot be told from here (the
	// pool's count is every route's, and a resident cell replaced takes a
	// group too): at least one did.
	if leftOut == 0 {
		t.Errorf("none of the %d requests after the OOM kill left pids.peak out: want those in reused groups to", after)
	}
}
