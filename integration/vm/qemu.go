package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// QEMUBinary is the emulator the runner boots.
const QEMUBinary = "qemu-system-x86_64"

// EnsureQEMU returns the path of qemu-system-x86_64, installing Debian's
// qemu-system-x86 (without recommends) when it is missing and the user is
// root. Otherwise the error says what to install.
func EnsureQEMU(ctx context.Context, log io.Writer) (string, error) {
	if p, err := exec.LookPath(QEMUBinary); err == nil {
		return p, nil
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("%s not found: install it with `sudo apt-get install --no-install-recommends qemu-system-x86`", QEMUBinary)
	}
	fmt.Fprintf(log, "vmrun: %s missing; installing qemu-system-x86 with apt-get\n", QEMUBinary)
	if err := withAptUpdate(ctx, log, func() error {
		return run(ctx, "", log, "apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", "--no-install-recommends", "qemu-system-x86")
	}); err != nil {
		return "", fmt.Errorf("install qemu-system-x86: %w", err)
	}
	p, err := exec.LookPath(QEMUBinary)
	if err != nil {
		return "", fmt.Errorf("after installing qemu-system-x86: %w", err)
	}
	return p, nil
}

// Forward is a host TCP address forwarded to a guest port.
type Forward struct {
	HostAddr  string // IP the host listens on, e.g. 127.0.0.1
	HostPort  int
	GuestPort int
}

// ParseForward parses HOSTIP:HOSTPORT:GUESTPORT.
func ParseForward(s string) (Forward, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return Forward{}, fmt.Errorf("parse forward %q: want HOSTIP:HOSTPORT:GUESTPORT, e.g. 127.0.0.1:8080:8080", s)
	}
	var f Forward
	f.HostAddr = parts[0]
	if _, err := fmt.Sscanf(parts[1], "%d", &f.HostPort); err != nil || f.HostPort < 1 || f.HostPort > 65535 {
		return Forward{}, fmt.Errorf("parse forward %q: host port %q is not 1-65535", s, parts[1])
	}
	if _, err := fmt.Sscanf(parts[2], "%d", &f.GuestPort); err != nil || f.GuestPort < 1 || f.GuestPort > 65535 {
		return Forward{}, fmt.Errorf("parse forward %q: guest port %q is not 1-65535", s, parts[2])
	}
	if f.HostAddr == "" {
		return Forward{}, errors.New("parse forward: empty host address (use 127.0.0.1)")
	}
	return f, nil
}

// Machine is what one boot needs.
type Machine struct {
	QEMU      string
	Kernel    string // path of the kernel image
	Initramfs string
	MemSize   string // qemu -m value, e.g. 2G
	CPUs      int
	KVM       bool
	Forwards  []Forward
	Verbose   bool   // show the kernel's boot messages
	Control   string // host path of the control socket (second serial port), or ""
}

// HostRootTag is the 9p mount tag of the shared host root.
const HostRootTag = "hostroot"

// Command returns qemu's argument list (without the binary) for m.
func (m Machine) Command() []string {
	loglevel := "1" // only emergencies (a panic) reach the console
	if m.Verbose {
		loglevel = "7"
	}
	// no_timer_check: the kernel's check that the IO-APIC delivers timer
	// interrupts counts them over a delay loop; an emulated CPU on a busy
	// host sees too few, and the boot panics ("IO-APIC + timer doesn't
	// work!") before the program runs. Every interrupt source is qemu's.
	args := []string{
		"-nodefaults", "-no-user-config", "-no-reboot",
		"-machine", "pc",
		"-display", "none",
		"-m", m.MemSize,
		"-smp", fmt.Sprint(m.CPUs),
		"-kernel", m.Kernel,
		"-initrd", m.Initramfs,
		"-append", "console=ttyS0 panic=-1 oops=panic no_timer_check loglevel=" + loglevel + " rdinit=/init",
		"-chardev", "stdio,id=con,signal=off",
		"-serial", "chardev:con",
		"-fsdev", "local,id=hr,path=/,security_model=none,readonly=on,multidevs=remap",
		"-device", "virtio-9p-pci,fsdev=hr,mount_tag=" + HostRootTag,
	}
	if m.KVM {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg,thread=multi", "-cpu", "max")
	}
	if m.Control != "" {
		args = append(args,
			"-chardev", "socket,id=ctl,server=on,wait=off,path="+strings.ReplaceAll(m.Control, ",", ",,"),
			"-serial", "chardev:ctl")
	}
	if len(m.Forwards) > 0 {
		nd := "user,id=net0,restrict=on"
		for _, f := range m.Forwards {
			nd += fmt.Sprintf(",hostfwd=tcp:%s:%d-:%d", f.HostAddr, f.HostPort, f.GuestPort)
		}
		args = append(args, "-netdev", nd, "-device", "virtio-net-pci,netdev=net0,romfile=")
	}
	return args
}
