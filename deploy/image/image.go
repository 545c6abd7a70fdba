// Command image builds cellgate's OCI image without a container daemon
// (`make image`): it cross-builds cellgate and the example CGI programs
// statically, lays them out with the example policy in one layer on an
// empty base, and writes an OCI image layout (for skopeo, crane, podman,
// containerd's ctr import) and a docker-archive tarball (docker load).
// It uses go-containerregistry's mutate and layout packages.
package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Where things are in the image. The example policy keeps its relative
// program paths: examples/policy.yaml names ../bin/cgi/NAME and
// cgi/hello.sh.
const (
	binPath    = "/usr/local/bin/cellgate"
	initPath   = "/usr/local/bin/cellgate-init"
	sharePath  = "/usr/local/share/cellgate"
	policyPath = sharePath + "/examples/policy.yaml"
	// servePolicy is the policy the image serves by default: the one of
	// deploy/kubernetes/policy.yaml (absolute program paths, no program
	// that needs a shell, which the image does not have).
	servePolicy = sharePath + "/policy.yaml"
	cgiDir      = sharePath + "/bin/cgi"
)

// file is one regular file of the image's layer.
type file struct {
	path string // absolute path in the image
	mode int64
	data []byte
}

// spec is what an image is built from.
type spec struct {
	files    []file
	revision string // vcs revision for the label, "" when unknown
	arch     string // GOARCH of the binaries
	created  time.Time
}

// passwd and group give os/user (pure Go in a static binary) root and
// nobody; the per-cell uids need no account.
const (
	passwd = "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
	group  = "root:x:0:\nnogroup:x:65534:\n"
)

// defaultCmd serves the Kubernetes policy on all addresses after the
// preflight; a Deployment's args replace it.
var defaultCmd = []string{"serve", "--preflight", "--policy", servePolicy, "--listen", "0.0.0.0:8080", "--admin", "0.0.0.0:9090"}

// build returns the image: one layer with the files (and the directories
// above them, /tmp world-writable for the spool files), on an empty base,
// with cellgate as the entrypoint.
func build(s spec) (v1.Image, error) {
	layerTar, err := layerTar(s.files, s.created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: s.created}, CreatedBy: "cellgate deploy/image", Comment: "cellgate, the example CGI programs and the example policy",
	}})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = s.arch, "linux"
	cf.Created = v1.Time{Time: s.created}
	labels := map[string]string{
		"org.opencontainers.image.title":       "cellgate",
		"org.opencontainers.image.description": "a reverse proxy that runs every request in its own cgroup v2 cell",
		"org.opencontainers.image.source":      "https://github.com/cellgate/cellgate",
		"org.opencontainers.image.created":     s.created.UTC().Format(time.RFC3339),
	}
	if s.revision != "" {
		labels["org.opencontainers.image.revision"] = s.revision
	}
	cf.Config = v1.Config{
		Entrypoint: []string{binPath},
		Cmd:        slices.Clone(defaultCmd),
		// Root inside the container's user namespace: cellgate creates
		// cgroups and runs cells under uids of their own.
		User:         "0:0",
		WorkingDir:   "/",
		Env:          []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		ExposedPorts: map[string]struct{}{"8080/tcp": {}, "9090/tcp": {}},
		Labels:       labels,
		StopSignal:   "SIGTERM",
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return img, nil
}

// layerTar writes the files, the directories above them and /tmp as one
// tar, sorted, owned by root, dated created: the same inputs give the
// same layer digest.
func layerTar(files []file, created time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]int64{"/tmp": 0o1777}
	for _, f := range files {
		for d := path.Dir(f.path); d != "/"; d = path.Dir(d) {
			if _, ok := dirs[d]; !ok {
				dirs[d] = 0o755
			}
		}
	}
	dirNames := make([]string, 0, len(dirs))
	for d := range dirs {
		dirNames = append(dirNames, d)
	}
	slices.Sort(dirNames)
	for _, d := range dirNames {
		h := &tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: dirs[d], ModTime: created, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
	}
	sorted := slices.Clone(files)
	slices.SortFunc(sorted, func(a, b file) int { return strings.Compare(a.path, b.path) })
	for _, f := range sorted {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.path, "/"), Mode: f.mode, Size: int64(len(f.data)), ModTime: created, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// readFile is a file of the repository (or a built binary) as an image
// file.
func readFile(src, dst string, mode int64) (file, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return file{}, fmt.Errorf("image file %s: %w", dst, err)
	}
	return file{path: dst, mode: mode, data: b}, nil
}
