package confine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cellgate/cellgate/internal/mounttest"
	"golang.org/x/sys/unix"
)

// The cell's init exists twice: in C (cmd/cellgate-init, what serve runs)
// and in Go (Init, InitExec, run when the C one is not installed). These
// tests run both on the same frames, without namespaces or root, and
// require the same reports, exit statuses and effects. What needs the
// kernel's namespaces (the view, the filter) is tested in the microVM
// with the C init (integration/confine_test.go) and with the Go one
// (TestConfineGoInit).

func TestMain(m *testing.M) {
	if dir := os.Getenv(emptyDirChild); dir != "" {
		os.Exit(emptyDirMain(dir))
	}
	if dir := os.Getenv(tmpfsEmptyChild); dir != "" {
		os.Exit(tmpfsEmptyMain(dir))
	}
	if dir := os.Getenv(wipeRaceChild); dir != "" {
		os.Exit(wipeRaceMain(dir))
	}
	if dir := os.Getenv(wipeDirChild); dir != "" {
		emptyDir(dir)
		os.Exit(0)
	}
	if os.Args[0] == InitArg0 {
		os.Exit(InitMain(os.Args[1:]))
	}
	code := m.Run()
	if cInitPath != "" {
		os.RemoveAll(filepath.Dir(cInitPath))
	}
	os.Exit(code)
}

var (
	cInitOnce sync.Once
	cInitPath string
	cInitErr  error
)

// cInit compiles cmd/cellgate-init once per test binary.
func cInit(t *testing.T) string {
	t.Helper()
	cInitOnce.Do(func() {
		cc := os.Getenv("CC")
		if cc == "" {
			cc = "cc"
		}
		if _, err := exec.LookPath(cc); err != nil {
			cInitErr = err
			return
		}
		dir, err := os.MkdirTemp("", "cellgate-cinit-")
		if err != nil {
			cInitErr = err
			return
		}
		cInitPath = filepath.Join(dir, "cellgate-init")
		out, err := exec.Command(cc, "-O2", "-static", "-Wall", "-Wextra", "-Werror", "-Wno-format-truncation",
			"-o", cInitPath, "../cmd/cellgate-init/cellgate-init.c").CombinedOutput()
		if err != nil {
			cInitErr = errors.New(string(out) + err.Error())
		}
	})
	if cInitErr != nil {
		if errors.Is(cInitErr, exec.ErrNotFound) {
			t.Skipf("no C compiler (make build installs gcc): %v", cInitErr)
		}
		t.Fatalf("compile cmd/cellgate-init: %v", cInitErr)
	}
	return cInitPath
}

// initRun is one init started on a control socket.
type initRun struct {
	t   *testing.T
	cmd *exec.Cmd
	ctl int
}

func startInit(t *testing.T, bin string, args ...string) *initRun {
	t.Helper()
	return startInitIn(t, bin, 0, args...)
}

// startInitIn is startInit with the init cloned into the namespaces of
// cloneflags, as the launcher clones a cell's.
func startInitIn(t *testing.T, bin string, cloneflags uintptr, args ...string) *initRun {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "control")
	cmd := &exec.Cmd{Path: bin, Args: append([]string{InitArg0}, args...), ExtraFiles: []*os.File{theirs},
		SysProcAttr: &syscall.SysProcAttr{Cloneflags: cloneflags}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	r := &initRun{t: t, cmd: cmd, ctl: fds[0]}
	t.Cleanup(func() {
		unix.Close(r.ctl)
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return r
}

func (r *initRun) send(frame []byte, files ...*os.File) {
	r.t.Helper()
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(r.ctl, frame, oob, nil, 0); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

// report reads the next report; ok is false at the end of the stream.
func (r *initRun) report() (Report, bool) {
	r.t.Helper()
	unix.SetsockoptTimeval(r.ctl, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 20})
	hdr := make([]byte, 16)
	if err := ReadFull(r.ctl, hdr); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Report{}, false
		}
		r.t.Fatalf("read report: %v", err)
	}
	n := int(binary.LittleEndian.Uint16(hdr[2:]))
	msg := make([]byte, n)
	if err := ReadFull(r.ctl, msg); err != nil {
		r.t.Fatalf("read report message: %v", err)
	}
	rep, ok := DecodeReport(append(hdr, msg...))
	if !ok {
		r.t.Fatalf("undecodable report %q", append(hdr, msg...))
	}
	return rep, true
}

// reports reads the reports left until the end of the stream.
func (r *initRun) reports() []Report {
	r.t.Helper()
	var all []Report
	for {
		rep, ok := r.report()
		if !ok {
			return all
		}
		all = append(all, rep)
	}
}

// exit waits for the init and returns its exit status.
func (r *initRun) exit() int {
	r.t.Helper()
	done := make(chan error, 1)
	go func() { done <- r.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		r.t.Fatal("the init did not exit within 20 s")
	}
	return r.cmd.ProcessState.ExitCode()
}

// outcome is what a test compares between the two inits.
type outcome struct {
	Reports []Report
	Status  int
	Output  string
}

// bareExec is an exec frame for program under this process's own
// credentials.
func bareExec(t *testing.T, path string, args ...string) []byte {
	t.Helper()
	groups, _ := os.Getgroups()
	g := make([]uint32, len(groups))
	for i, x := range groups {
		g[i] = uint32(x)
	}
	f, err := EncodeExec(&Exec{Path: path, Args: append([]string{path}, args...), Env: []string{"PATH=/usr/bin:/bin"}, Dir: "/",
		Credential: Credential{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), Groups: g}})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func planFrame(t *testing.T, p *Plan) []byte {
	t.Helper()
	prep, err := Prepare(p)
	if err != nil {
		t.Fatal(err)
	}
	return prep.Frame()
}

