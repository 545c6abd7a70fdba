package main

import (
	"os"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// TestDeploymentArgsAreServeSettings: the Deployment's container runs
// `cellgate serve` with flags and CELLGATE_* variables serve accepts, and
// per-cell uids that a pod's user namespace (65536 uids) maps.
func TestDeploymentArgsAreServeSettings(t *testing.T) {
	const file = "../../deploy/kubernetes/deployment.yaml"
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict(b, &d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	c := d.Spec.Template.Spec.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "serve" {
		t.Fatalf("%s: args %q, want serve first", file, c.Args)
	}
	environ := []string{"TMPDIR=" + t.TempDir()}
	for _, e := range c.Env {
		environ = append(environ, e.Name+"="+e.Value)
	}
	cfg, err := loadServeConfig(c.Args[1:], environ, nil)
	if err != nil {
		t.Fatalf("%s: serve refuses the container's settings: %v", file, err)
	}
	if !cfg.Preflight {
		t.Errorf("%s: serve runs without --preflight: a pod without a delegated cgroup would not fail loudly", file)
	}
	if last := uint64(cfg.UIDs.First) + uint64(cfg.UIDs.Count) - 1; last > 65535 || cfg.GID > 65535 {
		t.Errorf("%s: uid range %s, gid %d: a pod's user namespace maps uids 0-65535 only", file, cfg.UIDs.String(), cfg.GID)
	}
}
