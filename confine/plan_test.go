package confine

import (
	"io/fs"
	"path"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeFS is a host of directories, files and symlinks.
type fakeFS map[string]string // path -> "dir", "file" or "link:TARGET"

type fakeInfo struct {
	name string
	mode fs.FileMode
}

func (f fakeInfo) Name() string       { return f.name }
func (f fakeInfo) Size() int64        { return 0 }
func (f fakeInfo) Mode() fs.FileMode  { return f.mode }
func (f fakeInfo) ModTime() time.Time { return time.Time{} }
func (f fakeInfo) IsDir() bool        { return f.mode.IsDir() }
func (f fakeInfo) Sys() any           { return nil }

func (f fakeFS) Lstat(p string) (fs.FileInfo, error) {
	switch v := f[p]; {
	case v == "dir":
		return fakeInfo{p, fs.ModeDir | 0o755}, nil
	case v == "file":
		return fakeInfo{p, 0o644}, nil
	case strings.HasPrefix(v, "link:"):
		return fakeInfo{p, fs.ModeSymlink | 0o777}, nil
	}
	return nil, &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
}

func (f fakeFS) Readlink(p string) (string, error) {
	if v, ok := strings.CutPrefix(f[p], "link:"); ok {
		return v, nil
	}
	return "", &fs.PathError{Op: "readlink", Path: p, Err: fs.ErrInvalid}
}

// SameFile compares the paths with every symlink on them followed (a link
// whose target is absolute or relative to its directory).
func (f fakeFS) SameFile(a, b string) bool {
	ra, oka := f.resolve(a)
	rb, okb := f.resolve(b)
	return oka && okb && ra == rb
}

func (f fakeFS) EvalSymlinks(p string) (string, error) {
	r, ok := f.resolve(p)
	if !ok {
		return "", &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
	}
	return r, nil
}

func (f fakeFS) resolve(p string) (string, bool) {
	for hops := 0; hops < 40; hops++ {
		link := ""
		for q := p; q != "/" && q != "."; q = path.Dir(q) {
			if strings.HasPrefix(f[q], "link:") {
				link = q
			}
		}
		if link == "" {
			_, ok := f[p]
			return p, ok || p == "/"
		}
		target, _ := f.Readlink(link)
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(link), target)
		}
		p = path.Join(target, strings.TrimPrefix(p, link))
	}
	return "", false
}

// debian is a usrmerged Debian 12 host.
var debian = fakeFS{
	"/usr": "dir", "/etc": "dir", "/bin": "link:usr/bin", "/sbin": "link:usr/sbin",
	"/lib": "link:usr/lib", "/lib64": "link:usr/lib64", "/srv/cgi": "dir", "/srv/data": "dir",
	"/srv/rootfs": "dir", "/srv/file": "file",
	"/etc/cellgate/policy.yaml": "file", "/etc/cellgate/link.yaml": "link:policy.yaml", "/srv/cgi/tls.key": "file",
	"/srv/rootfs/etc/policy.yaml": "file", "/srv/data/policy.yaml": "file", "/srv/data/ro": "dir", "/srv/roalias": "link:data/ro",
	"/srv/alias": "link:data", "/srv/confalias": "link:/etc/cellgate", "/etc/cellgate": "dir",
	// the rootfs's mount points
	"/srv/rootfs/dev": "dir", "/srv/rootfs/proc": "dir", "/srv/rootfs/tmp": "dir", "/srv/rootfs/var/tmp": "dir", "/srv/rootfs/srv/cgi": "dir",
}

