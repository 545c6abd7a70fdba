package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
)

// mountInfo is the cgroup2 mount found in mountinfo: where it is mounted,
// and which cgroup path (relative to the cgroup namespace) is its root.
type mountInfo struct {
	Point string // e.g. /sys/fs/cgroup
	Root  string // e.g. / (or a subtree when bind-mounted)
}

// parseMountinfo finds the first cgroup2 mount in a /proc/<pid>/mountinfo
// (mountsOf).
func parseMountinfo(b []byte) (mountInfo, error) {
	mi, err := mountsOf(b, "cgroup2", 1)
	if err != nil {
		return mountInfo{}, err
	}
	if len(mi) == 0 {
		return mountInfo{}, errNoCgroup2Mount
	}
	return mi[0], nil
}

var errNoCgroup2Mount = errors.New("no cgroup2 mount in mountinfo: mount cgroup2 (e.g. on /sys/fs/cgroup) or run cellgate doctor")

// mountsOf returns the mounts of file system type fstype in a
// /proc/<pid>/mountinfo, in its order, at most max (0: all):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//	(1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
//
// Optional fields (7) end at "-"; (9) is the filesystem type. Paths are
// octal-escaped (\040 for a space).
func mountsOf(b []byte, fstype string, max int) ([]mountInfo, error) {
	var out []mountInfo
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		for i := 6; i+1 < len(f); i++ {
			if f[i] != "-" {
				continue
			}
			if f[i+1] == fstype {
				out = append(out, mountInfo{Point: unescapeMount(f[4]), Root: unescapeMount(f[3])})
				if len(out) == max {
					return out, nil
				}
			}
			break
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// MountPoints returns where file systems of type fstype are mounted, read
// from <procRoot>/self/mountinfo ("" = /proc), octal escapes undone.
func MountPoints(procRoot, fstype string) ([]string, error) {
	mi, err := readMounts(procRoot, fstype, 0, "find the "+fstype+" mounts")
	if err != nil {
		return nil, err
	}
	points := make([]string, len(mi))
	for i, m := range mi {
		points[i] = m.Point
	}
	return points, nil
}

// Mountpoint returns where the cgroup2 hierarchy is mounted, read from
// <procRoot>/self/mountinfo ("" = /proc), octal escapes undone.
func Mountpoint(procRoot string) (string, error) {
	mi, err := readMounts(procRoot, "cgroup2", 1, "find the cgroup2 mount")
	if err != nil {
		return "", err
	}
	if len(mi) == 0 {
		return "", fmt.Errorf("%s: %w", mountinfoPath(procRoot), errNoCgroup2Mount)
	}
	return mi[0].Point, nil
}

// readMounts is mountsOf of <procRoot>/self/mountinfo ("" = /proc); what
// names the search in a read error.
func readMounts(procRoot, fstype string, max int, what string) ([]mountInfo, error) {
	p := mountinfoPath(procRoot)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	mi, err := mountsOf(b, fstype, max)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return mi, nil
}

func mountinfoPath(procRoot string) string {
	if procRoot == "" {
		procRoot = "/proc"
	}
	return path.Join(procRoot, "self/mountinfo")
}

// unescapeMount undoes mountinfo's octal escapes (\040 space, \011 tab,
// \012 newline, \134 backslash).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// parseProcCgroup returns the cgroup v2 path ("0::" line) of a
// /proc/<pid>/cgroup.
func parseProcCgroup(b []byte) (string, error) {
	for line := range bytes.Lines(b) {
		if rest, ok := bytes.CutPrefix(bytes.TrimRight(line, "\n"), []byte("0::")); ok {
			p := string(rest)
			if !strings.HasPrefix(p, "/") {
				return "", fmt.Errorf("cgroup v2 path %q is not absolute", p)
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 (\"0::\") line in /proc/self/cgroup: the process is not in a cgroup v2 hierarchy")
}

// groupDir maps a cgroup path from /proc/self/cgroup onto the mount: the
// path is relative to the cgroup namespace, the mount shows the subtree
// from m.Root.
func groupDir(m mountInfo, cgroupPath string) (string, error) {
	if cgroupPath == "/.." || strings.HasPrefix(cgroupPath, "/../") {
		// The group is above this cgroup namespace's root.
		return "", fmt.Errorf("own cgroup %s is outside this cgroup namespace: use a private cgroup namespace", cgroupPath)
	}
	rel := path.Clean(cgroupPath)
	root := path.Clean(m.Root)
	if root != "/" {
		if rel != root && !strings.HasPrefix(rel, root+"/") {
			return "", fmt.Errorf("own cgroup %s is outside the cgroup2 mount %s (root %s): mount cgroup2 so that it shows the process's group", cgroupPath, m.Point, m.Root)
		}
		rel = strings.TrimPrefix(rel, root)
	}
	return path.Join(m.Point, rel), nil
}
