package vm

import (
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// QEMU user networking's defaults: the guest is 10.0.2.15/24.
var (
	guestAddr = netip.MustParseAddr("10.0.2.15")
	guestMask = netip.MustParseAddr("255.255.255.0")
)

// linkUp sets IFF_UP on an interface.
func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring %s up: socket: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring %s up: get flags: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring %s up: set flags: %w", name, err)
	}
	return nil
}

// configureNetwork gives the virtio-net interface QEMU user networking's
// guest address and brings it up. The host side (10.0.2.2) is on the same
// /24, so forwarded connections need no route.
func configureNetwork() error {
	name, err := netInterface(newRoot + "/sys/class/net")
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("configure %s: socket: %w", name, err)
	}
	defer unix.Close(fd)
	for _, step := range []struct {
		req  uint
		addr netip.Addr
	}{{unix.SIOCSIFADDR, guestAddr}, {unix.SIOCSIFNETMASK, guestMask}} {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return fmt.Errorf("configure %s: %w", name, err)
		}
		if err := ifr.SetInet4Addr(step.addr.AsSlice()); err != nil {
			return fmt.Errorf("configure %s: %w", name, err)
		}
		if err := unix.IoctlIfreq(fd, step.req, ifr); err != nil {
			return fmt.Errorf("configure %s: set %s: %w", name, step.addr, err)
		}
	}
	return linkUp(name)
}

// netInterface returns the one interface under dir that is not loopback.
func netInterface(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("list network interfaces in %s: %w", dir, err)
	}
	for _, e := range ents {
		if e.Name() != "lo" {
			return e.Name(), nil
		}
	}
	return "", fmt.Errorf("no network interface in %s besides lo (is virtio_net loaded?)", dir)
}