func TestBuild(t *testing.T) {
	tmpfs := func(size int64) []Tmpfs {
		return []Tmpfs{{"/tmp", size, 0o1777}, {"/var/tmp", size, 0o1777}, {"/dev/shm", size, 0o1777}}
	}
	debianLinks := []Symlink{{"/bin", "usr/bin"}, {"/sbin", "usr/sbin"}, {"/lib", "usr/lib"}, {"/lib64", "usr/lib64"}}
	tests := []struct {
		name    string
		opts    Options
		want    *Plan
		wantErr string
	}{
		{
			name: "defaults: every namespace, system dirs, the program dir, seccomp",
			opts: Options{Programs: "/srv/cgi"},
			want: &Plan{
				Namespaces: AllNamespaces, Resident: true,
				Binds:    []Bind{{Source: "/etc", Target: "/etc"}, {Source: "/usr", Target: "/usr"}, {Source: "/srv/cgi", Target: "/srv/cgi"}},
				Symlinks: debianLinks,
				Tmpfs:    tmpfs(DefaultTmpfsSize),
				Hostname: DefaultHostname, Seccomp: true, NoFile: DefaultNoFile,
			},
		},
		{
			name: "a program under a system dir is not bound again",
			opts: Options{Programs: "/usr/lib/cgi-bin", SystemDirs: []string{"/usr"}},
			want: &Plan{
				Namespaces: AllNamespaces, Resident: true, Binds: []Bind{{Source: "/usr", Target: "/usr"}},
				Tmpfs: tmpfs(DefaultTmpfsSize), Hostname: DefaultHostname, Seccomp: true, NoFile: DefaultNoFile,
			},
		},
		{
			name: "a program under a symlinked system dir is not bound over the symlink",
			opts: Options{Programs: "/bin"},
			want: &Plan{
				Namespaces: AllNamespaces, Resident: true, Binds: []Bind{{Source: "/etc", Target: "/etc"}, {Source: "/usr", Target: "/usr"}},
				Symlinks: debianLinks, Tmpfs: tmpfs(DefaultTmpfsSize), Hostname: DefaultHostname, Seccomp: true, NoFile: DefaultNoFile,
			},
		},
		{
			name: "relaxed: host network and pid, no seccomp, own sizes and mounts",
			opts: Options{
				Share: NSNet | NSPID, NoSeccomp: true, TmpfsSize: 1 << 20, NoFile: 64, SystemDirs: []string{"/usr", "/opt"},
				Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}, {Source: "/srv/file", Target: "/conf/f"}},
			},
			want: &Plan{
				Namespaces: NSMount | NSIPC | NSUTS,
				Binds:      []Bind{{Source: "/srv/data", Target: "/data", Writable: true}, {Source: "/usr", Target: "/usr"}, {Source: "/srv/file", Target: "/conf/f"}},
				Tmpfs:      tmpfs(1 << 20), Hostname: DefaultHostname, NoFile: 64,
			},
		},
		{
			name: "rootfs instead of system dirs",
			opts: Options{RootFS: "/srv/rootfs", Programs: "/srv/cgi"},
			want: &Plan{
				Namespaces: AllNamespaces, Resident: true, RootFS: "/srv/rootfs", Binds: []Bind{{Source: "/srv/cgi", Target: "/srv/cgi"}},
				Tmpfs: tmpfs(DefaultTmpfsSize), Hostname: DefaultHostname, Seccomp: true, NoFile: DefaultNoFile,
			},
		},
		{
			name: "host filesystem: no view at all",
			opts: Options{Share: NSMount | NSUTS, Programs: "/srv/cgi"},
			want: &Plan{Namespaces: NSPID | NSIPC | NSNet, Resident: true, Seccomp: true, NoFile: DefaultNoFile},
		},
		{
			// Root's /proc is read-only in a view of the cell's own; with
			// the host's filesystem there is none.
			name: "host filesystem, root",
			opts: Options{Share: NSMount, Programs: "/srv/cgi", Root: true},
			want: &Plan{Namespaces: NSPID | NSIPC | NSNet | NSUTS, Resident: true, Seccomp: true, NoFile: DefaultNoFile, Hostname: DefaultHostname},
		},
		{
			name: "a fork route: its app dir and its interpreter's dir outside the system dirs",
			opts: Options{Programs: "/srv/cgi", Interpreter: "/srv/data/python3"},
			want: &Plan{
				Namespaces: AllNamespaces, Resident: true,
				Binds: []Bind{{Source: "/etc", Target: "/etc"}, {Source: "/usr", Target: "/usr"},
					{Source: "/srv/cgi", Target: "/srv/cgi"}, {Source: "/srv/data", Target: "/srv/data"}},
				Symlinks: debianLinks, Tmpfs: tmpfs(DefaultTmpfsSize), Hostname: DefaultHostname, Seccomp: true, NoFile: DefaultNoFile,
			},
		},
		{name: "host filesystem with mounts", opts: Options{Share: NSMount, Mounts: []Bind{{Source: "/srv/data", Target: "/data"}}}, wantErr: "need the cell's own filesystem view"},
		{name: "mount over /tmp", opts: Options{Mounts: []Bind{{Source: "/srv/data", Target: "/tmp"}}}, wantErr: "the cell's own /tmp"},
		{name: "mount over the root", opts: Options{Mounts: []Bind{{Source: "/srv/data", Target: "/"}}}, wantErr: "the cell's own /"},
		{name: "mount under /proc", opts: Options{Mounts: []Bind{{Source: "/srv/data", Target: "/proc/x"}}}, wantErr: "under the cell's own /proc"},
		{name: "relative mount source", opts: Options{Mounts: []Bind{{Source: "data", Target: "/data"}}}, wantErr: `mount source "data"`},
		{name: "unclean mount target", opts: Options{Mounts: []Bind{{Source: "/srv/data", Target: "/data/../etc"}}}, wantErr: "not an absolute clean path"},
		{
			name: "a mount below a read-only mount",
			opts: Options{Mounts: []Bind{{Source: "/srv/data", Target: "/app"}, {Source: "/srv/file", Target: "/app/data", Writable: true}}},
			want: &Plan{
				Namespaces: AllNamespaces, Resident: true,
				Binds: []Bind{{Source: "/srv/data", Target: "/app"}, {Source: "/etc", Target: "/etc"}, {Source: "/usr", Target: "/usr"},
					{Source: "/srv/file", Target: "/app/data", Writable: true}},
				Symlinks: debianLinks, Tmpfs: tmpfs(DefaultTmpfsSize), Hostname: DefaultHostname, Seccomp: true, NoFile: DefaultNoFile,
			},
		},
		{name: "a mount below a writable mount", opts: Options{Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}, {Source: "/srv/file", Target: "/data/a/bin"}}},
			wantErr: "mount target /data/a/bin lies in the writable mount /data"},
		{name: "the program dir below a writable mount", opts: Options{Programs: "/srv/data/cgi", Mounts: []Bind{{Source: "/srv/data", Target: "/srv/data", Writable: true}}},
			wantErr: "mount target /srv/data/cgi lies in the writable mount /srv/data"},
		// The init opens a source by its host path, following links: a
		// cell that may write the writable mount's source could replace
		// what lies in it with a symlink to / for the next cells.
		{name: "a mount source in a writable mount's source", opts: Options{Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}, {Source: "/srv/data/ro", Target: "/ro"}}},
			wantErr: "mount source /srv/data/ro lies in /srv/data, the source of the writable mount /data"},
		{name: "the program dir in a writable mount's source", opts: Options{Programs: "/srv/data/cgi", Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}}},
			wantErr: "mount source /srv/data/cgi lies in /srv/data, the source of the writable mount /data"},
		{name: "a writable source in another's", opts: Options{Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}, {Source: "/srv/data/w", Target: "/w", Writable: true}}},
			wantErr: "the writable mount's source /srv/data/w lies in /srv/data, the source of the writable mount /data"},
		{name: "a mount source in a writable mount's source through a symlink", opts: Options{Mounts: []Bind{{Source: "/srv/alias", Target: "/data", Writable: true}, {Source: "/srv/data/ro", Target: "/ro"}}},
			wantErr: "mount source /srv/data/ro lies in /srv/alias, the source of the writable mount /data"},
		{name: "a mount source that links into a writable mount's source", opts: Options{Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}, {Source: "/srv/roalias", Target: "/ro"}}},
			wantErr: "mount source /srv/roalias lies in /srv/data, the source of the writable mount /data"},
		{name: "the program dir through a link into a writable mount's source", opts: Options{Programs: "/srv/roalias", Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}}},
			wantErr: "mount source /srv/roalias lies in /srv/data"},
		{name: "a system dir in a writable mount's source", opts: Options{SystemDirs: []string{"/usr"}, Mounts: []Bind{{Source: "/", Target: "/host", Writable: true}}},
			wantErr: "mount source /usr lies in /, the source of the writable mount /host"},
		{name: "the rootfs in a writable mount's source", opts: Options{RootFS: "/srv/rootfs", Mounts: []Bind{{Source: "/srv", Target: "/srv/cgi", Writable: true}}},
			wantErr: "rootfs /srv/rootfs lies in /srv, the source of the writable mount /srv/cgi"},
		{
			name: "the daemon's files covered where the view shows them",
			opts: Options{Programs: "/srv/cgi", Hidden: []string{"/etc/cellgate/policy.yaml", "/srv/cgi/tls.key", "/etc/cellgate/link.yaml", "/etc/none", "/srv/file"}},
			want: &Plan{
				Namespaces: AllNamespaces, Resident: true,
				Binds: []Bind{{Source: "/etc", Target: "/etc"}, {Source: "/usr", Target: "/usr"}, {Source: "/srv/cgi", Target: "/srv/cgi"},
					{Source: "/dev/null", Target: "/etc/cellgate/policy.yaml", Mask: true, Hides: "/etc/cellgate/policy.yaml"},
					{Source: "/dev/null", Target: "/srv/cgi/tls.key", Mask: true, Hides: "/srv/cgi/tls.key"}},
				Symlinks: debianLinks, Tmpfs: tmpfs(DefaultTmpfsSize), Hostname: DefaultHostname, Seccomp: true, NoFile: DefaultNoFile,
			},
		},
		{
			name: "a daemon's file in the rootfs",
			opts: Options{RootFS: "/srv/rootfs", Hidden: []string{"/srv/rootfs/etc/policy.yaml"}},
			want: &Plan{
				Namespaces: AllNamespaces, Resident: true, RootFS: "/srv/rootfs", Binds: []Bind{{Source: "/dev/null", Target: "/etc/policy.yaml", Mask: true, Hides: "/srv/rootfs/etc/policy.yaml"}},
				Tmpfs: tmpfs(DefaultTmpfsSize), Hostname: DefaultHostname, Seccomp: true, NoFile: DefaultNoFile,
			},
		},
		{name: "a daemon's file in a writable mount", opts: Options{Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}}, Hidden: []string{"/srv/data/policy.yaml"}},
			wantErr: "/srv/data/policy.yaml lies in the writable mount of /srv/data (at /data)"},
		{name: "a daemon's file in a writable mount through a symlink", opts: Options{Mounts: []Bind{{Source: "/srv/alias", Target: "/data", Writable: true}}, Hidden: []string{"/srv/data/policy.yaml"}},
			wantErr: "/srv/data/policy.yaml lies in the writable mount of /srv/alias (at /data)"},
		{
			name: "a daemon's file covered in a mount through a symlink",
			opts: Options{SystemDirs: []string{"/usr"}, Mounts: []Bind{{Source: "/srv/confalias", Target: "/conf"}}, Hidden: []string{"/etc/cellgate/policy.yaml"}},
			want: &Plan{
				Namespaces: AllNamespaces, Resident: true,
				Binds: []Bind{{Source: "/srv/confalias", Target: "/conf"}, {Source: "/usr", Target: "/usr"},
					{Source: "/dev/null", Target: "/conf/policy.yaml", Mask: true, Hides: "/etc/cellgate/policy.yaml"}},
				Tmpfs: tmpfs(DefaultTmpfsSize), Hostname: DefaultHostname, Seccomp: true, NoFile: DefaultNoFile,
			},
		},
		{name: "program dir the cell's /tmp", opts: Options{Programs: "/tmp"}, wantErr: "program directory /tmp: the cell's own /tmp is there"},
		{name: "program dir the whole host", opts: Options{Programs: "/"}, wantErr: "program directory /: the cell's own / is there"},
		{name: "program dir holding the cell's /var/tmp", opts: Options{Programs: "/var"}, wantErr: "program directory /var: the cell's own /var/tmp is there"},
		{name: "interpreter dir under the cell's /dev", opts: Options{Programs: "/srv/cgi", Interpreter: "/dev/shm/python3"}, wantErr: "program directory /dev/shm"},
		{name: "system dir over the cell's /tmp", opts: Options{SystemDirs: []string{"/usr", "/tmp"}}, wantErr: "system directory /tmp: the cell's own /tmp is there"},
		{name: "system dir over the cell's /var/tmp", opts: Options{SystemDirs: []string{"/var"}}, wantErr: "system directory /var: the cell's own /var/tmp is there"},
		{name: "system dir over the cell's /dev", opts: Options{SystemDirs: []string{"/dev"}}, wantErr: "system directory /dev: the cell's own /dev is there"},
		{name: "system dir the whole host", opts: Options{SystemDirs: []string{"/"}}, wantErr: "system directory /: the cell's own / is there"},
		{name: "missing rootfs", opts: Options{RootFS: "/nope"}, wantErr: "rootfs /nope"},
		{name: "rootfs without a mount point", opts: Options{RootFS: "/srv/rootfs", Programs: "/srv/data"},
			wantErr: "rootfs /srv/rootfs has no /srv/data, where the cell's /srv/data is mounted: lstat /srv/rootfs/srv/data: file does not exist (create it in the rootfs)"},
		{name: "rootfs a file", opts: Options{RootFS: "/srv/file"}, wantErr: "not a directory"},
		{name: "system dir a file", opts: Options{SystemDirs: []string{"/srv/file"}}, wantErr: "system directory /srv/file: not a directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Build(tc.opts, debian)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Build: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Build:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestNamespaces(t *testing.T) {
	if got, want := AllNamespaces.CloneFlags(), uintptr(unix.CLONE_NEWNS|unix.CLONE_NEWPID|unix.CLONE_NEWIPC|unix.CLONE_NEWUTS|unix.CLONE_NEWNET); got != want {
		t.Errorf("CloneFlags = %#x, want %#x", got, want)
	}
	if got := (NSPID | NSNet).String(); got != "pid net" {
		t.Errorf("String = %q", got)
	}
	if got := Namespaces(0).String(); got != "none" {
		t.Errorf("String of none = %q", got)
	}
	for _, name := range []string{"mount", "pid", "ipc", "uts", "net"} {
		ns, ok := ParseNamespace(name)
		if !ok || ns.String() != name {
			t.Errorf("ParseNamespace(%q) = %v, %v", name, ns, ok)
		}
	}
	if _, ok := ParseNamespace("user"); ok {
		t.Error("ParseNamespace(user) accepted")
	}
}

