package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cellgate/cellgate/policy"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

const repo = "../.."

// builtImage builds the image as `make image` does, into a temporary OCI
// layout and archive, and reads it back from the layout.
func builtImage(t *testing.T) (v1.Image, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds cellgate and the examples (-short)")
	}
	dir := t.TempDir()
	out, archive := filepath.Join(dir, "oci"), filepath.Join(dir, "image.tar")
	if err := run(repo, out, archive, "cellgate:test", "amd64"); err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(out)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "test" {
		t.Fatalf("layout index %+v, want one image named test", im.Manifests)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img, archive
}

// layerFiles reads the image's file system: path -> header and content.
func layerFiles(t *testing.T, img v1.Image) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := "/" + strings.TrimSuffix(h.Name, "/")
		hdrs[p] = h
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			data[p] = b
		}
	}
	return hdrs, data
}

// TestImage: the image runs cellgate serve --preflight as root of its
// user namespace, names itself in the OCI labels, and holds a static
// cellgate, every program the example policy and the Kubernetes policy
// run, the example policy itself and a world-writable /tmp.
func TestImage(t *testing.T) {
	img, archive := builtImage(t)

	mt, err := img.MediaType()
	if err != nil || mt != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("manifest media type %s (%v), want OCI", mt, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if !slices.Equal(c.Entrypoint, []string{binPath}) {
		t.Errorf("entrypoint %q, want %s", c.Entrypoint, binPath)
	}
	if len(c.Cmd) < 2 || c.Cmd[0] != "serve" || !slices.Contains(c.Cmd, "--preflight") {
		t.Errorf("cmd %q, want serve --preflight ...", c.Cmd)
	}
	if c.User != "0:0" {
		t.Errorf("user %q, want 0:0 (root of the container's user namespace)", c.User)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	for _, l := range []string{"org.opencontainers.image.title", "org.opencontainers.image.source", "org.opencontainers.image.revision"} {
		if c.Labels[l] == "" {
			t.Errorf("label %s missing (labels %v)", l, c.Labels)
		}
	}

	hdrs, data := layerFiles(t, img)
	bin := data[binPath]
	if h := hdrs[binPath]; h == nil || h.Mode&0o111 == 0 {
		t.Fatalf("%s missing or not executable", binPath)
	}
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("%s: %v", binPath, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s is dynamically linked: the image has no libc", binPath)
		}
	}
	if f.Machine != elf.EM_X86_64 {
		t.Errorf("%s is for %s, want x86-64", binPath, f.Machine)
	}
	if h := hdrs[initPath]; h == nil || h.Mode&0o111 == 0 {
		t.Errorf("%s (the confined cells' init, beside cellgate) missing or not executable", initPath)
	}
	if h := hdrs["/tmp"]; h == nil || h.Mode&0o1777 != 0o1777 {
		t.Errorf("/tmp missing or not mode 1777: %+v", h)
	}
	want, err := os.ReadFile(filepath.Join(repo, "examples/policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data[policyPath], want) {
		t.Errorf("%s is not examples/policy.yaml", policyPath)
	}
	// Readable under a user namespace, where the image's files belong
	// to an unmapped owner.
	for _, p := range []string{policyPath, servePolicy} {
		if h := hdrs[p]; h == nil || h.Mode&0o004 == 0 {
			t.Errorf("%s missing or not readable by others (a container in a user namespace could not read it): %+v", p, h)
		}
	}

	if string(data[servePolicy]) != kubernetesPolicyText(t) {
		t.Errorf("%s (the image's default policy) is not deploy/kubernetes/policy.yaml's", servePolicy)
	}
	if !slices.Contains(c.Cmd, servePolicy) {
		t.Errorf("cmd %q does not serve %s", c.Cmd, servePolicy)
	}

	// Every program the policies name is in the image and executable.
	examples, err := filepath.Abs(filepath.Join(repo, "examples"))
	if err != nil {
		t.Fatal(err)
	}
	example, err := policy.Load(filepath.Join(examples, "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	programs := map[string]string{}
	for _, r := range example.Routes {
		if r.Program != "" {
			// Relative to the policy's directory, in the image as here.
			rel, err := filepath.Rel(examples, r.Program)
			if err != nil {
				t.Fatal(err)
			}
			programs["example route "+r.Name] = path.Join(path.Dir(policyPath), filepath.ToSlash(rel))
		}
	}
	for _, r := range kubernetesPolicy(t).Routes {
		programs["kubernetes route "+r.Name] = r.Program
	}
	for who, p := range programs {
		if h := hdrs[p]; h == nil || h.Typeflag != tar.TypeReg || h.Mode&0o111 == 0 {
			t.Errorf("%s runs %s: not an executable file in the image", who, p)
		}
	}

	// The docker archive holds the same image.
	fromArchive, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.ConfigName()
	d2, err := fromArchive.ConfigName()
	if err != nil || d1 != d2 {
		t.Errorf("archive config %s (%v), layout config %s", d2, err, d1)
	}
}

// kubernetesPolicyText is the policy text of deploy/kubernetes/policy.yaml.
func kubernetesPolicyText(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "deploy/kubernetes/policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(b, &cm); err != nil {
		t.Fatal(err)
	}
	return cm.Data["policy.yaml"]
}

// kubernetesPolicy is the policy of deploy/kubernetes/policy.yaml.
func kubernetesPolicy(t *testing.T) *policy.Policy {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(p, []byte(kubernetesPolicyText(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

// TestLayerIsReproducible: the same files and date give the same layer.
func TestLayerIsReproducible(t *testing.T) {
	files := []file{{path: "/b/x", mode: 0o755, data: []byte("x")}, {path: "/a", mode: 0o644, data: []byte("a")}}
	s := spec{files: files, arch: "amd64"}
	a, err := layerTar(files, s.created)
	if err != nil {
		t.Fatal(err)
	}
	b, err := layerTar([]file{files[1], files[0]}, s.created)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("the layer depends on the order of the files")
	}
}

// TestReadmeNamesDefaultCmd: README's container section gives the image's
// command as it is (it named examples/policy.yaml, which the image does
// not serve by default).
func TestReadmeNamesDefaultCmd(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(string(readme)), " ")
	if want := "its command `" + strings.Join(defaultCmd, " ") + "`"; !strings.Contains(text, want) {
		t.Errorf("README.md lacks %q", want)
	}
}