// bothInits runs scenario with the C init and with the Go init and
// requires the same outcome; it returns the C init's.
func bothInits(t *testing.T, scenario func(t *testing.T, bin string) outcome) outcome {
	t.Helper()
	c := scenario(t, cInit(t))
	goInit, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	g := scenario(t, goInit)
	if !equalOutcome(c, g) {
		t.Errorf("the C and the Go init differ:\n    C: %+v\n   Go: %+v", c, g)
	}
	return c
}

func equalOutcome(a, b outcome) bool {
	if a.Status != b.Status || a.Output != b.Output || len(a.Reports) != len(b.Reports) {
		return false
	}
	for i := range a.Reports {
		if a.Reports[i] != b.Reports[i] {
			return false
		}
	}
	return true
}

// runCell sends plan, then (after ReportReady) the exec frame with a pipe
// as stdout, and collects the reports, the output and the exit status;
// during, when set, runs while the program runs.
func runCell(t *testing.T, bin string, plan, execFrame []byte, during func(r *initRun, out *os.File)) outcome {
	return runCellIn(t, bin, 0, plan, execFrame, during)
}

// runCellIn is runCell with the init in the namespaces of cloneflags.
func runCellIn(t *testing.T, bin string, cloneflags uintptr, plan, execFrame []byte, during func(r *initRun, out *os.File)) outcome {
	r := startInitIn(t, bin, cloneflags)
	r.send(plan)
	var o outcome
	rep, ok := r.report()
	if ok {
		o.Reports = append(o.Reports, rep)
	}
	if ok && rep.Kind == ReportReady && execFrame != nil {
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		null, _ := os.Open(os.DevNull)
		r.send(execFrame, null, pw, pw)
		pw.Close()
		null.Close()
		if during != nil {
			during(r, pr)
		}
		out, _ := io.ReadAll(pr)
		pr.Close()
		o.Output = string(out)
		o.Reports = append(o.Reports, r.reports()...)
	} else if ok && rep.Kind == ReportReady {
		unix.Shutdown(r.ctl, unix.SHUT_WR)
	}
	o.Status = r.exit()
	return o
}

