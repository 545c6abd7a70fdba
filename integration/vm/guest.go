package vm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Guest is the VM's /init (pid 1). It sets the machine up, runs the program
// of /vmrun.json, prints the status line and powers off. It never returns.
// When setup fails it says why and powers off without a status line, which
// the host reports as a failure.
func Guest() {
	console := os.Stdout
	rawConsole(int(console.Fd()))
	spec, err := readSpec("/" + SpecPath)
	if err == nil {
		// The sign of life: the accelerator started this guest.
		fmt.Fprintf(console, "%s\n", spec.Alive)
		if spec.Systemd {
			err = bootSystemd(spec) // returns only on failure
		} else {
			err = setup(spec)
		}
	}
	if err != nil {
		fmt.Fprintf(console, "vmrun guest: %v\n", err)
		powerOff(console)
	}
	code := runProgram(spec, console)
	fmt.Fprintf(console, "%s %d\n", spec.Marker, code)
	powerOff(console)
}

func readSpec(p string) (Spec, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return Spec{}, fmt.Errorf("read spec: %w", err)
	}
	return parseSpec(p, b)
}

// parseSpec decodes and checks the spec file name holding b.
func parseSpec(name string, b []byte) (Spec, error) {
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("parse spec %s: %w", name, err)
	}
	if len(s.Args) == 0 || s.Marker == "" {
		return s, fmt.Errorf("spec %s: no program or no marker", name)
	}
	return s, nil
}

// SpecFromInitramfs reads the Spec back out of an initramfs written by
// the runner, as the guest's init would find it (for fakes of qemu).
func SpecFromInitramfs(b []byte) (Spec, error) {
	files, err := ReadInitramfs(bytes.NewReader(b))
	if err != nil {
		return Spec{}, err
	}
	for _, f := range files {
		if f.Name == SpecPath {
			return parseSpec(SpecPath, f.Data)
		}
	}
	return Spec{}, fmt.Errorf("no %s in the initramfs", SpecPath)
}

// rawConsole turns off output post-processing on the console so that the
// program's "\n" is not sent as "\r\n".
func rawConsole(fd int) {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return // no tty: nothing is mangled either
	}
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Iflag &^= unix.ICRNL | unix.IXON
	unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

// setup loads the modules, mounts the shared root and the kernel
// filesystems, brings the network up and switches root.
func setup(s Spec) error {
	for _, m := range s.Modules {
		if err := loadModule(filepath.Join("/", modulesDir, m)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", newRoot, err)
	}
	opts := "trans=virtio,version=9p2000.L,cache=loose,msize=512000"
	if err := mount(HostRootTag, newRoot, "9p", unix.MS_RDONLY, opts); err != nil {
		return err
	}
	mounts := []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666"},
		{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"scratch", GuestScratch, "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	}
	for _, m := range mounts {
		dst := newRoot + m.dst
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", dst, err)
		}
		if err := mount(m.src, dst, m.fstype, m.flags, m.data); err != nil {
			return err
		}
	}
	if err := writableTmp(); err != nil {
		return err
	}
	tmp := newRoot + GuestTmp
	if err := os.Mkdir(tmp, 0o777); err != nil {
		return fmt.Errorf("mkdir %s: %w", tmp, err)
	}
	if err := os.Chmod(tmp, os.ModeSticky|0o777); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	ctl := newRoot + "/sys/fs/cgroup/cgroup.subtree_control"
	if err := os.WriteFile(ctl, []byte("+memory +cpu +pids +io"), 0); err != nil {
		return fmt.Errorf("enable controllers in %s: %w", ctl, err)
	}
	if err := linkUp("lo"); err != nil {
		return err
	}
	if s.Network {
		if err := configureNetwork(); err != nil {
			return err
		}
	}
	if err := switchRoot(newRoot); err != nil {
		return err
	}
	if err := os.Chdir(s.Dir); err != nil {
		return fmt.Errorf("chdir %s in the shared root: %w", s.Dir, err)
	}
	return nil
}

// switchRoot makes dir the root, as switch_root does: the mount moves
// onto / and the process chroots into it. A bare chroot would leave the
// guest's programs "chrooted" in the kernel's eyes (their root is not
// their mount namespace's root), and the kernel refuses a chrooted
// process a user namespace (EPERM from clone/unshare CLONE_NEWUSER), which
// cells and preloaders use. pivot_root cannot be used: the initramfs is
// the rootfs, which cannot be unmounted.
func switchRoot(dir string) error {
	if err := os.Chdir(dir); err != nil {
		return fmt.Errorf("chdir %s: %w", dir, err)
	}
	if err := unix.Mount(dir, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move mount %s onto /: %w", dir, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into %s: %w", dir, err)
	}
	return os.Chdir("/")
}

