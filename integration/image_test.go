package integration

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"
)

// imageLayout returns the OCI layout `make image` wrote (CELLGATE_IMAGE).
func imageLayout(t *testing.T) string {
	t.Helper()
	p := os.Getenv("CELLGATE_IMAGE")
	if p == "" {
		skipOrFail(t, "CELLGATE_IMAGE is not set (make integration builds the image with make image and sets it)")
	}
	return p
}

// unpackImage writes the image's file system into a new directory.
func unpackImage(t *testing.T, dir string) string {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("CELLGATE_IMAGE=%s: %v", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		t.Fatalf("CELLGATE_IMAGE=%s: want one image, got %v (%v)", dir, im, err)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	// Reachable from a user namespace whose root is not the node's root.
	root := t.TempDir()
	for _, d := range []string{root, filepath.Dir(root)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, os.FileMode(h.Mode&0o777)|modeBits(h.Mode)); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, os.FileMode(h.Mode&0o777))
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("image entry %s: type %c not expected in cellgate's image", h.Name, h.Typeflag)
		}
	}
	return root
}

// modeBits converts a tar mode's sticky bit.
func modeBits(m int64) os.FileMode {
	if m&0o1000 != 0 {
		return os.ModeSticky
	}
	return 0
}

// containerScript plays a container runtime: the process (already in
// the container's cgroup, its own cgroup and mount namespaces, and maybe a
// user namespace) gets /proc, /dev and cgroup2 ($MODE: rw or ro) in the
// image's root, which it then switches to as a runtime does (the root a
// mount of its own moved onto /, not a bare chroot, so that the cells'
// own mount namespaces work), and becomes the image's entrypoint there. Every step execs, so
// the container's group holds one process, as under a runtime.
const containerScript = `set -e
mount --make-rprivate /
mount --bind "$R" "$R"
mount --rbind /proc "$R/proc"
mount --rbind /dev "$R/dev"
mount -t cgroup2 -o "$MODE" none "$R/sys/fs/cgroup"
cd "$R"
mount --move . /
exec chroot . /usr/local/bin/cellgate "$@"
`

// container is the image's cellgate running as a container would.
type container struct {
	cmd    *exec.Cmd
	group  string // the container's cgroup, seen from the host
	stderr strings.Builder
	lines  chan string
	exited chan struct{}
	err    error
}

// podRoot is the node's uid (and gid) that root of a user namespace maps
// to in the hostUsers: false runs (oci_test.go), as a runtime picks one
// 65536-id block.
const podRoot = 100000

// containerOpts are how a container is started.
type containerOpts struct {
	mode string   // the cgroupfs mount: rw or ro
	env  []string // CELLGATE_* settings
}

// startContainer starts the image unpacked at root in a new group under
// parent, as a runtime would, running cellgate with args.
func startContainer(t *testing.T, root, parent string, o containerOpts, args ...string) *container {
	t.Helper()
	name := "ctr-" + o.mode
	c := &container{group: filepath.Join(parent, name)}
	if err := os.Mkdir(c.group, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTree(t, c.group) })
	for _, d := range []string{"proc", "dev", "sys/fs/cgroup"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.Open(c.group, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	c.cmd = exec.Command("sh", append([]string{"-c", containerScript, "entrypoint"}, args...)...)
	c.cmd.Env = append([]string{"R=" + root, "MODE=" + o.mode, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, o.env...)
	// New mount and cgroup namespaces once the process is in the group,
	// so that the group is the cgroup namespace's root.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd, Unshareflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWCGROUP}
	c.start(t)
	t.Cleanup(func() {
		select {
		case <-c.exited:
		default:
			c.cmd.Process.Kill()
			<-c.exited
		}
	})
	return c
}

// TestImageInPrivateCgroupNamespace runs the image `make image` built as
// a container runtime would, in a private cgroup namespace: with the
// cgroupfs read-only its entrypoint's preflight refuses to serve and says
// how to fix it, creating nothing; writable, cellgate moves into the
// container group's supervisor/, runs a request in a cell under the
// container's group, and removes its cells on SIGTERM.
func TestImageInPrivateCgroupNamespace(t *testing.T) {
	parent := requireKernel(t)
	root := unpackImage(t, imageLayout(t))
	const policy = "/usr/local/share/cellgate/policy.yaml" // the image's default
	args := []string{"serve", "--preflight", "--policy", policy, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"}

	t.Run("read-only cgroupfs", func(t *testing.T) {
		c := startContainer(t, root, parent, containerOpts{mode: "ro"}, args...)
		select {
		case <-c.exited:
		case <-time.After(2 * time.Minute):
			t.Fatalf("serve --preflight did not exit on a read-only cgroupfs:\n%s", c.stderr.String())
		}
		var ee *exec.ExitError
		if !errors.As(c.err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("exit %v, want status 1 from the preflight:\n%s", c.err, c.stderr.String())
		}
		for _, want := range []string{"FAIL", "read-only", "writable-cgroups=true", "Not --privileged"} {
			if !strings.Contains(c.stderr.String(), want) {
				t.Errorf("preflight output lacks %q:\n%s", want, c.stderr.String())
			}
		}
		ents, _ := os.ReadDir(c.group)
		for _, e := range ents {
			if e.IsDir() {
				t.Errorf("the refused start left the group %s", filepath.Join(c.group, e.Name()))
			}
		}
	})

	t.Run("writable cgroupfs", func(t *testing.T) {
		c := startContainer(t, root, parent, containerOpts{mode: "rw"}, args...)
		c.serveAndStop(t)
	})

}

// start starts c.cmd with its stderr read into c.stderr and c.lines;
// c.exited is closed with c.err set when it has exited.
func (c *container) start(t *testing.T) {
	t.Helper()
	c.lines, c.exited = make(chan string, 64), make(chan struct{})
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.cmd.Stdout = io.Discard
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start the container: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			c.stderr.WriteString(sc.Text() + "\n")
			select {
			case c.lines <- sc.Text():
			default:
			}
		}
		c.err = c.cmd.Wait()
		close(c.exited)
	}()
}

// getHello GETs url and says why the answer is not the hello program's,
// or nil.
func getHello(url string) error {
	resp, err := (&http.Client{Timeout: time.Minute}).Get(url)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "hello from a cell") {
		return fmt.Errorf("%s %q", resp.Status, body)
	}
	return nil
}