func TestInitsAgree(t *testing.T) {
	noNS := &Plan{NoFile: 64}
	root := os.Geteuid() == 0
	t.Run("bad magic", func(t *testing.T) {
		frame := binary.LittleEndian.AppendUint32(nil, 6)
		o := bothInits(t, func(t *testing.T, bin string) outcome {
			return runCell(t, bin, append(frame, "CGL1{}"...), nil, nil)
		})
		if o.Status != exitSetup || len(o.Reports) != 1 || o.Reports[0].Kind != ReportSetup || !strings.Contains(o.Reports[0].Msg, "bad magic") {
			t.Errorf("bad magic: %+v", o)
		}
	})
	t.Run("truncated plan", func(t *testing.T) {
		full := planFrame(t, noNS)
		cut := binary.LittleEndian.AppendUint32(nil, 10)
		cut = append(cut, full[4:14]...)
		o := bothInits(t, func(t *testing.T, bin string) outcome { return runCell(t, bin, cut, nil, nil) })
		if o.Status != exitSetup || len(o.Reports) != 1 || !strings.Contains(o.Reports[0].Msg, "plan frame: truncated") {
			t.Errorf("truncated: %+v", o)
		}
	})
	t.Run("unused cell", func(t *testing.T) {
		o := bothInits(t, func(t *testing.T, bin string) outcome { return runCell(t, bin, planFrame(t, noNS), nil, nil) })
		if o.Status != 0 || len(o.Reports) != 1 || o.Reports[0].Kind != ReportReady {
			t.Errorf("a ready cell whose control socket ends: %+v, want ReportReady and exit 0", o)
		}
	})
	t.Run("program runs", func(t *testing.T) {
		ex := bareExec(t, "/bin/sh", "-c", `ulimit -n; awk '/^Max (core file size|locked memory)/ {print $(NF-2), $(NF-1)}' /proc/self/limits; cat /proc/self/oom_score_adj; echo "$PATH"; pwd; exit 3`)
		o := bothInits(t, func(t *testing.T, bin string) outcome { return runCell(t, bin, planFrame(t, noNS), ex, nil) })
		if !root {
			// setgroups needs CAP_SETGID even for the groups one has.
			if len(o.Reports) != 2 || o.Reports[1].Kind != ReportSpawn || o.Reports[1].Errno != int32(unix.EPERM) {
				t.Errorf("not root: %+v, want ReportSpawn EPERM", o)
			}
			return
		}
		want := Report{Kind: ReportExited, Code: 3}
		if o.Status != 3 || len(o.Reports) != 2 || o.Reports[1] != want || o.Output != "64\n1 1\n65536 65536\n1000\n/usr/bin:/bin\n/\n" {
			t.Errorf("program: %+v, want exit 3, %+v and its limits, oom_score_adj, environment and directory", o, want)
		}
	})
	t.Run("real-time parent", func(t *testing.T) {
		if !root {
			t.Skip("a real-time policy for the init needs root")
		}
		ex := bareExec(t, "/bin/sh", "-c", `awk '/^Max realtime priority/ {print $(NF-1), $NF}' /proc/self/limits; awk '{print $41}' /proc/self/stat; ionice -p $$ | cut -d: -f1`)
		o := bothInits(t, func(t *testing.T, bin string) (o outcome) {
			realtime(t, func() { o = runCell(t, bin, planFrame(t, noNS), ex, nil) })
			return o
		})
		if o.Status != 0 || !strings.HasPrefix(o.Output, "0 0\n0\n") || strings.Contains(o.Output, "realtime") {
			t.Errorf("under a SCHED_FIFO parent with RLIMIT_RTPRIO 99 and the real-time I/O class: %+v, want RLIMIT_RTPRIO 0 0, policy 0 (SCHED_OTHER) and another I/O class", o)
		}
	})
	t.Run("favoured parent", func(t *testing.T) {
		if !root {
			t.Skip("the program's start needs root (setgroups)")
		}
		ex := bareExec(t, "/bin/sh", "-c", `cat /proc/self/personality; awk '{print $19}' /proc/self/stat; awk '/^Max nice priority/ {print $(NF-1), $NF}' /proc/self/limits`)
		o := bothInits(t, func(t *testing.T, bin string) (o outcome) {
			favoured(t, func() { o = runCell(t, bin, planFrame(t, noNS), ex, nil) })
			return o
		})
		if o.Status != 0 || o.Output != "00000000\n0\n0 0\n" {
			t.Errorf("under a parent at nice -5 with RLIMIT_NICE 40 and no address space randomisation: %+v, want personality 0, nice 0 and RLIMIT_NICE 0 0", o)
		}
	})
	t.Run("kept capabilities", func(t *testing.T) {
		if !root {
			t.Skip("capabilities to keep need root")
		}
		// A program under a uid of its own, as a cell's runs.
		f, err := EncodeExec(&Exec{Path: "/bin/sh", Args: []string{"/bin/sh", "-c", `grep -E '^Cap(Prm|Eff|Amb)' /proc/self/status`},
			Env: []string{"PATH=/usr/bin:/bin"}, Dir: "/", Credential: Credential{UID: 4321, GID: 4321}})
		if err != nil {
			t.Fatal(err)
		}
		o := bothInits(t, func(t *testing.T, bin string) (o outcome) {
			keepingCaps(t, func() { o = runCell(t, bin, planFrame(t, noNS), f, nil) })
			return o
		})
		const none = "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapAmb:\t0000000000000000\n"
		if o.Status != 0 || o.Output != none {
			t.Errorf("under a parent with SECBIT_NO_SETUID_FIXUP and CAP_SYS_ADMIN ambient: %+v, want no capability", o)
		}
	})
	t.Run("root in a view of its own", func(t *testing.T) {
		if !root {
			t.Skip("a view of the cell's own needs root")
		}
		// A route run as root: its program keeps RootCaps alone, and the
		// parts of its /proc through which root changes the host's
		// kernel are read-only (opened for appending, which writes
		// nothing where it succeeds).
		p, err := Build(Options{Programs: "/bin", Root: true, Share: NSNet | NSIPC | NSUTS}, OSFS{})
		if err != nil {
			t.Fatal(err)
		}
		// Besides kernel.core_pattern, a file root may write under each
		// part of ProcReadOnly this kernel has: the C init's list must
		// be the same.
		files := []string{"/proc/sys/kernel/core_pattern"}
		for _, name := range ProcReadOnly {
			if f := ownerWritable(filepath.Join("/proc", name)); f != "" && name != "sys" {
				files = append(files, f)
			}
		}
		script := `grep -E '^Cap(Bnd|Eff)' /proc/self/status
for f in "$@"; do (exec 3>>$f) 2>/dev/null && echo "$f writable" || echo "$f refused"; done`
		ex := bareExec(t, "/bin/sh", append(append([]string{"-c", script, "sh"}, files...), "/proc/self/comm")...)
		// RootCaps written out, not computed from it: CAP_CHOWN (0),
		// CAP_DAC_OVERRIDE (1), CAP_FOWNER (3), CAP_FSETID (4), CAP_KILL
		// (5), CAP_SETGID (6), CAP_SETUID (7), CAP_SETPCAP (8),
		// CAP_SYS_CHROOT (18).
		const rootCaps = "00000000000401fb"
		want := "CapEff:\t" + rootCaps + "\nCapBnd:\t" + rootCaps + "\n"
		for _, f := range files {
			want += f + " refused\n"
		}
		want += "/proc/self/comm writable\n"
		t.Logf("files root may write under ProcReadOnly here: %q", files)
		o := bothInits(t, func(t *testing.T, bin string) outcome {
			return runCellIn(t, bin, unix.CLONE_NEWNS|unix.CLONE_NEWPID, planFrame(t, p), ex, nil)
		})
		if o.Status != 0 || o.Output != want {
			t.Errorf("root in a view of its own: %+v, want output %q", o, want)
		}
		// Whatever else the sets hold, never a capability with which
		// root changes the host's kernel or devices.
		for line := range strings.Lines(o.Output) {
			name, v, ok := strings.Cut(strings.TrimSpace(line), ":\t")
			if !ok || !strings.HasPrefix(name, "Cap") {
				continue
			}
			mask, err := strconv.ParseUint(v, 16, 64)
			if err != nil {
				t.Errorf("%s %q: %v", name, v, err)
				continue
			}
			for _, c := range []struct {
				name string
				bit  uint
			}{{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN}, {"CAP_SYS_RAWIO", unix.CAP_SYS_RAWIO}, {"CAP_SYS_ADMIN", unix.CAP_SYS_ADMIN}, {"CAP_MKNOD", unix.CAP_MKNOD}} {
				if mask&(1<<c.bit) != 0 {
					t.Errorf("root in a view of its own: %s %s holds %s", name, v, c.name)
				}
			}
		}
	})
	t.Run("root of a user namespace of its own", func(t *testing.T) {
		if !root {
			t.Skip("a view of the cell's own needs root")
		}
		// A route run as root with a root map: its program is uid 0 and
		// gid 0 of a user namespace mapping them to m alone, with every
		// capability there and none over the host's files: a root-only
		// file of its view is closed to it, the kernel's settings too;
		// what it writes in a writable mount is m's on the host. Under
		// the filter, whose setns the C init uses (FilterFor). The Go
		// init refuses such a plan, naming cellgate-init.
		m := RootMap{UID: 2_000_000_017, GID: 2_000_000_019}
		secret, data := t.TempDir(), t.TempDir()
		os.Chmod(data, 0o777)
		if err := os.WriteFile(filepath.Join(secret, "key"), []byte("secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := Build(Options{Programs: "/bin", Root: true, RootMap: &m, Share: NSNet | NSIPC | NSUTS,
			Mounts: []Bind{{Source: secret, Target: "/secret"}, {Source: data, Target: "/data", Writable: true}}}, OSFS{})
		if err != nil {
			t.Fatal(err)
		}
		if !p.Seccomp || p.CutsRootCaps(0) {
			t.Fatalf("plan: seccomp %v, cuts root's capabilities %v: want a filter, and no cut", p.Seccomp, p.CutsRootCaps(0))
		}
		script := `id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map | tr -s ' ' | sed 's/^ //'
grep -E '^CapEff' /proc/self/status
for f in /secret/key /proc/sys/kernel/core_pattern; do (exec 3<$f) 2>/dev/null && echo "$f readable" || echo "$f refused"; done
(exec 3>>/proc/sys/kernel/core_pattern) 2>/dev/null && echo "core_pattern writable" || echo "core_pattern refused"
echo x > /data/mine && echo "wrote /data/mine"`
		ex := bareExec(t, "/bin/sh", "-c", script)
		frame := planFrame(t, p)
		o := runCellIn(t, cInit(t), unix.CLONE_NEWNS|unix.CLONE_NEWPID, frame, ex, nil)
		full := fmt.Sprintf("%016x", uint64(1)<<(capLast()+1)-1)
		want := fmt.Sprintf("0\n0\n0 %d 1\n0 %d 1\nCapEff:\t%s\n/secret/key refused\n/proc/sys/kernel/core_pattern readable\ncore_pattern refused\nwrote /data/mine\n", m.UID, m.GID, full)
		if o.Status != 0 || o.Output != want {
			t.Errorf("root of a user namespace of its own: %+v, want output %q", o, want)
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(data, "mine"), &st); err != nil || st.Uid != m.UID || st.Gid != m.GID {
			t.Errorf("the program's file on the host: %v, owner %d:%d, want %d:%d", err, st.Uid, st.Gid, m.UID, m.GID)
		}
		goInit, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		g := runCellIn(t, goInit, unix.CLONE_NEWNS|unix.CLONE_NEWPID, frame, ex, nil)
		if g.Status != exitSetup || len(g.Reports) != 1 || g.Reports[0].Kind != ReportSetup || !strings.Contains(g.Reports[0].Msg, InitArg0) {
			t.Errorf("the Go init with a root map: %+v, want it refused at setup, naming %s", g, InitArg0)
		}
	})
	t.Run("host mounts below a bind", func(t *testing.T) {
		if !root {
			t.Skip("a view of the cell's own needs root")
		}
		// A read-only bind and a writable one, each of a directory with a
		// file system of the host's mounted below it (rw, suid, dev):
		// below the read-only one it is read-only, and below both nosuid
		// and nodev, as the binds themselves. Where mount_setattr is
		// refused, the binds bring no mount of the host's at all.
		ro, rw := hostSubmount(t), hostSubmount(t)
		p, err := Build(Options{Programs: "/bin", Share: NSNet | NSIPC | NSUTS,
			Mounts: []Bind{{Source: ro, Target: "/ro"}, {Source: rw, Target: "/rw", Writable: true}}}, OSFS{})
		if err != nil {
			t.Fatal(err)
		}
		script := `for d in /ro/sub /rw/sub; do
  (echo x > $d/new) 2>/dev/null && echo "$d write ok" || echo "$d write refused"
  (exec 3<$d/null) 2>/dev/null && echo "$d device ok" || echo "$d device refused"
  grep -q " $d " /proc/self/mountinfo && echo "$d $(awk -v d=$d '$5 == d {print $6}' /proc/self/mountinfo)" || echo "$d not mounted"
done`
		ex := bareExec(t, "/bin/sh", "-c", script)
		run := func(t *testing.T, bin string) outcome {
			return runCellIn(t, bin, unix.CLONE_NEWNS|unix.CLONE_NEWPID, planFrame(t, p), ex, nil)
		}
		o := bothInits(t, run)
		want := "/ro/sub write refused\n/ro/sub device refused\n/ro/sub ro,nosuid,nodev,relatime\n" +
			"/rw/sub write ok\n/rw/sub device refused\n/rw/sub rw,nosuid,nodev,relatime\n"
		if o.Status != 0 || o.Output != want {
			t.Errorf("host mounts below binds: %+v, want output %q", o, want)
		}
		// Under a filter that refuses mount_setattr (a seccomp profile,
		// a kernel before 5.12), started from a thread of its own.
		o = bothInits(t, func(t *testing.T, bin string) outcome {
			return withoutMountSetattr(t, func() outcome { return run(t, bin) })
		})
		want = "/ro/sub write refused\n/ro/sub device refused\n/ro/sub not mounted\n" +
			"/rw/sub write ok\n/rw/sub device refused\n/rw/sub not mounted\n"
		if o.Status != 0 || o.Output != want {
			t.Errorf("host mounts below binds, mount_setattr refused: %+v, want output %q", o, want)
		}
	})
	t.Run("host mounts inside a rootfs", func(t *testing.T) {
		if !root {
			t.Skip("a view of the cell's own needs root")
		}
		// A rootfs made as a chroot is often made: the host's /usr bound
		// into it, and here a file system of the host's (rw, suid, dev)
		// at its /sub. Both come read-only, nosuid and nodev.
		rootfs := chrootTree(t)
		p, err := Build(Options{Programs: "/usr/bin", RootFS: rootfs, Share: NSNet | NSIPC | NSUTS}, OSFS{})
		if err != nil {
			t.Fatal(err)
		}
		script := `(echo x > /sub/new) 2>/dev/null && echo "write ok" || echo "write refused"
(exec 3</sub/null) 2>/dev/null && echo "device ok" || echo "device refused"
for d in /sub /usr; do echo "$d $(grep " $d " /proc/self/mountinfo | tail -1 | cut -d' ' -f6)"; done
(echo x > /tmp/new) 2>/dev/null && echo "tmp ok" || echo "tmp refused"`
		o := bothInits(t, func(t *testing.T, bin string) outcome {
			return runCellIn(t, bin, unix.CLONE_NEWNS|unix.CLONE_NEWPID, planFrame(t, p), bareExec(t, "/bin/sh", "-c", script), nil)
		})
		want := "write refused\ndevice refused\n/sub ro,nosuid,nodev,relatime\n/usr ro,nosuid,nodev,relatime\ntmp ok\n"
		if o.Status != 0 || o.Output != want {
			t.Errorf("host mounts inside a rootfs: status %d, reports %+v, output %q, want output %q", o.Status, o.Reports, o.Output, want)
		}
	})
	t.Run("no such program", func(t *testing.T) {
		ex := bareExec(t, "/nonexistent/program")
		o := bothInits(t, func(t *testing.T, bin string) outcome { return runCell(t, bin, planFrame(t, noNS), ex, nil) })
		if o.Status != exitSpawn || len(o.Reports) != 2 || o.Reports[1].Kind != ReportSpawn {
			t.Errorf("no such program: %+v", o)
		}
		if root && (o.Reports[1].Errno != int32(unix.ENOENT) || o.Reports[1].Msg != "fork/exec /nonexistent/program: no such file or directory") {
			t.Errorf("no such program: %+v, want ENOENT named as the Go init names it", o.Reports[1])
		}
	})
	if !root {
		return
	}
	t.Run("transparent huge pages", func(t *testing.T) {
		// The program and a process it forks see the init's choice; the
		// test's own THP_enabled is the system's (huge_pages: system).
		own, err := os.ReadFile("/proc/self/status")
		if err != nil {
			t.Fatal(err)
		}
		system := ""
		for _, line := range strings.Split(string(own), "\n") {
			if v, ok := strings.CutPrefix(line, "THP_enabled:"); ok {
				system = strings.TrimSpace(v)
			}
		}
		if system == "" {
			t.Skip("no THP_enabled in /proc/self/status")
		}
		ex := bareExec(t, "/bin/sh", "-c", `grep ^THP_enabled /proc/self/status; (grep ^THP_enabled /proc/self/status)`)
		for _, c := range []struct {
			plan *Plan
			want string
		}{
			{&Plan{NoFile: 64}, "0"},
			{&Plan{NoFile: 64, HugePages: true}, system},
		} {
			o := bothInits(t, func(t *testing.T, bin string) outcome { return runCell(t, bin, planFrame(t, c.plan), ex, nil) })
			want := strings.Repeat("THP_enabled:\t"+c.want+"\n", 2)
			if o.Status != 0 || o.Output != want {
				t.Errorf("HugePages %v: %+v, want output %q", c.plan.HugePages, o, want)
			}
		}
	})
	t.Run("killed by a signal", func(t *testing.T) {
		ex := bareExec(t, "/bin/sh", "-c", `kill -KILL $$`)
		o := bothInits(t, func(t *testing.T, bin string) outcome { return runCell(t, bin, planFrame(t, noNS), ex, nil) })
		want := Report{Kind: ReportExited, Code: -1, Signal: int32(unix.SIGKILL)}
		if o.Status != 128+9 || len(o.Reports) != 2 || o.Reports[1] != want {
			t.Errorf("killed: %+v, want %+v and exit 137", o, want)
		}
	})
	t.Run("signal forwarded", func(t *testing.T) {
		ex := bareExec(t, "/bin/sh", "-c", `trap 'echo got TERM; exit 7' TERM; echo waiting; while :; do sleep 0.05; done`)
		o := bothInits(t, func(t *testing.T, bin string) outcome {
			return runCell(t, bin, planFrame(t, noNS), ex, func(r *initRun, out *os.File) {
				line := make([]byte, len("waiting\n"))
				if _, err := io.ReadFull(out, line); err != nil {
					t.Fatalf("program's first line: %v", err)
				}
				r.cmd.Process.Signal(syscall.SIGTERM)
			})
		})
		if o.Status != 7 || o.Output != "got TERM\n" {
			t.Errorf("SIGTERM to the init: %+v, want the program to get it and exit 7", o)
		}
	})
	t.Run("exec mode", func(t *testing.T) {
		for _, prog := range []string{"/bin/sh", "/nonexistent/preloader"} {
			o := bothInits(t, func(t *testing.T, bin string) outcome {
				r := startInit(t, bin, ExecArg)
				r.send(planFrame(t, noNS))
				var o outcome
				rep, _ := r.report()
				o.Reports = append(o.Reports, rep)
				pr, pw, _ := os.Pipe()
				f, _ := EncodeExec(&Exec{Path: prog, Args: []string{prog, "-c", "echo on fd 3 >&3"}, Dir: "/"})
				r.send(f, pw)
				pw.Close()
				out, _ := io.ReadAll(pr)
				o.Output = string(out)
				o.Reports = append(o.Reports, r.reports()...)
				o.Status = r.exit()
				return o
			})
			if prog == "/bin/sh" && (o.Status != 0 || o.Output != "on fd 3\n" || len(o.Reports) != 1) {
				t.Errorf("exec mode: %+v, want the program in the init's place with the descriptor as fd 3", o)
			}
			if prog != "/bin/sh" && (o.Status != exitSpawn || len(o.Reports) != 2 || o.Reports[1].Msg != "exec "+prog+": no such file or directory") {
				t.Errorf("exec mode, no such program: %+v", o)
			}
		}
	})
}