func TestStepsOrder(t *testing.T) {
	p, err := Build(Options{Programs: "/tmp/cgi", Mounts: []Bind{{Source: "/srv/data", Target: "/var/lib/app"}}}, debian)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range p.steps() {
		got = append(got, map[stepKind]string{stepRootTmpfs: "root", stepRootBind: "rootfs", stepTmpfs: "tmpfs", stepBind: "bind",
			stepSymlink: "link", stepProc: "proc", stepRootReadOnly: "ro"}[s.kind]+" "+s.target)
	}
	want := []string{"root /", "tmpfs /dev",
		"bind /dev/null", "bind /dev/zero", "bind /dev/full", "bind /dev/random", "bind /dev/urandom", "bind /dev/tty",
		"link /dev/fd", "link /dev/stdin", "link /dev/stdout", "link /dev/stderr",
		"tmpfs /tmp", "tmpfs /var/tmp", "tmpfs /dev/shm",
		"bind /etc", "bind /usr", "bind /tmp/cgi", "bind /var/lib/app",
		"link /bin", "link /sbin", "link /lib", "link /lib64",
		"proc /proc", "ro /"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("steps:\n got %q\nwant %q", got, want)
	}
	for _, s := range p.steps() {
		if s.kind == stepBind && strings.HasPrefix(s.target, "/dev/") && !(s.bind.Dev && s.bind.Writable) {
			t.Errorf("%s: device nodes must be bound dev and writable: %+v", s.target, s.bind)
		}
	}
	host, _ := Build(Options{Share: NSMount}, debian)
	if s := host.steps(); s != nil {
		t.Errorf("steps without a mount namespace: %v", s)
	}
	// A route run as root has its /proc's kernel settings made read-only
	// right after the /proc is mounted.
	root, err := Build(Options{Programs: "/tmp/cgi", Root: true}, debian)
	if err != nil {
		t.Fatal(err)
	}
	var tail []stepKind
	for _, s := range root.steps()[len(root.steps())-3:] {
		tail = append(tail, s.kind)
	}
	if want := []stepKind{stepProc, stepProcReadOnly, stepRootReadOnly}; !reflect.DeepEqual(tail, want) {
		t.Errorf("a root route's last steps %v, want %v", tail, want)
	}
}

