package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ociRuntime returns crun, the OCI runtime the test runs the image with.
func ociRuntime(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("crun")
	if err != nil {
		skipOrFail(t, "crun not installed (apt-get install --no-install-recommends crun): %v", err)
	}
	return p
}

// ociBundle writes an OCI bundle around the image's file system: cellgate
// serve --preflight as the image runs it, with the capabilities the
// Deployment grants, a private cgroup namespace with cgroupfs mounted
// writable, the host's network (loopback), and seccomp from profile.
func ociBundle(t *testing.T, rootfs, cgroupsPath string, seccomp *specs.LinuxSeccomp, userNS bool) string {
	t.Helper()
	caps := []string{"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_CHOWN", "CAP_SETPCAP"}
	const policy = "/usr/local/share/cellgate/policy.yaml" // the image's default
	spec := specs.Spec{
		Version: "1.0.2", // what crun 1.8 (Debian 12) accepts
		Process: &specs.Process{
			User: specs.User{UID: 0, GID: 0},
			Args: []string{"/usr/local/bin/cellgate", "serve", "--preflight", "--policy", policy,
				"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"},
			Env:             []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
			Cwd:             "/",
			Capabilities:    &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: rootfs, Readonly: true},
		Hostname: "cellgate",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "rw"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: cgroupsPath,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
				{Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
			},
			Seccomp: seccomp,
		},
	}
	if userNS {
		// hostUsers: false: 65536 ids from podRoot, and per-cell uids
		// inside them.
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		spec.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: podRoot, Size: 65536}}
		spec.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: podRoot, Size: 65536}}
		spec.Process.Env = append(spec.Process.Env, "CELLGATE_UID_RANGE=10000-19999", "CELLGATE_GID=10000")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// loadSeccomp reads deploy/seccomp/cellgate.json.