// TestInitRefusesCutFrames: a plan frame cut at any length, or with its
// length field saying more than was sent, is refused by the C init with
// ReportSetup, never applied or crashed on (the Go decoder's truncation is
// TestLaunchRoundTrip's).
func TestInitRefusesCutFrames(t *testing.T) {
	bin := cInit(t)
	full := planFrame(t, &Plan{Seccomp: true, Hostname: "cell", NoFile: 64,
		Binds:    []Bind{{Source: "/usr", Target: "/usr"}},
		Symlinks: []Symlink{{Link: "/bin", Target: "usr/bin"}},
		Tmpfs:    []Tmpfs{{Target: "/tmp", Size: 1 << 20, Mode: 0o1777}}})
	body := full[4:]
	step := 1
	if testing.Short() {
		step = 13
	}
	for n := 0; n < len(body); n += step {
		frame := binary.LittleEndian.AppendUint32(nil, uint32(n))
		frame = append(frame, body[:n]...)
		o := runCell(t, bin, frame, nil, nil)
		if o.Status != exitSetup || len(o.Reports) != 1 || o.Reports[0].Kind != ReportSetup {
			t.Fatalf("plan frame cut at %d of %d bytes: %+v, want it refused (ReportSetup, exit %d)", n, len(body), o, exitSetup)
		}
	}
	// A length that promises more than comes: the stream's end is an error.
	frame := binary.LittleEndian.AppendUint32(nil, uint32(len(body)+10))
	r := startInit(t, bin)
	r.send(append(frame, body...))
	unix.Shutdown(r.ctl, unix.SHUT_WR)
	rep, ok := r.report()
	if !ok || rep.Kind != ReportSetup || !strings.Contains(rep.Msg, "unexpected EOF") {
		t.Errorf("a frame shorter than its length: %+v %v, want ReportSetup on the unexpected end", rep, ok)
	}
	if st := r.exit(); st != exitSetup {
		t.Errorf("exit %d, want %d", st, exitSetup)
	}
}

