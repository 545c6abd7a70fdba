package confine

import (
	"errors"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// finish ends what the program left behind before the init reports, so
// that the report means "the request's part of the cell is over" and the
// Runner can answer without waiting for the init's exit (whose namespace
// teardown it leaves to the background):
//
//   - with a PID namespace of its own, every other process of the
//     namespace is killed (kill(-1) from its PID 1 reaches exactly them)
//     and reaped: a daemon the program left is gone when the report is
//     sent, as it is when the cell empties;
//   - with a mount namespace of its own, the files of the private tmpfs
//     mounts are removed: their pages are uncharged from the cell (and its
//     tenant) now, not when the mount namespace is torn down.
//
// Without a PID namespace the Runner kills what is left through the
// cell's cgroup.kill; files still open by such a process stay until the
// namespace goes.
func finish(p *Plan) {
	if p.Namespaces&NSPID != 0 && os.Getpid() == 1 {
		unix.Kill(-1, unix.SIGKILL)
		for {
			_, err := unix.Wait4(-1, nil, 0, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil { // ECHILD: every child is reaped
				break
			}
		}
	}
	if p.Namespaces&NSMount != 0 {
		for _, t := range p.Tmpfs {
			emptyDir(t.Target)
		}
	}
}

// emptyDir removes what dir holds, not dir itself, and never crosses into
// another mount below it (a bind of the host's under /tmp keeps its
// files), as the C init's wipe does. Errors are ignored: what cannot be
// removed goes with the mount namespace.
func emptyDir(dir string) {
	if tmpfsEmpty(dir) {
		return
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		unix.Close(fd)
		return
	}
	emptyAt(fd, st.Dev, wipeDepth)
}

// tmpfsEmpty reports whether dir is a tmpfs that holds nothing but its
// root, from one statfs instead of a walk: tmpfs counts an inode for each
// file, directory, symlink, device node and whiteout (its root's included)
// before it becomes visible, one more per hard link, and (from 6.6) the
// space of extended attributes, and frees each only once its last link
// and last open are gone. Every error is towards a walk: a file still open
// somewhere (with a PID namespace every process of the cell is dead by
// now) keeps its count. A tmpfs without an inode limit (Files 0), or
// another filesystem, is not known to be empty.
func tmpfsEmpty(dir string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(dir, &fs) == nil && fs.Type == unix.TMPFS_MAGIC && fs.Files > 0 && fs.Files-fs.Ffree == 1
}

// wipeDepth bounds the directories emptyAt holds open at once; what lies
// deeper goes with the mount namespace.
const wipeDepth = 32

// take makes the directory name (in dfd) root's, mode 0700, so that the
// wipe may open it and remove what it holds with CAP_CHOWN alone: the
// daemon's bounding set (the systemd unit's, the pod's) has neither
// CAP_DAC_OVERRIDE nor CAP_FOWNER, and the program may have closed the
// directory to others (mkdtemp's 0700), made it read-only, or made it
// sticky over files of its own. Only the program's directories (root's
// are the view's own, leading to a mount below, and keep their mode).
// Through an O_PATH descriptor opened with O_NOFOLLOW: a directory
// swapped for a symlink meanwhile is not opened, and nothing a link names
// is changed (cellgate-init's take).
func take(dfd int, name string) {
	fd, err := unix.Openat(dfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	if unix.Fchownat(fd, "", 0, 0, unix.AT_EMPTY_PATH) == nil {
		unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), 0o700)
	}
	unix.Close(fd)
}

// emptyAt removes the entries of the directory dfd that lie on device dev,
// depth first, and closes dfd. It names entries only relative to directory
// fds it opened itself with O_NOFOLLOW, never by path: a process outside
// the cell that holds a directory fd of the tmpfs (passed to it over a
// socket) may swap a directory for a symlink while the walk runs, and a
// path walked again from the mount point would then lead the init, root,
// into whatever the link names. A swapped entry is removed as what it now
// is, or skipped.
func emptyAt(dfd int, dev uint64, depth int) {
	d := os.NewFile(uintptr(dfd), "")
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	for _, n := range names {
		var st unix.Stat_t
		if unix.Fstatat(dfd, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Dev != dev {
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			unix.Unlinkat(dfd, n, 0)
			continue
		}
		if depth > 0 {
			if st.Uid != 0 {
				take(dfd, n)
			}
			if sub, err := unix.Openat(dfd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
				if unix.Fstat(sub, &st) == nil && st.Dev == dev {
					emptyAt(sub, dev, depth-1)
				} else {
					unix.Close(sub)
				}
			}
		}
		unix.Unlinkat(dfd, n, unix.AT_REMOVEDIR)
	}
}
