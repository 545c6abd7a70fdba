package confine

import "path"

// stepKind is one operation of building a cell's filesystem view.
type stepKind uint8

const (
	stepRootTmpfs    stepKind = iota + 1 // an empty tmpfs as the new root
	stepRootBind                         // Source (RootFS) bound as the new root
	stepTmpfs                            // a tmpfs on Target
	stepBind                             // Source bound on Target
	stepSymlink                          // a symlink Target at Link
	stepProc                             // a fresh proc on /proc
	stepRootReadOnly                     // the new root made read-only
	stepHostProc                         // the host's /proc bound read-only (a preloader)
	stepProcReadOnly                     // ProcReadOnly of the cell's /proc made read-only (Root)
)

// step is one operation, with paths as the cell will see them (Apply
// prefixes them with the staging directory).
type step struct {
	kind   stepKind
	source string // host path (bind sources)
	target string // cell path
	bind   Bind   // stepBind
	tmpfs  Tmpfs  // stepTmpfs
	link   Symlink
}

// devNodes are the host's device nodes a cell gets in its /dev.
var devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}

// devLinks are the conventional symlinks of /dev.
var devLinks = []Symlink{
	{Link: "/dev/fd", Target: "/proc/self/fd"},
	{Link: "/dev/stdin", Target: "/proc/self/fd/0"},
	{Link: "/dev/stdout", Target: "/proc/self/fd/1"},
	{Link: "/dev/stderr", Target: "/proc/self/fd/2"},
}

// devSize bounds the cell's /dev tmpfs, which holds only mount points and
// symlinks.
const devSize = 64 << 10

// steps is the order in which the filesystem view is built: the root, /dev
// and its nodes, the private tmpfs mounts, the binds (parents first, so
// that a bind below /tmp lands in the cell's own /tmp), the symlinks, /proc,
// and last the root made read-only. Pure: it is what Apply executes.
func (p *Plan) steps() []step {
	if p.Namespaces&NSMount == 0 {
		return nil
	}
	var s []step
	if p.RootFS != "" {
		s = append(s, step{kind: stepRootBind, source: p.RootFS, target: "/"})
	} else {
		s = append(s, step{kind: stepRootTmpfs, target: "/"})
	}
	s = append(s, step{kind: stepTmpfs, target: "/dev", tmpfs: Tmpfs{Target: "/dev", Size: devSize, Mode: 0o755}})
	for _, n := range devNodes {
		src := path.Join("/dev", n)
		s = append(s, step{kind: stepBind, source: src, target: src, bind: Bind{Source: src, Target: src, Writable: true, Dev: true}})
	}
	for _, l := range devLinks {
		s = append(s, step{kind: stepSymlink, target: l.Link, link: l})
	}
	for _, t := range p.Tmpfs {
		s = append(s, step{kind: stepTmpfs, target: t.Target, tmpfs: t})
	}
	for _, b := range p.Binds {
		s = append(s, step{kind: stepBind, source: b.Source, target: b.Target, bind: b})
	}
	for _, l := range p.Symlinks {
		s = append(s, step{kind: stepSymlink, target: l.Link, link: l})
	}
	if p.Preloader {
		s = append(s, step{kind: stepHostProc, source: "/proc", target: "/proc", bind: Bind{Source: "/proc", Target: "/proc"}})
	} else {
		s = append(s, step{kind: stepProc, target: "/proc"})
		if p.Root {
			s = append(s, step{kind: stepProcReadOnly, target: "/proc"})
		}
	}
	s = append(s, step{kind: stepRootReadOnly, target: "/"})
	return s
}