// writableTmp lays a tmpfs-backed overlay over the shared root's /tmp: the
// host's files there (the test binary that go test left) stay visible, and
// programs that write to /tmp regardless of TMPDIR can.
func writableTmp() error {
	upper := newRoot + GuestScratch + "/vmrun-tmp-upper"
	work := newRoot + GuestScratch + "/vmrun-tmp-work"
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", d, err)
		}
	}
	if err := os.Chmod(upper, os.ModeSticky|0o777); err != nil {
		return fmt.Errorf("chmod %s: %w", upper, err)
	}
	dst := newRoot + "/tmp"
	return mount("overlay", dst, "overlay", unix.MS_NOSUID|unix.MS_NODEV,
		"lowerdir="+dst+",upperdir="+upper+",workdir="+work)
}

func mount(src, dst, fstype string, flags uintptr, data string) error {
	var err error
	// The 9p device may still be probing right after its module loaded.
	for try := 0; try < 50; try++ {
		err = unix.Mount(src, dst, fstype, flags, data)
		if !errors.Is(err, unix.ENOENT) || fstype != "9p" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("mount %s (%s) on %s with %q: %w", src, fstype, dst, data, err)
	}
	return nil
}

func loadModule(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("open module %s: %w", p, err)
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", p, err)
	}
	return nil
}

// runProgram runs the spec's program with the console as its output and
// returns its exit status (128+signal when a signal killed it). As pid 1 it
// also reaps every orphan that is reparented to it meanwhile: an unreaped
// zombie keeps its pids charge in its cgroup.
func runProgram(s Spec, console *os.File) int {
	null, err := os.Open("/dev/null")
	if err != nil {
		fmt.Fprintf(console, "vmrun guest: open /dev/null: %v\n", err)
		return 127
	}
	defer null.Close()
	p, err := os.StartProcess(s.Args[0], s.Args, &os.ProcAttr{
		Dir:   s.Dir,
		Env:   s.Env,
		Files: []*os.File{null, console, console},
	})
	if err != nil {
		fmt.Fprintf(console, "vmrun guest: run %s: %v\n", s.Args[0], err)
		return 127
	}
	if s.Control {
		ctl, err := openControlTTY()
		if err != nil {
			fmt.Fprintf(console, "vmrun guest: signals will not reach %s: %v\n", s.Args[0], err)
		} else {
			go forwardSignals(ctl, p.Pid, console)
		}
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			fmt.Fprintf(console, "vmrun guest: wait for %s: %v\n", s.Args[0], err)
			return 127
		}
		if pid != p.Pid || ws.Stopped() || ws.Continued() {
			continue // an orphan, reaped
		}
		if ws.Signaled() {
			fmt.Fprintf(console, "vmrun guest: %s killed by signal %v\n", s.Args[0], ws.Signal())
			return 128 + int(ws.Signal())
		}
		return ws.ExitStatus()
	}
}

// openControlTTY opens the serial port the host's signals arrive on, raw
// and ignoring modem lines (a serial open otherwise waits for carrier).
func openControlTTY() (*os.File, error) {
	fd, err := unix.Open(GuestControlTTY, unix.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", GuestControlTTY, err)
	}
	if t, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
		t.Iflag &^= unix.ICRNL | unix.IXON | unix.ISTRIP | unix.INLCR | unix.IGNCR
		t.Lflag &^= unix.ECHO | unix.ICANON | unix.ISIG | unix.IEXTEN
		t.Cflag |= unix.CLOCAL | unix.CREAD
		t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
		unix.IoctlSetTermios(fd, unix.TCSETS, t)
	}
	// os.NewFile on a non-blocking fd reads through the runtime's poller.
	return os.NewFile(uintptr(fd), GuestControlTTY), nil
}

// powerOff waits for the console to drain (or the status line could be
// lost), then turns the machine off.
func powerOff(console *os.File) {
	unix.IoctlSetInt(int(console.Fd()), unix.TCSBRK, 1) // tcdrain
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {} // pid 1 must not exit: the kernel would panic
}