// realtime runs f on a thread of its own under SCHED_FIFO and the
// real-time I/O class, with the process's RLIMIT_RTPRIO at 99 where it
// may raise it: what a process f starts inherits.
func realtime(t *testing.T, f func()) {
	t.Helper()
	defer raisedRlimit(t, unix.RLIMIT_RTPRIO, "RLIMIT_RTPRIO", 99)()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	prio := int32(1)
	if _, _, errno := unix.RawSyscall(unix.SYS_SCHED_SETSCHEDULER, 0, unix.SCHED_FIFO, uintptr(unsafe.Pointer(&prio))); errno != 0 {
		t.Fatalf("sched_setscheduler(SCHED_FIFO): %v", errno)
	}
	defer func() {
		prio = 0
		unix.RawSyscall(unix.SYS_SCHED_SETSCHEDULER, 0, unix.SCHED_NORMAL, uintptr(unsafe.Pointer(&prio)))
	}()
	// The real-time I/O class at level 4, for this thread (who 0).
	if _, _, errno := unix.RawSyscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, 0, ioprioClassRT<<ioprioClassShift|4); errno != 0 {
		t.Fatalf("ioprio_set(IOPRIO_CLASS_RT): %v", errno)
	}
	defer unix.RawSyscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, 0, 0)
	f()
}

