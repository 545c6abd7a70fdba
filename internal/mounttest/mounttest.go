// Package mounttest makes the host mounts the tests of a cell's view
// need: a file system mounted below a directory a route binds, and a
// rootfs made as a chroot is made. It needs root; every mount it makes
// ends with the test.
package mounttest

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Below mounts a tmpfs at dir/sub, read-write and with neither nosuid nor
// nodev, holding the null device as "null" and an empty file "f", both
// mode 0666.
func Below(t testing.TB, dir string) {
	t.Helper()
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("cellgate-test", sub, "tmpfs", 0, "mode=0777"); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v", sub, err)
	}
	t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
	if err := unix.Mknod(filepath.Join(sub, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "f"), nil, 0o666); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"null", "f"} { // whatever the umask
		if err := os.Chmod(filepath.Join(sub, f), 0o666); err != nil {
			t.Fatal(err)
		}
	}
}

// Chroot makes dir a rootfs as a chroot is made: the mount points a cell
// needs (/tmp, /var/tmp, /dev, /proc) and /etc, the host's /usr bound at
// /usr, and the host's other system directories as the host has them,
// its symlinks into /usr recreated and its directories bound.
func Chroot(t testing.TB, dir string) {
	t.Helper()
	for _, d := range []string{"tmp", "var/tmp", "dev", "proc", "etc", "usr"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bind := func(src string) {
		at := filepath.Join(dir, src)
		if err := unix.Mount(src, at, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			t.Fatalf("bind %s on %s: %v", src, at, err)
		}
		t.Cleanup(func() { unix.Unmount(at, unix.MNT_DETACH) })
	}
	bind("/usr")
	for _, d := range []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"} {
		fi, err := os.Lstat(d)
		switch {
		case err != nil:
			continue // not on this host
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(d)
			if err == nil {
				err = os.Symlink(target, filepath.Join(dir, d))
			}
			if err != nil {
				t.Fatal(err)
			}
		case fi.IsDir():
			if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
				t.Fatal(err)
			}
			bind(d)
		}
	}
}
