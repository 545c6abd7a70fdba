package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"sigs.k8s.io/yaml"
)

// cgiExamples are the example programs the example policy runs (the
// Makefile's CGI_EXAMPLES).
var cgiExamples = []string{"hello", "echo", "memhog", "spin", "slow", "daemon", "malformed"}

func main() {
	repo := flag.String("repo", ".", "the repository's root `directory`")
	out := flag.String("out", "bin/image", "OCI image layout `directory` to write (replaced)")
	archive := flag.String("archive", "bin/cellgate-image.tar", "docker-archive tarball to write for docker load, \"\" for none")
	tag := flag.String("tag", "cellgate:latest", "the image's `name` in the layout and the archive")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH of the image")
	flag.Parse()
	if err := run(*repo, *out, *archive, *tag, *arch); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func run(repo, out, archive, tag, arch string) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("-tag %q: %w", tag, err)
	}
	s, err := collect(repo, arch)
	if err != nil {
		return err
	}
	img, err := build(s)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	p, err := layout.Write(out, empty.Index)
	if err != nil {
		return fmt.Errorf("OCI layout %s: %w", out, err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref.TagStr()})); err != nil {
		return fmt.Errorf("OCI layout %s: %w", out, err)
	}
	fmt.Printf("image: OCI layout %s (%s)\n", out, ref.Name())
	if archive != "" {
		if err := tarball.WriteToFile(archive, ref, img); err != nil {
			return fmt.Errorf("archive %s: %w", archive, err)
		}
		fmt.Printf("image: docker-archive %s\n", archive)
	}
	return nil
}

// crossCC is the C compiler of each architecture's Debian cross toolchain
// (package gcc-<triplet>), used when the image is not for this machine's.
var crossCC = map[string]string{"amd64": "x86_64-linux-gnu-gcc", "arm64": "aarch64-linux-gnu-gcc"}

// buildInit compiles the confined cells' init (C, static) for arch into
// out, with $CC or cc for this machine's architecture and the Debian cross
// compiler for another.
func buildInit(repo, arch, out string) error {
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
		if arch != runtime.GOARCH {
			cc = crossCC[arch]
		}
	}
	if cc == "" {
		return fmt.Errorf("no C compiler known for GOARCH=%s to build cellgate-init: set CC", arch)
	}
	cmd := exec.Command(cc, "-O2", "-static", "-Wall", "-Wextra", "-Werror", "-Wno-format-truncation",
		"-o", out, "cmd/cellgate-init/cellgate-init.c")
	cmd.Dir = repo
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build cellgate-init with %s for %s: %w (install gcc and libc6-dev, or for another architecture gcc-%s, or set CC)",
			cc, arch, err, strings.TrimSuffix(cc, "-gcc"))
	}
	return nil
}

// collect builds cellgate and the example programs statically for arch
// into a scratch directory and reads every file of the image.
func collect(repo, arch string) (spec, error) {
	tmp, err := os.MkdirTemp("", "cellgate-image-")
	if err != nil {
		return spec{}, err
	}
	defer os.RemoveAll(tmp)
	pkgs := []string{"./cmd/cellgate"}
	for _, e := range cgiExamples {
		pkgs = append(pkgs, "./examples/cgi/"+e)
	}
	cmd := exec.Command("go", append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", tmp + "/"}, pkgs...)...)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return spec{}, fmt.Errorf("go build %v (GOARCH=%s, CGO_ENABLED=0): %w", pkgs, arch, err)
	}
	if err := buildInit(repo, arch, filepath.Join(tmp, "cellgate-init")); err != nil {
		return spec{}, err
	}
	s := spec{arch: arch, created: created(), revision: revision(repo)}
	add := func(src, dst string, mode int64) error {
		f, err := readFile(src, dst, mode)
		if err == nil {
			s.files = append(s.files, f)
		}
		return err
	}
	if err := add(filepath.Join(tmp, "cellgate"), binPath, 0o755); err != nil {
		return spec{}, err
	}
	// The confined cells' init, where serve looks for it: beside cellgate.
	if err := add(filepath.Join(tmp, "cellgate-init"), initPath, 0o755); err != nil {
		return spec{}, err
	}
	for _, e := range cgiExamples {
		if err := add(filepath.Join(tmp, e), cgiDir+"/"+e, 0o755); err != nil {
			return spec{}, err
		}
	}
	if err := add(filepath.Join(repo, "examples/policy.yaml"), policyPath, 0o644); err != nil {
		return spec{}, err
	}
	// The example policy's scripts, beside it as it names them (they need
	// an interpreter the image does not have: the image serves the
	// Kubernetes policy, whose programs are all static).
	for _, script := range []string{"hello.sh", "flask-hello.cgi"} {
		if err := add(filepath.Join(repo, "examples/cgi", script), sharePath+"/examples/cgi/"+script, 0o755); err != nil {
			return spec{}, err
		}
	}
	pol, err := configMapPolicy(filepath.Join(repo, "deploy/kubernetes/policy.yaml"))
	if err != nil {
		return spec{}, err
	}
	// 0644, not 0600: under a user namespace the image's files belong to
	// an unmapped owner, and only their others' bits let serve read them.
	// The cells' view shows /usr, but no edit replaces a file of the
	// image's own (serve's warning of it is for a file that may be).
	s.files = append(s.files, file{path: servePolicy, mode: 0o644, data: pol})
	s.files = append(s.files, file{path: "/etc/passwd", mode: 0o644, data: []byte(passwd)}, file{path: "/etc/group", mode: 0o644, data: []byte(group)})
	return s, nil
}

// created is SOURCE_DATE_EPOCH when set (reproducible builds), else now.
func created() time.Time {
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
		if sec, err := strconv.ParseInt(v, 10, 64); err == nil {
			return time.Unix(sec, 0).UTC()
		}
	}
	return time.Now().UTC().Truncate(time.Second)
}

// revision is the repository's commit, from git when it is there.
func revision(repo string) string {
	out, err := exec.Command("git", "-C", repo, "rev-parse", "HEAD").Output()
	if err == nil && len(out) >= 40 {
		return string(out[:40])
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return ""
}

// configMapPolicy is the policy.yaml key of the ConfigMap in file.
func configMapPolicy(file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("image policy: %w", err)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(b, &cm); err != nil {
		return nil, fmt.Errorf("image policy %s: %w", file, err)
	}
	p, ok := cm.Data["policy.yaml"]
	if !ok {
		return nil, fmt.Errorf("image policy %s: no data key policy.yaml", file)
	}
	return []byte(p), nil
}