// raisedRlimit sets the process's limit resource (name) to v, soft and
// hard, where it may, and returns what sets it back. Raising the hard
// limit needs CAP_SYS_RESOURCE, which a container may lack
// (TestConfineNotInherited covers the limits in the microVM).
func raisedRlimit(t *testing.T, resource int, name string, v uint64) func() {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(resource, &old); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setrlimit(resource, &unix.Rlimit{Cur: v, Max: v}); err != nil {
		t.Logf("%s left at %d: %v", name, old.Max, err)
		return func() {}
	}
	return func() { unix.Setrlimit(resource, &old) }
}

// favoured runs f on a thread of its own, ended after it, at nice -5
// and without address space randomisation (ADDR_NO_RANDOMIZE, setarch
// -R), with the process's RLIMIT_NICE at 40 (a nice value down to -20)
// meanwhile: what a process f starts inherits them.
func favoured(t *testing.T, f func()) {
	t.Helper()
	defer raisedRlimit(t, unix.RLIMIT_NICE, "RLIMIT_NICE", 40)()
	onOwnThread(t, func() error {
		// A negative nice value needs CAP_SYS_NICE, which a container
		// may lack (TestConfineNotInherited covers it in the microVM).
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, -5); err != nil {
			t.Logf("nice value left at 0: setpriority(-5): %v", err)
		}
		const addrNoRandomize = 0x0040000
		persona, _, _ := unix.RawSyscall(unix.SYS_PERSONALITY, 0xffffffff, 0, 0)
		if _, _, errno := unix.RawSyscall(unix.SYS_PERSONALITY, persona|addrNoRandomize, 0, 0); errno != 0 {
			return fmt.Errorf("personality(ADDR_NO_RANDOMIZE): %w", errno)
		}
		return nil
	}, f)
}