// helloFromCell waits until the container's cellgate serves, and checks
// that GET /hello is answered from a cell whose tenant group is under the
// container's group.
func (c *container) helloFromCell(t *testing.T) (url string) {
	t.Helper()
	var admin string
	for url == "" {
		select {
		case line := <-c.lines:
			if m := servingRE.FindStringSubmatch(line); m != nil {
				url, admin = "http://"+m[1], "http://"+m[2]
			}
			// The preflight's check runs cellgate itself in a user
			// namespace: the image has no /bin to run.
			if strings.Contains(line, "user namespaces") && strings.Contains(line, "refused") {
				t.Errorf("the preflight says user namespaces are refused where routes run as root serve: %s", line)
			}
		case <-c.exited:
			t.Fatalf("the container exited during start-up (%v):\n%s", c.err, c.stderr.String())
		case <-time.After(2 * time.Minute):
			t.Fatalf("the container did not serve within 2 minutes:\n%s", c.stderr.String())
		}
	}
	if err := getHello(url + "/hello"); err != nil {
		t.Fatalf("GET /hello: %v\n%s", err, c.stderr.String())
	}
	if _, err := os.Stat(filepath.Join(c.group, "cells", "web")); err != nil {
		t.Errorf("the tenant group is not under the container's group %s: %v", c.group, err)
	}
	// Two more: a resident cell serves them, its init having emptied
	// what the last request left under the container's profile (its
	// private tmpfs, its IPC namespace), not ended as unclean.
	for range 2 {
		resp, err := (&http.Client{Timeout: time.Minute}).Get(url + "/hello")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := (&http.Client{Timeout: time.Minute}).Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	hits := metric(string(body), "cellgate_warm_cells_total", map[string]string{"result": "hit"})
	unclean := metric(string(body), "cellgate_resident_ended_total", map[string]string{"reason": "unclean"})
	if hits < 1 || unclean != 0 {
		t.Errorf("3 requests: %v found a resident cell, %v resident cells ended unclean; want at least 1 and 0\n%s", hits, unclean, c.stderr.String())
	}
	return url
}

// serveAndStop waits for the container's cellgate to serve, runs a request
// in a cell under the container's group, and stops it with SIGTERM, which
// must remove the cells.
func (c *container) serveAndStop(t *testing.T) {
	t.Helper()
	c.helloFromCell(t)
	procs, err := os.ReadFile(filepath.Join(c.group, "supervisor", "cgroup.procs"))
	if err != nil || !onlyCellgate(string(procs), strconv.Itoa(c.cmd.Process.Pid)) {
		t.Errorf("%s/supervisor holds %q (%v), want cellgate's pid %d and at most its init spawner", c.group, procs, err, c.cmd.Process.Pid)
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-c.exited
	if c.err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", c.err, c.stderr.String())
	}
	if _, err := os.Stat(filepath.Join(c.group, "cells")); !os.IsNotExist(err) {
		t.Errorf("cells/ left in the container's group after SIGTERM: %v", err)
	}
}
