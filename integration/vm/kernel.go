package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// kernelMeta is the Debian package that depends on the current generic
// kernel image. Its cloud sibling has no 9p, so it will not do.
const kernelMeta = "linux-image-amd64"

// Kernel is an unpacked Debian kernel image package.
type Kernel struct {
	Package string // e.g. linux-image-6.1.0-48-amd64
	Image   string // path of boot/vmlinuz-*
	Modules string // path of lib/modules/<release>
}

// EnsureKernel returns the kernel cached in cacheDir, fetching and unpacking
// it with apt-get download and dpkg -x the first time. log receives one line
// per slow step.
func EnsureKernel(ctx context.Context, cacheDir string, log io.Writer) (Kernel, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("create cache dir %s: %w", cacheDir, err)
	}
	unlock, err := lockDir(cacheDir)
	if err != nil {
		return Kernel{}, err
	}
	defer unlock()

	current := filepath.Join(cacheDir, "kernel")
	if name, err := os.ReadFile(current); err == nil {
		k, err := findKernel(filepath.Join(cacheDir, strings.TrimSpace(string(name))))
		if err == nil {
			return k, nil
		}
		fmt.Fprintf(log, "vmrun: cached kernel unusable (%v); fetching again\n", err)
	}

	work, err := os.MkdirTemp(cacheDir, "fetch-")
	if err != nil {
		return Kernel{}, fmt.Errorf("create fetch dir in %s: %w", cacheDir, err)
	}
	defer os.RemoveAll(work)
	// The package is asked for again after an update: lists older than
	// the mirror name an image it may no longer serve.
	var pkg string
	if err := withAptUpdate(ctx, log, func() error {
		var err error
		if pkg, err = imagePackage(ctx); err != nil {
			return err
		}
		fmt.Fprintf(log, "vmrun: fetching %s into %s (once)\n", pkg, cacheDir)
		if err := run(ctx, work, log, "apt-get", "download", pkg); err != nil {
			return fmt.Errorf("apt-get download %s: %w", pkg, err)
		}
		return nil
	}); err != nil {
		return Kernel{}, err
	}
	debs, _ := filepath.Glob(filepath.Join(work, pkg+"_*.deb"))
	if len(debs) != 1 {
		return Kernel{}, fmt.Errorf("apt-get download %s: expected one .deb in %s, found %d", pkg, work, len(debs))
	}
	tree := filepath.Join(work, "tree")
	if err := run(ctx, work, log, "dpkg", "-x", debs[0], tree); err != nil {
		return Kernel{}, fmt.Errorf("unpack %s: %w", debs[0], err)
	}
	dest := filepath.Join(cacheDir, pkg)
	if err := os.RemoveAll(dest); err != nil {
		return Kernel{}, fmt.Errorf("remove stale %s: %w", dest, err)
	}
	if err := os.Rename(tree, dest); err != nil {
		return Kernel{}, fmt.Errorf("move kernel into %s: %w", dest, err)
	}
	k, err := findKernel(dest)
	if err != nil {
		return Kernel{}, err
	}
	if err := os.WriteFile(current, []byte(pkg+"\n"), 0o644); err != nil {
		return Kernel{}, fmt.Errorf("write %s: %w", current, err)
	}
	return k, nil
}

// findKernel locates the image and the module tree in an unpacked package.
func findKernel(dir string) (Kernel, error) {
	images, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(images) != 1 {
		return Kernel{}, fmt.Errorf("find kernel image: expected one boot/vmlinuz-* in %s, found %d", dir, len(images))
	}
	release := strings.TrimPrefix(filepath.Base(images[0]), "vmlinuz-")
	for _, lib := range []string{"lib", "usr/lib"} {
		mods := filepath.Join(dir, lib, "modules", release)
		if _, err := os.Stat(filepath.Join(mods, "modules.order")); err == nil {
			return Kernel{Package: filepath.Base(dir), Image: images[0], Modules: mods}, nil
		}
	}
	return Kernel{}, fmt.Errorf("find kernel modules: no lib/modules/%s/modules.order in %s", release, dir)
}

// imagePackage asks apt which image package linux-image-amd64 depends on.
func imagePackage(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", kernelMeta).Output()
	if err == nil && !bytes.Contains(out, []byte("\nDepends:")) {
		err = fmt.Errorf("no Depends field")
	}
	if err != nil {
		return "", fmt.Errorf("apt-cache show %s: %w", kernelMeta, err)
	}
	return parseImageDepends(out)
}

// parseImageDepends picks the linux-image-* package out of an apt-cache show
// record's Depends field.
func parseImageDepends(record []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(record))
	for sc.Scan() {
		deps, ok := strings.CutPrefix(sc.Text(), "Depends:")
		if !ok {
			continue
		}
		for _, d := range strings.Split(deps, ",") {
			name, _, _ := strings.Cut(strings.TrimSpace(d), " ")
			if strings.HasPrefix(name, "linux-image-") {
				return name, nil
			}
		}
	}
	return "", fmt.Errorf("no linux-image-* in the Depends of %s", kernelMeta)
}

// withAptUpdate runs f, and when it fails runs apt-get update once and
// retries: a fresh machine has no package lists.
func withAptUpdate(ctx context.Context, log io.Writer, f func() error) error {
	err := f()
	if err == nil {
		return nil
	}
	fmt.Fprintf(log, "vmrun: %v; running apt-get update and retrying\n", err)
	if uerr := run(ctx, "", log, "apt-get", "update"); uerr != nil {
		return fmt.Errorf("%w (and apt-get update failed: %v)", err, uerr)
	}
	return f()
}

// run runs a command in dir with its output sent to log.
func run(ctx context.Context, dir string, log io.Writer, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

// lockDir takes an exclusive lock on dir/lock so that concurrent runners
// fetch the kernel once.
func lockDir(dir string) (func(), error) {
	p := filepath.Join(dir, "lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", p, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	return func() { f.Close() }, nil
}