// onOwnThread runs setup, then f, on a thread of its own, ended after
// them (its goroutine never unlocks it): what setup changes of the
// thread's own attributes, a process f starts inherits, and no other
// goroutine runs with them.
func onOwnThread(t *testing.T, setup func() error, f func()) {
	t.Helper()
	done := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		err := setup()
		if err == nil {
			f()
		}
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// keepingCaps runs f on a thread of its own, ended after it, whose
// securebits keep its capabilities across a change of uid
// (SECBIT_NO_SETUID_FIXUP) and which holds CAP_SYS_ADMIN ambient, as under
// a unit's SecureBits=no-setuid-fixup and AmbientCapabilities=: what a
// process f starts inherits both.
func keepingCaps(t *testing.T, f func()) {
	t.Helper()
	onOwnThread(t, func() error {
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			return fmt.Errorf("capget: %w", err)
		}
		data[0].Inheritable |= 1 << unix.CAP_SYS_ADMIN
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			return fmt.Errorf("capset: %w", err)
		}
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, unix.CAP_SYS_ADMIN, 0, 0); err != nil {
			return fmt.Errorf("raise CAP_SYS_ADMIN ambient: %w", err)
		}
		const secbitNoSetuidFixup = 1 << 2
		if err := unix.Prctl(unix.PR_SET_SECUREBITS, secbitNoSetuidFixup, 0, 0, 0); err != nil {
			return fmt.Errorf("prctl(PR_SET_SECUREBITS): %w", err)
		}
		return nil
	}, f)
}

// ownerWritable is the first file at or below path (in /proc) that its
// owner may write, or "" if none is found there.
func ownerWritable(path string) string {
	var found string
	filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || found != "" {
			return filepath.SkipDir
		}
		if info, err := d.Info(); err == nil && info.Mode().IsRegular() && info.Mode().Perm()&0o200 != 0 {
			found = p
			return filepath.SkipAll
		}
		return nil
	})
	return found
}

// withoutMountSetattr runs start on a thread of its own under a seccomp
// filter that answers mount_setattr EPERM, as a container's profile may:
// a process it starts inherits the filter. The thread ends with it.
func withoutMountSetattr(t *testing.T, start func() outcome) outcome {
	t.Helper()
	prog := []unix.SockFilter{
		{Code: ldAbsW, K: offNr},
		{Code: jeqK, K: unix.SYS_MOUNT_SETATTR, Jt: 0, Jf: 1},
		{Code: retK, K: retEPERM},
		{Code: retK, K: retAllow},
	}
	done := make(chan outcome)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		o := outcome{Status: -1}
		defer func() { done <- o }() // also when start fails the test
		fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
		if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&fprog))); e != 0 {
			t.Errorf("load a filter on the thread: %v", e)
			return
		}
		o = start()
	}()
	return <-done
}

// hostSubmount is a directory with a file system of the host's mounted
// at its "sub" (mounttest.Below).
func hostSubmount(t *testing.T) string {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	mounttest.Below(t, dir)
	return dir
}

// chrootTree is a rootfs made as a chroot is (mounttest.Chroot), with a
// file system of the host's at /sub.
func chrootTree(t *testing.T) string {
	dir := hostSubmount(t)
	mounttest.Chroot(t, dir)
	return dir
}

// capLast is the kernel's highest capability (/proc/sys/kernel/cap_last_cap).
func capLast() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return unix.CAP_LAST_CAP
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return unix.CAP_LAST_CAP
	}
	return n
}

// TestCInitSpawnerOutlivesSignals: the C init's spawner outlives the
// signals an operator may send every process of cellgate's unit (systemctl
// kill without --kill-whom=main): after SIGHUP, SIGINT, SIGUSR1, SIGUSR2
// and SIGPIPE it still answers a request (a malformed one: EPROTO).
func TestCInitSpawnerOutlivesSignals(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "spawner"), os.NewFile(uintptr(fds[1]), "spawner")
	defer ours.Close()
	cmd := &exec.Cmd{Path: cInit(t), Args: []string{InitArg0, SpawnerArg}, ExtraFiles: []*os.File{theirs}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	ours.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ans [8]byte
	if n, err := ours.Read(ans[:]); err != nil || n != 8 || int(binary.LittleEndian.Uint32(ans[:])) != cmd.Process.Pid {
		t.Fatalf("hello: %d bytes %x, %v", n, ans[:n], err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE} {
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatalf("%v: %v", sig, err)
		}
	}
	if _, err := ours.Write([]byte("not a spawn request")); err != nil {
		t.Fatal(err)
	}
	n, err := ours.Read(ans[:])
	if err != nil || n != 8 || syscall.Errno(binary.LittleEndian.Uint32(ans[4:])) != syscall.EPROTO {
		cmd.Process.Kill()
		t.Fatalf("after the signals the spawner answered %x (%v); want EPROTO; it ended: %v", ans[:n], err, cmd.Wait())
	}
}