func loadSeccomp(t *testing.T) *specs.LinuxSeccomp {
	t.Helper()
	b, err := os.ReadFile("../deploy/seccomp/cellgate.json")
	if err != nil {
		t.Fatal(err)
	}
	var s specs.LinuxSeccomp
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

// runOCI runs the bundle with crun in the foreground, as a container
// whose group is group; its cleanup kills and deletes it.
func runOCI(t *testing.T, crun, bundle, id, group string) *container {
	t.Helper()
	state := filepath.Join(os.TempDir(), "crun-state")
	c := &container{group: group, cmd: exec.Command(crun, "--root", state, "run", "--bundle", bundle, id)}
	c.start(t)
	t.Cleanup(func() {
		exec.Command(crun, "--root", state, "kill", id, "KILL").Run()
		select {
		case <-c.exited:
		case <-time.After(time.Minute):
		}
		exec.Command(crun, "--root", state, "delete", "--force", id).Run()
	})
	return c
}

// TestImageUnderOCIRuntime runs the image with a real OCI runtime (crun)
// as the Deployment asks for it: a private cgroup namespace with a
// writable cgroupfs, SETUID, SETGID, KILL, SYS_ADMIN, NET_ADMIN, CHOWN and SETPCAP only, no_new_privs, and
// deploy/seccomp/cellgate.json. It serves from cells under the container's
// group. With a profile that refuses clone3 as the runtimes' defaults do,
// it refuses to start, which is why the profile exists.
func TestImageUnderOCIRuntime(t *testing.T) {
	parent := requireKernel(t)
	crun := ociRuntime(t)
	rootfs := unpackImage(t, imageLayout(t))
	mnt, err := cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name   string
		userNS bool
	}{{"cellgate profile", false}, {"cellgate profile, user namespace", true}} {
		t.Run(c.name, func(t *testing.T) { serveUnderOCI(t, crun, rootfs, parent, mnt, c.userNS) })
	}
	// hostUsers: false with the default per-cell uids, which the pod's
	// 65536 ids do not map: the preflight refuses and says how to fix it.
	t.Run("user namespace, default uid range", func(t *testing.T) {
		group := filepath.Join(parent, "oci-userns-default")
		t.Cleanup(func() { removeTree(t, group) })
		bundle := ociBundle(t, rootfs, strings.TrimPrefix(group, mnt), loadSeccomp(t), true)
		editSpec(t, bundle, func(s *specs.Spec) { s.Process.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"} })
		c := runOCI(t, crun, bundle, fmt.Sprintf("cellgate-test-userns-default-%d", os.Getpid()), group)
		select {
		case <-c.exited:
		case <-time.After(2 * time.Minute):
			t.Fatalf("serve --preflight did not refuse unmapped per-cell uids:\n%s", c.stderr.String())
		}
		if !strings.Contains(c.stderr.String(), "are not all mapped in this user namespace") {
			t.Errorf("the preflight does not say the uids are not mapped:\n%s", c.stderr.String())
		}
	})
	t.Run("clone3 refused as by the runtimes' default profiles", func(t *testing.T) {
		group := filepath.Join(parent, "oci-default")
		t.Cleanup(func() { removeTree(t, group) })
		enosys := uint(38)
		prof := &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Architectures: []specs.Arch{specs.ArchX86_64},
			Syscalls: []specs.LinuxSyscall{{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys}}}
		bundle := ociBundle(t, rootfs, strings.TrimPrefix(group, mnt), prof, false)
		c := runOCI(t, crun, bundle, fmt.Sprintf("cellgate-test-default-%d", os.Getpid()), group)
		select {
		case <-c.exited:
		case <-time.After(2 * time.Minute):
			t.Fatalf("cellgate did not refuse to start without clone3:\n%s", c.stderr.String())
		}
		if !strings.Contains(c.stderr.String(), "function not implemented") {
			t.Errorf("cellgate's refusal does not name the failed clone3:\n%s", c.stderr.String())
		}
	})
}

// serveUnderOCI runs the image under crun with deploy/seccomp/cellgate.json
// (in a user namespace of 65536 ids when userNS) and checks it serves from
// cells under the container's group, a route run as root too: its program
// enters a user namespace of its own with setns, which the profile
// allows of that type alone.
func serveUnderOCI(t *testing.T, crun, rootfs, parent, mnt string, userNS bool) {
	t.Helper()
	group := filepath.Join(parent, "oci")
	if userNS {
		group += "-userns"
	}
	t.Cleanup(func() { removeTree(t, group) })
	bundle := ociBundle(t, rootfs, strings.TrimPrefix(group, mnt), loadSeccomp(t), userNS)
	// The image's hello, and the same run as root (uid 0: the image has
	// no /etc/passwd).
	polDir := openTempDir(t, "cellgate-oci-policy-", 0o755)
	const hello = "/usr/local/share/cellgate/bin/cgi/hello"
	pol := fmt.Sprintf(`version: 1
tenants:
  - {name: web, memory: 512Mi, pids: 512}
routes:
  - {name: hello, match: {path: /hello}, tenant: web, program: %[1]s, memory: 16Mi, pids: 8}
  - {name: helloroot, match: {path: /helloroot}, tenant: web, program: %[1]s, memory: 16Mi, pids: 8, user: 0, allow_root: true}
`, hello)
	if err := os.WriteFile(filepath.Join(polDir, "policy.yaml"), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	editSpec(t, bundle, func(s *specs.Spec) {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/cellgate-test", Type: "bind", Source: polDir, Options: []string{"bind", "ro"}})
		for i, a := range s.Process.Args {
			if a == "--policy" {
				s.Process.Args[i+1] = "/etc/cellgate-test/policy.yaml"
			}
		}
	})
	url := runOCI(t, crun, bundle, fmt.Sprintf("cellgate-test-%d-%s", os.Getpid(), filepath.Base(group)), group).helloFromCell(t)
	if err := getHello(url + "/helloroot"); err != nil {
		t.Errorf("GET /helloroot, a route run as root under the container's profile: %v", err)
	}
}

// editSpec rewrites the bundle's config.json through edit.
func editSpec(t *testing.T, bundle string, edit func(*specs.Spec)) {
	t.Helper()
	path := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	edit(&spec)
	if b, err = json.Marshal(spec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