// A preloader stays in the host's PID namespace and binds the host's /proc
// where a cell mounts its own; its children get PID, mount and IPC
// namespaces of their own.
func TestForPreloader(t *testing.T) {
	p, err := Build(Options{Programs: "/srv/cgi"}, debian)
	if err != nil {
		t.Fatal(err)
	}
	pre, err := p.ForPreloader()
	if err != nil {
		t.Fatal(err)
	}
	// A preloader's uid 0 is its user namespace's (never the host's root),
	// and its /proc is the host's, bound read-only.
	if root, _ := Build(Options{Programs: "/srv/cgi", Root: true}, debian); root != nil {
		if rootPre, err := root.ForPreloader(); err != nil || rootPre.Root {
			t.Errorf("a root route's preloader: Root %v (%v), want false", rootPre.Root, err)
		}
	}
	if p.Preloader || !pre.Preloader {
		t.Fatalf("ForPreloader changed the plan (%v) or did not mark its copy (%v)", p.Preloader, pre.Preloader)
	}
	cell, _ := Prepare(p)
	prep, _ := Prepare(pre)
	if cell.CloneFlags()&unix.CLONE_NEWPID == 0 || prep.CloneFlags()&unix.CLONE_NEWPID != 0 || prep.CloneFlags()&unix.CLONE_NEWNET == 0 {
		t.Errorf("clone flags: cell %#x, preloader %#x; want CLONE_NEWPID only for the cell, CLONE_NEWNET for both", cell.CloneFlags(), prep.CloneFlags())
	}
	if got := pre.ChildNamespaces(); got != NSPID|NSMount|NSIPC {
		t.Errorf("child namespaces %v, want pid mount ipc", got)
	}
	var proc []stepKind
	for _, s := range pre.steps() {
		if s.target == "/proc" {
			proc = append(proc, s.kind)
		}
	}
	if !reflect.DeepEqual(proc, []stepKind{stepHostProc}) {
		t.Errorf("/proc steps of a preloader %v, want only the host's /proc bound", proc)
	}
	host, _ := Build(Options{Share: NSPID | NSMount}, debian)
	if hostPre, err := host.ForPreloader(); err != nil || hostPre.ChildNamespaces() != NSIPC {
		t.Errorf("child namespaces with pid and filesystem shared: %v (%v), want ipc", hostPre.ChildNamespaces(), err)
	}
}