// TestInitWarmDropsPendingSignals: a signal sent to a ready init waiting
// for its request (a warm cell; systemctl kill -s HUP of the unit without
// --kill-whom=main reaches every process of it) is not the next program's:
// both inits forwarded it to a program that did not exist when it was
// sent, which then died of it at its start. The resident init already
// dropped them; now a warm one does too.
func TestInitWarmDropsPendingSignals(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the program's credentials (setgroups) need root")
	}
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			bothInits(t, func(t *testing.T, bin string) outcome {
				r := startInit(t, bin)
				r.send(planFrame(t, &Plan{NoFile: 64}))
				var o outcome
				rep, ok := r.report()
				if !ok || rep.Kind != ReportReady {
					t.Fatalf("the init's first report: %+v %v, want ready", rep, ok)
				}
				o.Reports = append(o.Reports, rep)
				if err := r.cmd.Process.Signal(sig); err != nil {
					t.Fatal(err)
				}
				// The C init blocks it: pending until it starts the
				// program. The Go init ignores it (the kernel discards it
				// at the kill) or, before, took it at once into a channel:
				// wait until it is no longer pending.
				bit := uint64(1) << (sig - 1)
				for deadline := time.Now().Add(10 * time.Second); ; {
					if pending := sigPending(t, r.cmd.Process.Pid); (pending&bit != 0) == (bin == cInitPath) {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("the init never took signal %v", sig)
					}
					time.Sleep(time.Millisecond)
				}
				pr, pw, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				null, _ := os.Open(os.DevNull)
				r.send(bareExec(t, "/bin/sh", "-c", "echo alive"), null, pw, pw)
				pw.Close()
				null.Close()
				out, _ := io.ReadAll(pr)
				pr.Close()
				o.Output = string(out)
				o.Reports = append(o.Reports, r.reports()...)
				o.Status = r.exit()
				if o.Status != 0 || o.Output != "alive\n" {
					t.Errorf("%s: the program after a %v sent to the waiting init: %+v, want it run to its end (status 0, \"alive\")", bin, sig, o)
				}
				return o
			})
		})
	}
}

// sigPending reads a process's shared pending signals (ShdPnd) from
// /proc/PID/status.
func sigPending(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ShdPnd:\t"); ok {
			n, err := strconv.ParseUint(v, 16, 64)
			if err != nil {
				t.Fatalf("ShdPnd %q: %v", v, err)
			}
			return n
		}
	}
	t.Fatalf("no ShdPnd in /proc/%d/status", pid)
	return 0
}

// TestInitsWordFrameErrorsAlike: both inits refuse the same malformed
// frames with the same words: a field or a list longer than what is left
// of the frame, and descriptors sent with a frame that takes none (the
// Go init took that plan for good: it never looked at MSG_CTRUNC; the C
// init said "0 descriptors with the frame, want 0").
func TestInitsWordFrameErrorsAlike(t *testing.T) {
	noNS := &Plan{NoFile: 64}
	body := bareExec(t, "/bin/true")[4:]
	frame := func(b []byte) []byte { return append(binary.LittleEndian.AppendUint32(nil, uint32(len(b))), b...) }
	// The body: uid, gid, the groups' count and groups, then the path.
	ng := binary.LittleEndian.Uint32(body[8:])
	longPath := append([]byte{}, body...)
	binary.LittleEndian.PutUint32(longPath[12+4*int(ng):], 1<<20)
	manyGroups := append([]byte{}, body...)
	binary.LittleEndian.PutUint32(manyGroups[8:], 1<<20)
	for _, tc := range []struct {
		name, want string
		exec       []byte
	}{
		{"a path longer than the frame", fmt.Sprintf("exec frame: field of %d bytes with %d left", 1<<20, len(body)-16-4*int(ng)), frame(longPath)},
		{"more groups than the frame holds", fmt.Sprintf("exec frame: list of %d entries with %d bytes left", 1<<20, len(body)-12), frame(manyGroups)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := bothInits(t, func(t *testing.T, bin string) outcome {
				return runCell(t, bin, planFrame(t, noNS), tc.exec, nil)
			})
			if n := len(o.Reports); n != 2 || o.Reports[1].Kind != ReportSpawn || o.Reports[1].Msg != tc.want {
				t.Errorf("reports %+v, want ready then a spawn failure %q", o.Reports, tc.want)
			}
		})
	}
	t.Run("a descriptor with the plan", func(t *testing.T) {
		o := bothInits(t, func(t *testing.T, bin string) outcome {
			r := startInit(t, bin)
			null, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			defer null.Close()
			r.send(planFrame(t, noNS), null)
			// One report, then the end: the init left the frame's body
			// unread, and its close resets the stream after it.
			var o outcome
			if rep, ok := r.report(); ok {
				o.Reports = append(o.Reports, rep)
			}
			o.Status = r.exit()
			return o
		})
		const want = "read the plan frame on fd 3: descriptors with a frame that takes none"
		if len(o.Reports) != 1 || o.Reports[0].Kind != ReportSetup || o.Reports[0].Msg != want || o.Status != exitSetup {
			t.Errorf("%+v, want the plan refused: %q, exit %d", o, want, exitSetup)
		}
	})
}

// TestInitsSurviveTheirProgramsSignals: a program that may signal its
// init (PID 1 of its namespace; here one of the same uid) and sends it a
// signal the init does not forward leaves it running, as the kernel drops
// what PID 1 has no handler for: the Go init, whose runtime handles every
// signal, died of SIGSYS, SIGABRT or SIGSEGV with a stack dump, and the
// request was reported as its program's exit 2.
func TestInitsSurviveTheirProgramsSignals(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a PID namespace needs root")
	}
	for _, sig := range []string{"SYS", "ABRT", "SEGV", "ILL", "TRAP", "BUS", "FPE"} {
		t.Run(sig, func(t *testing.T) {
			o := bothInits(t, func(t *testing.T, bin string) outcome {
				return runCellIn(t, bin, unix.CLONE_NEWPID, planFrame(t, &Plan{NoFile: 64}),
					bareExec(t, "/bin/sh", "-c", "kill -"+sig+" 1; sleep 0.2; echo alive; exit 4"), nil)
			})
			if o.Status != 4 || o.Output != "alive\n" {
				t.Errorf("kill -%s 1: %+v, want the program to go on and exit 4", sig, o)
			}
		})
	}
}
