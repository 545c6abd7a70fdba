package main

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cellgate/cellgate/policy"
)

// cellgate run confines its command as a cgi route's cells are confined by
// default (namespaces, a read-only view, private tmpfs, seccomp, rlimits).
// Each flag below is one policy key of a route (examples/policy.yaml) and
// relaxes one confinement the same way; the flags fill a
// policy.Confinement, which routeConfinement turns into the cell's plan as
// it does for a route.

// addConfineFlags adds the confinement flags to fs, filling c.
func addConfineFlags(fs *flag.FlagSet, c *policy.Confinement) {
	fs.Var(&choiceFlag{v: &c.HostNetwork, off: "none", on: "host"}, "network", "`none`: a network namespace of the cell's own with only loopback; host: the host's network (policy key network)")
	fs.Var(&choiceFlag{v: &c.HostFilesystem, off: "confined", on: "host"}, "filesystem", "`confined`: a read-only view of --system-dirs and the command's directory, private /tmp, /var/tmp, /dev/shm and /proc; host: the host's filesystem (policy key filesystem)")
	fs.Var(&choiceFlag{v: &c.NoSeccomp, off: "default", on: "off"}, "seccomp", "`default`: the system call deny list (EPERM); off: none (policy key seccomp)")
	fs.Var((*namespacesFlag)(&c.HostNamespaces), "host-namespaces", "`pid,ipc,uts,user`: namespaces shared with the host (policy key host_namespaces; user: --user root is the host's root)")
	fs.Var((*dirsFlag)(&c.SystemDirs), "system-dirs", "host `directories` shown read-only, comma-separated (default /usr,/bin,/sbin,/lib*,/etc; policy key system_dirs)")
	fs.Var((*mountsFlag)(&c.Mounts), "mount", "`SOURCE[:TARGET][:rw]`: bind a host path into the view, read-only unless :rw; repeatable (policy key mounts)")
	fs.Func("rootfs", "a `directory` as the cell's root instead of --system-dirs (policy key rootfs)", func(s string) error {
		if !filepath.IsAbs(s) || filepath.Clean(s) != s {
			return errors.New("not an absolute clean path")
		}
		c.RootFS = s
		return nil
	})
	fs.TextVar((*byteSize)(&c.TmpfsSize), "tmpfs-size", byteSize(c.TmpfsSize), "`size` of each private tmpfs, charged to the cell's memory; 0 = 64Mi (policy key tmpfs_size)")
	fs.Var((*int64Flag)(&c.NoFile), "nofile", "`n`: RLIMIT_NOFILE of the command, 0 = 1024 (policy key nofile)")
	fs.Var(&choiceFlag{v: &c.HugePages, off: "off", on: "system"}, "huge-pages", "`off`: no transparent huge pages for the command; system: as the system sets them (policy key huge_pages)")
}

// checkConfine refuses what the policy refuses of the same keys: values
// out of range, and flags that have no effect with another one. set holds
// the names of the flags given.
func checkConfine(c policy.Confinement, set map[string]bool) error {
	if c.TmpfsSize != 0 && c.TmpfsSize < 4096 {
		return fmt.Errorf("--tmpfs-size %s: below 4Ki", policy.FormatBytes(c.TmpfsSize))
	}
	if c.TmpfsSize > policy.MaxSize {
		return fmt.Errorf("--tmpfs-size %s: above %s, the most a size may be (as the policy's tmpfs_size)", policy.FormatBytes(c.TmpfsSize), policy.FormatBytes(policy.MaxSize))
	}
	if c.NoFile != 0 && (c.NoFile < 16 || c.NoFile > math.MaxInt32) {
		return fmt.Errorf("--nofile %d: outside 16..%d", c.NoFile, math.MaxInt32)
	}
	if c.HostFilesystem {
		for _, f := range []string{"system-dirs", "mount", "rootfs", "tmpfs-size"} {
			if set[f] {
				return fmt.Errorf("--%s has no effect with --filesystem host: drop one of them", f)
			}
		}
	}
	if set["system-dirs"] && c.RootFS != "" {
		return errors.New("--system-dirs has no effect with --rootfs: drop one of them")
	}
	return nil
}

// choiceFlag is a policy key with two words: off (the default,
// confined) and on (relaxed).
type choiceFlag struct {
	v       *bool
	off, on string
}

func (f *choiceFlag) String() string {
	if f.v != nil && *f.v {
		return f.on
	}
	return f.off
}

func (f *choiceFlag) Set(s string) error {
	switch s {
	case f.off:
		*f.v = false
	case f.on:
		*f.v = true
	default:
		return fmt.Errorf("want %s or %s", f.off, f.on)
	}
	return nil
}

// namespacesFlag is host_namespaces: pid, ipc, uts and user, each once.
type namespacesFlag []string

func (f *namespacesFlag) String() string { return strings.Join(*f, ",") }
func (f *namespacesFlag) Set(s string) error {
	*f = nil
	for _, n := range strings.Split(s, ",") {
		switch {
		case !slices.Contains([]string{"pid", "ipc", "uts", policy.HostUserNamespace}, n):
			return fmt.Errorf("%q: not a namespace cells may share (pid, ipc, uts or user; --network host and --filesystem host are flags of their own)", n)
		case slices.Contains(*f, n):
			return fmt.Errorf("%q listed twice", n)
		}
		*f = append(*f, n)
	}
	return nil
}

// dirsFlag is system_dirs: absolute clean paths, comma-separated.
type dirsFlag []string

func (f *dirsFlag) String() string { return strings.Join(*f, ",") }
func (f *dirsFlag) Set(s string) error {
	*f = nil
	for _, d := range strings.Split(s, ",") {
		if !filepath.IsAbs(d) || filepath.Clean(d) != d {
			return fmt.Errorf("%q: not an absolute clean path", d)
		}
		*f = append(*f, d)
	}
	return nil
}

// mountsFlag is mounts: SOURCE[:TARGET][:rw|:ro], repeatable.
type mountsFlag []policy.Mount

func (f *mountsFlag) String() string {
	parts := make([]string, len(*f))
	for i, m := range *f {
		parts[i] = m.Source + ":" + m.Target + ":" + map[bool]string{false: "ro", true: "rw"}[m.Writable]
	}
	return strings.Join(parts, " ")
}

func (f *mountsFlag) Set(s string) error {
	parts := strings.Split(s, ":")
	m := policy.Mount{Source: parts[0]}
	if last := parts[len(parts)-1]; len(parts) > 1 && (last == "rw" || last == "ro") {
		m.Writable = last == "rw"
		parts = parts[:len(parts)-1]
	}
	switch len(parts) {
	case 1:
		m.Target = m.Source
	case 2:
		m.Target = parts[1]
	default:
		return errors.New("want SOURCE[:TARGET][:rw]")
	}
	for _, p := range []string{m.Source, m.Target} {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return fmt.Errorf("%q: not an absolute clean path", p)
		}
	}
	*f = append(*f, m)
	return nil
}