// A preloader's child mounts its fresh tmpfs over the whole directory: an
// app or a mount in /tmp, /var/tmp or /dev/shm would vanish under it, so
// such a plan is refused with what to do, unless the filesystem is the
// host's.
func TestForPreloaderRefusesBindUnderTmpfs(t *testing.T) {
	// The private tmpfs itself is refused by Build (checkTarget), for
	// every route.
	for _, dir := range []string{"/var/tmp", "/dev/shm/x/y"} {
		if _, err := Build(Options{Programs: dir}, debian); err == nil || !strings.Contains(err.Error(), "program directory "+dir) {
			t.Errorf("app in %s: %v, want Build to refuse it", dir, err)
		}
	}
	for _, dir := range []string{"/tmp/app", "/var/tmp/app"} {
		p, err := Build(Options{Programs: dir}, debian)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.ForPreloader(); err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "filesystem: host") {
			t.Errorf("app in %s: %v, want an error naming it and the way out", dir, err)
		}
	}
	for _, dir := range []string{"/srv/app", "/tmpfoo/app"} {
		p, _ := Build(Options{Programs: dir}, debian)
		if _, err := p.ForPreloader(); err != nil {
			t.Errorf("app in %s: %v", dir, err)
		}
	}
	host, _ := Build(Options{Programs: "/tmp/app", Share: NSMount}, debian)
	if _, err := host.ForPreloader(); err != nil {
		t.Errorf("app in /tmp with the host's filesystem: %v", err)
	}
}

