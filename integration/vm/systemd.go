package vm

// The guest's systemd mode (vmrun -systemd): instead of running the
// program itself, /init lays a writable overlay over the shared root, installs
// a unit that runs the program, and makes the guest's own systemd pid 1.
// Tests of cellgate's systemd units run there under a real service manager.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// SystemdProgramArg, as vmrun's only argument, makes it the wrapper the
// program's unit starts: it runs the spec's program with the console as
// its output, prints the status line and powers the guest off.
const SystemdProgramArg = "-vmrun-systemd-program"

// Paths in the systemd guest's root.
const (
	systemdInit    = "/lib/systemd/systemd"
	systemdVMRun   = "/usr/lib/vmrun/vmrun"     // a copy of /init, for the unit
	systemdSpec    = "/usr/lib/vmrun/spec.json" // the Spec, for the wrapper
	systemdUnitDir = "/etc/systemd/system"
	lowerRoot      = "/lower"   // the shared root, read-only, in the initramfs
	overlayScratch = "/overlay" // tmpfs with the overlay's upper and work dirs
)

// systemdUnits are written into the guest's /etc/systemd/system: the
// program's service, a target that wants only what it needs (no getty, no
// network), made the default, and a manager config that keeps systemd's
// status lines off the console the runner parses.
var systemdUnits = map[string]string{
	"vmrun-program.service": `[Unit]
Description=vmrun: the program under test
Requires=basic.target
After=basic.target

[Service]
Type=exec
ExecStart=` + systemdVMRun + ` ` + SystemdProgramArg + `
StandardInput=null
StandardOutput=null
StandardError=null
`,
	"vmrun.target": `[Unit]
Description=vmrun: boot to the program under test
Requires=basic.target vmrun-program.service
After=basic.target
AllowIsolate=yes
`,
	// The test binary waits in /tmp (go test leaves it there): /tmp is
	// not emptied at boot, as Debian's tmp.conf would.
	"../../tmpfiles.d/tmp.conf": "d /tmp 1777 root root -\nd /var/tmp 1777 root root -\n",
	"../system.conf.d/vmrun.conf": `[Manager]
ShowStatus=no
LogTarget=kmsg
LogLevel=warning
`,
}

// systemdMasked are units of the shared root that basic.target would pull
// in and that have no business in a test run (timers that may fire at
// once, time sync, which has no network).
var systemdMasked = []string{"timers.target", "systemd-timesyncd.service", "systemd-pstore.service",
	"systemd-udevd.service", "systemd-udev-trigger.service", "systemd-udev-settle.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket"}

// bootSystemd sets the systemd guest up and execs systemd as pid 1. It
// returns only on failure.
func bootSystemd(s Spec) error {
	for _, m := range s.Modules {
		if err := loadModule(filepath.Join("/", modulesDir, m)); err != nil {
			return err
		}
	}
	for _, d := range []string{lowerRoot, overlayScratch, newRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", d, err)
		}
	}
	opts := "trans=virtio,version=9p2000.L,cache=loose,msize=512000"
	if err := mount(HostRootTag, lowerRoot, "9p", unix.MS_RDONLY, opts); err != nil {
		return err
	}
	if err := mount("overlay-scratch", overlayScratch, "tmpfs", 0, "mode=0755"); err != nil {
		return err
	}
	upper, work := overlayScratch+"/upper", overlayScratch+"/work"
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", d, err)
		}
	}
	if err := mount("overlay", newRoot, "overlay", 0, "lowerdir="+lowerRoot+",upperdir="+upper+",workdir="+work); err != nil {
		return err
	}
	self, err := os.ReadFile("/init")
	if err != nil {
		return fmt.Errorf("read /init: %w", err)
	}
	js, err := json.Marshal(s)
	if err != nil {
		return err
	}
	files := map[string][]byte{systemdVMRun: self, systemdSpec: js}
	for name, text := range systemdUnits {
		files[filepath.Join(systemdUnitDir, name)] = []byte(text)
	}
	for p, data := range files {
		dst := newRoot + p
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", filepath.Dir(dst), err)
		}
		mode := os.FileMode(0o644)
		if p == systemdVMRun {
			mode = 0o755
		}
		if err := os.WriteFile(dst, data, mode); err != nil {
			return fmt.Errorf("write %s: %w", dst, err)
		}
	}
	links := map[string]string{"default.target": "vmrun.target"}
	for _, u := range systemdMasked {
		links[u] = "/dev/null"
	}
	for name, target := range links {
		p := newRoot + systemdUnitDir + "/" + name
		os.Remove(p)
		if err := os.Symlink(target, p); err != nil {
			return fmt.Errorf("link %s to %s: %w", p, target, err)
		}
	}
	if err := switchRoot(newRoot); err != nil {
		return err
	}
	return fmt.Errorf("exec %s: %w", systemdInit, unix.Exec(systemdInit, []string{systemdInit}, []string{"container_host=", "TERM=dumb"}))
}

// SystemdProgram is the wrapper vmrun-program.service runs: the spec's
// program with the console as its output, then the status line, then
// power-off. It never returns.
func SystemdProgram() {
	console, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		os.Exit(125) // no console: the host sees no status line and fails the run
	}
	rawConsole(int(console.Fd())) // systemd reset the console's modes at boot
	spec, err := readSpec(systemdSpec)
	if err == nil {
		err = os.MkdirAll(GuestTmp, 0o777)
	}
	if err == nil {
		err = os.Chmod(GuestTmp, os.ModeSticky|0o777)
	}
	if err != nil {
		fmt.Fprintf(console, "vmrun guest: %v\n", err)
		powerOff(console)
	}
	cmd := exec.Command(spec.Args[0], spec.Args[1:]...)
	cmd.Dir, cmd.Env = spec.Dir, spec.Env
	cmd.Stdout, cmd.Stderr = console, console
	code := 0
	err = cmd.Start()
	if err == nil && spec.Control {
		if ctl, cerr := openControlTTY(); cerr != nil {
			fmt.Fprintf(console, "vmrun guest: signals will not reach the program: %v\n", cerr)
		} else {
			go forwardSignals(ctl, cmd.Process.Pid, console)
		}
	}
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		code = 127
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
			if ws, ok := ee.Sys().(unix.WaitStatus); ok && ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
		} else {
			fmt.Fprintf(console, "vmrun guest: run %s: %v\n", spec.Args[0], err)
		}
	}
	fmt.Fprintf(console, "%s %d\n", spec.Marker, code)
	powerOff(console)
}