func TestTemplatable(t *testing.T) {
	base := Plan{Namespaces: AllNamespaces, Seccomp: true, Tmpfs: []Tmpfs{{Target: "/tmp"}, {Target: "/dev/shm"}, {Target: "/var/tmp"}},
		Binds: []Bind{{Source: "/usr", Target: "/usr"}}, Symlinks: []Symlink{{Link: "/bin", Target: "usr/bin"}}}
	for _, tc := range []struct {
		name string
		edit func(p *Plan)
		want bool
	}{
		{"default view", func(*Plan) {}, true},
		{"no mount namespace", func(p *Plan) { p.Namespaces &^= NSMount }, false},
		{"a preloader's", func(p *Plan) { p.Preloader = true }, false},
		{"a bind in a private tmpfs", func(p *Plan) { p.Binds = append(p.Binds, Bind{Source: "/srv/x", Target: "/tmp/x"}) }, false},
		{"a bind on a private tmpfs", func(p *Plan) { p.Binds = append(p.Binds, Bind{Source: "/srv/x", Target: "/dev/shm"}) }, false},
		{"a bind beside a private tmpfs", func(p *Plan) { p.Binds = append(p.Binds, Bind{Source: "/srv/x", Target: "/tmpdata"}) }, true},
		{"a bind in /proc", func(p *Plan) { p.Binds = append(p.Binds, Bind{Source: "/srv/x", Target: "/proc/x"}) }, false},
		{"a symlink in a private tmpfs", func(p *Plan) { p.Symlinks = append(p.Symlinks, Symlink{Link: "/tmp/l", Target: "/usr"}) }, false},
		{"a bind holding a private tmpfs", func(p *Plan) { p.Binds = append(p.Binds, Bind{Source: "/var", Target: "/var"}) }, false},
		{"a bind beside the one holding a private tmpfs", func(p *Plan) { p.Binds = append(p.Binds, Bind{Source: "/var/lib", Target: "/var/lib"}) }, true},
		{"no filter", func(p *Plan) { p.Seccomp = false }, false},
	} {
		p := base
		p.Binds = append([]Bind(nil), base.Binds...)
		p.Symlinks = append([]Symlink(nil), base.Symlinks...)
		tc.edit(&p)
		if got := p.Templatable(); got != tc.want {
			t.Errorf("%s: Templatable = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestBuildRootMap: a root map is kept for a route whose program may run
// as root in a view of its own, and dropped where it has no view
// (filesystem: host), may not run as root, or is a preloader's; only
// the host's root has its capabilities cut.
func TestBuildRootMap(t *testing.T) {
	m := &RootMap{UID: 2000000007, GID: 3000}
	for _, c := range []struct {
		name string
		o    Options
		want bool
	}{
		{"root in a view", Options{Programs: "/srv/cgi", Root: true, RootMap: m}, true},
		{"not root", Options{Programs: "/srv/cgi", RootMap: m}, false},
		{"filesystem: host", Options{Programs: "/srv/cgi", Root: true, RootMap: m, Share: NSMount}, false},
	} {
		p, err := Build(c.o, debian)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := p.RootMap != nil; got != c.want {
			t.Errorf("%s: RootMap %v, want kept %v", c.name, p.RootMap, c.want)
		}
		if c.want {
			if *p.RootMap != *m || p.RootMap == m {
				t.Errorf("%s: RootMap %v, want a copy of %v", c.name, p.RootMap, m)
			}
			if p.CutsRootCaps(0) {
				t.Errorf("%s: root of its own user namespace has its capabilities cut", c.name)
			}
			q, err := p.ForPreloader()
			if err != nil || q.RootMap != nil {
				t.Errorf("%s: a preloader's plan keeps RootMap %v (%v)", c.name, q.RootMap, err)
			}
		}
	}
	p, err := Build(Options{Programs: "/srv/cgi", Root: true}, debian)
	if err != nil || !p.CutsRootCaps(0) || p.CutsRootCaps(1000) {
		t.Errorf("the host's root: cut %v, another uid cut %v (%v); want root's alone", p.CutsRootCaps(0), p.CutsRootCaps(1000), err)
	}
}

// TestBuildBesideWritableSource: what a cell cannot replace through its
// writable mount is still accepted: the writable mount's own source
// bound again read-only (the cell cannot replace the directory itself,
// only what it holds), and a source that holds the writable one.
func TestBuildBesideWritableSource(t *testing.T) {
	for _, o := range []Options{
		{Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}, {Source: "/srv/data", Target: "/ro"}}},
		{Mounts: []Bind{{Source: "/srv", Target: "/all"}, {Source: "/srv/data", Target: "/data", Writable: true}}},
		{Programs: "/srv/cgi", Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}}},
	} {
		if _, err := Build(o, debian); err != nil {
			t.Errorf("Build(%+v): %v, want it accepted", o.Mounts, err)
		}
	}
}

// TestBuildRelativeRootFSEnds: a rootfs that is not an absolute path is
// refused, not looked for among a writable mount's files for ever (the
// walk up a relative path never reaches /).
func TestBuildRelativeRootFSEnds(t *testing.T) {
	done := make(chan error, 1)
	go func() {
		_, err := Build(Options{RootFS: "rootfs", Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}}}, debian)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not an absolute clean path") {
			t.Errorf("Build with a relative rootfs: %v, want it refused as not an absolute clean path", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Build with a relative rootfs and a writable mount did not return")
	}
}
