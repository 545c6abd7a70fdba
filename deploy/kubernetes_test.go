package deploy

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/proxy"
	"github.com/cellgate/cellgate/sandbox"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const k8sDir = "kubernetes"

// manifests are deploy/kubernetes decoded strictly: an unknown or
// misspelt field anywhere fails the decode.
type manifests struct {
	deployment appsv1.Deployment
	service    corev1.Service
	network    networkingv1.NetworkPolicy
	policy     corev1.ConfigMap
	hpa        autoscalingv2.HorizontalPodAutoscaler
	podMonitor monitoringv1.PodMonitor
	adapter    corev1.ConfigMap
}

// kustomization is the part of kustomize's Kustomization these manifests
// use (its Go type lives in a module far larger than the test).
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// adapterConfig is the part of prometheus-adapter's config file the rule
// uses, decoded with unknown fields refused.
type adapterConfig struct {
	Rules []struct {
		SeriesQuery string `json:"seriesQuery"`
		Resources   struct {
			Overrides map[string]struct {
				Resource string `json:"resource"`
			} `json:"overrides"`
		} `json:"resources"`
		Name struct {
			Matches string `json:"matches"`
			As      string `json:"as"`
		} `json:"name"`
		MetricsQuery string `json:"metricsQuery"`
	} `json:"rules"`
}

// decodeStrict decodes one YAML document into v, refusing unknown fields
// and checking apiVersion and kind.
func decodeStrict(t *testing.T, file, apiVersion, kind string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(k8sDir, file))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(b, &tm); err != nil {
		t.Fatal(err)
	}
	if tm.APIVersion != apiVersion || tm.Kind != kind {
		t.Fatalf("%s: %s %s, want %s %s", file, tm.APIVersion, tm.Kind, apiVersion, kind)
	}
}

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{}
	decodeStrict(t, "deployment.yaml", "apps/v1", "Deployment", &m.deployment)
	decodeStrict(t, "service.yaml", "v1", "Service", &m.service)
	decodeStrict(t, "networkpolicy.yaml", "networking.k8s.io/v1", "NetworkPolicy", &m.network)
	decodeStrict(t, "policy.yaml", "v1", "ConfigMap", &m.policy)
	decodeStrict(t, "hpa.yaml", "autoscaling/v2", "HorizontalPodAutoscaler", &m.hpa)
	decodeStrict(t, "podmonitor.yaml", "monitoring.coreos.com/v1", "PodMonitor", &m.podMonitor)
	decodeStrict(t, "prometheus-adapter.yaml", "v1", "ConfigMap", &m.adapter)
	return m
}

// TestKustomizationListsEveryManifest: kubectl apply -k applies every
// manifest but the adapter's rule, and names only files that exist.
func TestKustomizationListsEveryManifest(t *testing.T) {
	var k kustomization
	decodeStrict(t, "kustomization.yaml", "kustomize.config.k8s.io/v1beta1", "Kustomization", &k)
	files, _ := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	var want []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && b != "prometheus-adapter.yaml" {
			want = append(want, b)
		}
	}
	got := slices.Sorted(slices.Values(k.Resources))
	if !slices.Equal(got, want) {
		t.Errorf("kustomization resources %q, want %q", got, want)
	}
}

func cellgateContainer(t *testing.T, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	cs := d.Spec.Template.Spec.Containers
	if len(cs) != 1 || cs[0].Name != "cellgate" {
		t.Fatalf("deployment containers %v, want one named cellgate", cs)
	}
	return &cs[0]
}

// portOf resolves a probe's or Service's port (a name or a number) to a
// container port.
func portOf(c *corev1.Container, p intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, cp := range c.Ports {
		if p.Type == intstr.String && cp.Name == p.StrVal || p.Type == intstr.Int && cp.ContainerPort == p.IntVal {
			return cp, true
		}
	}
	return corev1.ContainerPort{}, false
}

// flagValue returns --name=value from args.
func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// quantityEnv is the size the container's variable name sets (a
// Kubernetes quantity, as cellgate reads 128Mi), or def when unset.
func quantityEnv(t *testing.T, c *corev1.Container, name string, def int64) int64 {
	t.Helper()
	v := envValue(c, name)
	if v == "" {
		return def
	}
	q, err := resource.ParseQuantity(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return q.Value()
}

func envValue(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// TestDeploymentPod: unprivileged in its own user namespace, Guaranteed
// QoS, the listeners on the declared ports, probes on the admin handler's
// paths, and a grace period longer than preStop plus the drain.
func TestDeploymentPod(t *testing.T) {
	m := loadManifests(t)
	pod := &m.deployment.Spec.Template.Spec
	c := cellgateContainer(t, &m.deployment)

	if pod.HostUsers == nil || *pod.HostUsers {
		t.Error("hostUsers is not false: the pod would run in the node's user namespace")
	}
	sc := c.SecurityContext
	if sc == nil || sc.Privileged != nil && *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("the container must be unprivileged with allowPrivilegeEscalation: false")
	}
	if sc == nil || sc.Capabilities == nil {
		t.Error("the container's securityContext lists no capabilities: it would keep the runtime's defaults, not drop ALL")
	} else {
		if !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("capabilities drop %v, want ALL", sc.Capabilities.Drop)
		}
		need := []corev1.Capability{"SETUID", "SETGID", "KILL", "SYS_ADMIN", "NET_ADMIN", "CHOWN", "SETPCAP"}
		for _, add := range sc.Capabilities.Add {
			if !slices.Contains(need, add) {
				t.Errorf("capability %s added: cellgate needs %v only", add, need)
			}
		}
		for _, c := range need {
			if !slices.Contains(sc.Capabilities.Add, c) {
				t.Errorf("capability %s not added: cellgate needs %v (CHOWN: a fork route's cgroup.procs)", c, need)
			}
		}
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, lim := c.Resources.Requests[r], c.Resources.Limits[r]
		if lim.IsZero() || req.Cmp(lim) != 0 {
			t.Errorf("%s: request %s, limit %s: Guaranteed QoS needs both, equal", r, req.String(), lim.String())
		}
	}

	// Listeners and ports.
	for _, l := range []struct{ flag, port string }{{"listen", "http"}, {"admin", "admin"}} {
		addr := flagValue(c.Args, l.flag)
		_, portStr, _ := strings.Cut(addr, ":")
		port, err := strconv.Atoi(portStr)
		cp, ok := portOf(c, intstr.FromString(l.port))
		if err != nil || !ok || cp.ContainerPort != int32(port) {
			t.Errorf("--%s=%s and container port %q (%d) disagree", l.flag, addr, l.port, cp.ContainerPort)
		}
	}

	// Probes: on the admin port, at paths the admin handler answers 200
	// when ready.
	handler := accounting.AdminHandler(prometheus.NewRegistry(), func() error { return nil }, func() accounting.Status { return accounting.Status{} })
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"startup", c.StartupProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe: want an httpGet", p.name)
			continue
		}
		g := p.probe.HTTPGet
		if cp, ok := portOf(c, g.Port); !ok || cp.Name != "admin" {
			t.Errorf("%s probe on port %s: want the admin port", p.name, g.Port.String())
		}
		if g.Path != p.path {
			t.Errorf("%s probe path %s, want %s", p.name, g.Path, p.path)
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, g.Path, nil))
		if rec.Code != http.StatusOK {
			t.Errorf("%s probe path %s: the admin handler answers %d", p.name, g.Path, rec.Code)
		}
	}

	// Starting: the liveness probe restarts no pod before a start that
	// imports a fork route's app (sandbox.DefaultPreloadStart) could
	// have opened the admin port.
	if sp := c.StartupProbe; sp != nil {
		if window := time.Duration(sp.PeriodSeconds*sp.FailureThreshold) * time.Second; window < 2*sandbox.DefaultPreloadStart {
			t.Errorf("startupProbe allows %s, want at least two preloaders' imports, %s", window, 2*sandbox.DefaultPreloadStart)
		}
	}

	// Stopping: preStop, then SIGTERM and the drain, within the grace.
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Fatal("preStop: want a sleep action (no shell in the image)")
	}
	drain, err := time.ParseDuration(envValue(c, "CELLGATE_DRAIN_TIMEOUT"))
	if err != nil {
		t.Fatalf("CELLGATE_DRAIN_TIMEOUT: %v", err)
	}
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	if pre := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second; grace <= pre+drain {
		t.Errorf("terminationGracePeriodSeconds %s is not longer than preStop %s + drain %s", grace, pre, drain)
	}
}

// TestPolicyConfigMap: the policy is mounted as a directory (a subPath
// mount is never updated, so a change would never be reloaded), serve's
// --policy is in it, it is a valid policy, and its global memory budget
// fits in the container's memory limit.
func TestPolicyConfigMap(t *testing.T) {
	m := loadManifests(t)
	c := cellgateContainer(t, &m.deployment)
	pod := &m.deployment.Spec.Template.Spec
	var vol *corev1.Volume
	for i := range pod.Volumes {
		if cm := pod.Volumes[i].ConfigMap; cm != nil && cm.Name == m.policy.Name {
			vol = &pod.Volumes[i]
		}
	}
	if vol == nil {
		t.Fatalf("no volume of ConfigMap %s", m.policy.Name)
	}
	policyFlag := flagValue(c.Args, "policy")
	mounted := false
	for _, vm := range c.VolumeMounts {
		if vm.Name != vol.Name {
			continue
		}
		if vm.SubPath != "" {
			t.Errorf("volume %s is mounted with subPath %s: the kubelet never updates it", vm.Name, vm.SubPath)
		}
		key, ok := strings.CutPrefix(policyFlag, vm.MountPath+"/")
		if _, inMap := m.policy.Data[key]; ok && inMap {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("--policy=%s is not a key of ConfigMap %s mounted as a directory", policyFlag, m.policy.Name)
	}
	// /etc is in the cells' default view: the policy is covered there,
	// but a ConfigMap update swaps the file under the cover.
	if m := vol.ConfigMap.DefaultMode; m == nil || *m&0o077 != 0 {
		t.Errorf("volume %s: defaultMode %v, want the policy readable by its owner alone (0400)", vol.Name, m)
	}
	if envValue(c, "CELLGATE_POLICY_POLL") == "" {
		t.Error("CELLGATE_POLICY_POLL is not set: a changed ConfigMap would not be reloaded")
	}

	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(m.policy.Data["policy.yaml"]), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := policy.Load(path)
	if err != nil {
		t.Fatalf("the ConfigMap's policy: %v", err)
	}
	limit := c.Resources.Limits[corev1.ResourceMemory]
	if p.Global.Memory <= 0 || p.Global.Memory >= limit.Value() {
		t.Errorf("policy global.memory %d, container memory limit %s: the cells' budget must be set and below the limit", p.Global.Memory, limit.String())
	}
	// Beside the cells' budget cellgate holds its spools' memory and its
	// own (heap, goroutines, buffers: ownFloor at the least); its spool
	// files go to the volume at its temp dir, /tmp, within its sizeLimit.
	const ownFloor = 64 << 20
	spoolMem := quantityEnv(t, c, "CELLGATE_SPOOL_MEMORY", proxy.DefaultSpoolMemory)
	if p.Global.Memory+spoolMem+ownFloor > limit.Value() {
		t.Errorf("global.memory %d + spool memory %d + cellgate's own %d exceed the container's memory limit %s", p.Global.Memory, spoolMem, ownFloor, limit.String())
	}
	spoolDisk := quantityEnv(t, c, "CELLGATE_SPOOL_DISK", proxy.DefaultSpoolDisk)
	var tmp *corev1.Volume
	for _, vm := range c.VolumeMounts {
		for i := range pod.Volumes {
			if vm.MountPath == "/tmp" && pod.Volumes[i].Name == vm.Name {
				tmp = &pod.Volumes[i]
			}
		}
	}
	if tmp == nil || tmp.EmptyDir == nil || tmp.EmptyDir.SizeLimit == nil {
		t.Errorf("no emptyDir with a sizeLimit at /tmp, where the spools' files go")
	} else if spoolDisk > tmp.EmptyDir.SizeLimit.Value() {
		t.Errorf("spool disk %d is over the spool volume's sizeLimit %s: the pod would be evicted before cellgate answers 503", spoolDisk, tmp.EmptyDir.SizeLimit.String())
	}
	for _, r := range p.Routes {
		if !strings.HasPrefix(r.Program, imageShare+"/bin/cgi/") {
			t.Errorf("route %s runs %s, not one of the image's programs under %s/bin/cgi", r.Name, r.Program, imageShare)
		}
	}
}

// imageShare is where the image keeps the examples (cmd/image).
const imageShare = "/usr/local/share/cellgate"

// TestServiceAndPodMonitor: both select the Deployment's pods and name
// ports the container has.
func TestServiceAndPodMonitor(t *testing.T) {
	m := loadManifests(t)
	c := cellgateContainer(t, &m.deployment)
	labels := m.deployment.Spec.Template.Labels
	selects := func(sel map[string]string) bool {
		for k, v := range sel {
			if labels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	if !selects(m.service.Spec.Selector) || !selects(m.deployment.Spec.Selector.MatchLabels) {
		t.Errorf("service selector %v / deployment selector %v do not select the pod labels %v",
			m.service.Spec.Selector, m.deployment.Spec.Selector.MatchLabels, labels)
	}
	for _, p := range m.service.Spec.Ports {
		if cp, ok := portOf(c, p.TargetPort); !ok || cp.Name != "http" {
			t.Errorf("service port %s targets %s: want the container's http port (never admin)", p.Name, p.TargetPort.String())
		}
	}
	if !selects(m.podMonitor.Spec.Selector.MatchLabels) {
		t.Errorf("PodMonitor selector %v does not select the pod labels %v", m.podMonitor.Spec.Selector.MatchLabels, labels)
	}
	for _, e := range m.podMonitor.Spec.PodMetricsEndpoints {
		if e.Port == nil || *e.Port != "admin" || e.Path != "/metrics" {
			t.Errorf("PodMonitor endpoint port %v path %s: want admin, /metrics", e.Port, e.Path)
		}
	}
}

// TestNetworkPolicy: the pods' ingress is the public port from anywhere
// and the admin port (no authentication; /status shows every tenant's
// requests) only from pods selected by namespace and pod labels, never
// from every namespace, every pod or an address block.
func TestNetworkPolicy(t *testing.T) {
	m := loadManifests(t)
	c := cellgateContainer(t, &m.deployment)
	np := &m.network.Spec
	labels := m.deployment.Spec.Template.Labels
	for k, v := range np.PodSelector.MatchLabels {
		if labels[k] != v {
			t.Errorf("NetworkPolicy podSelector %v does not select the pod labels %v", np.PodSelector.MatchLabels, labels)
		}
	}
	if len(np.PodSelector.MatchLabels) == 0 || len(np.PodSelector.MatchExpressions) > 0 {
		t.Errorf("NetworkPolicy podSelector %v: want the pod's labels, no expressions", np.PodSelector)
	}
	if !slices.Contains(np.PolicyTypes, networkingv1.PolicyTypeIngress) {
		t.Errorf("NetworkPolicy policyTypes %v: want Ingress", np.PolicyTypes)
	}
	// Every port a rule names is the container's: a misspelt name would
	// admit nothing.
	for _, r := range np.Ingress {
		for _, p := range r.Ports {
			if p.Port == nil {
				continue
			}
			if _, ok := portOf(c, *p.Port); !ok {
				t.Errorf("NetworkPolicy names port %s, which the container does not have", p.Port.String())
			}
		}
	}
	public, _ := portOf(c, intstr.FromString("http"))
	admin, _ := portOf(c, intstr.FromString("admin"))
	publicOpen := false
	for i, r := range np.Ingress {
		if admitsPort(c, r, public) && len(r.From) == 0 {
			publicOpen = true
		}
		if !admitsPort(c, r, admin) {
			continue
		}
		if len(r.From) == 0 {
			t.Errorf("ingress rule %d admits the admin port from anywhere", i)
		}
		for _, peer := range r.From {
			if !narrow(peer.NamespaceSelector) || !narrow(peer.PodSelector) || peer.IPBlock != nil {
				t.Errorf("ingress rule %d admits the admin port from %+v: want a namespace and pod selector with labels each, no ipBlock", i, peer)
			}
		}
	}
	if !publicOpen {
		t.Error("no ingress rule admits the public port (http) from anywhere")
	}
}

// admitsPort reports whether an ingress rule admits TCP to container port
// cp (a rule without ports admits every port).
func admitsPort(c *corev1.Container, r networkingv1.NetworkPolicyIngressRule, cp corev1.ContainerPort) bool {
	if len(r.Ports) == 0 {
		return true
	}
	for _, p := range r.Ports {
		if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		if p.Port == nil {
			return true
		}
		if p.EndPort != nil && p.Port.Type == intstr.Int && p.Port.IntVal <= cp.ContainerPort && cp.ContainerPort <= *p.EndPort {
			return true
		}
		if got, ok := portOf(c, *p.Port); ok && got.ContainerPort == cp.ContainerPort {
			return true
		}
	}
	return false
}

// narrow reports whether a selector is set and selects by labels (nil or
// empty would be every pod of the namespace, or every namespace).
func narrow(s *metav1.LabelSelector) bool {
	return s != nil && (len(s.MatchLabels) > 0 || len(s.MatchExpressions) > 0)
}

// exportedMetrics are the names on cellgate's /metrics, from the
// collectors serve registers (one tenant in flight, so that every series
// family has a sample).
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	if _, err := accounting.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(accounting.NewAdmissionCollector(func() []accounting.AdmissionStats {
		return []accounting.AdmissionStats{{Tenant: "web", InFlight: 1, Queued: 1}}
	}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	return names
}

var seriesName = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)\{`)

// TestAutoscalerMetric: the HPA scales the Deployment on a custom metric
// that the adapter's rule exposes, from a series cellgate exports.
func TestAutoscalerMetric(t *testing.T) {
	m := loadManifests(t)
	ref := m.hpa.Spec.ScaleTargetRef
	if ref.Kind != "Deployment" || ref.Name != m.deployment.Name || ref.APIVersion != "apps/v1" {
		t.Errorf("HPA scales %s %s %s, want apps/v1 Deployment %s", ref.APIVersion, ref.Kind, ref.Name, m.deployment.Name)
	}
	var cfg adapterConfig
	dec := json.NewDecoder(bytes.NewReader(mustJSON(t, m.adapter.Data["config.yaml"])))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("prometheus-adapter.yaml config.yaml: %v", err)
	}
	exported := exportedMetrics(t)
	exposed := map[string]bool{}
	for _, r := range cfg.Rules {
		sm := seriesName.FindStringSubmatch(r.SeriesQuery)
		if sm == nil || !exported[sm[1]] {
			t.Errorf("adapter rule's seriesQuery %q: not a series cellgate exports", r.SeriesQuery)
			continue
		}
		if ok, _ := regexp.MatchString(r.Name.Matches, sm[1]); !ok {
			t.Errorf("adapter rule name.matches %q does not match its series %s", r.Name.Matches, sm[1])
		}
		for _, l := range []string{"namespace", "pod"} {
			if r.Resources.Overrides[l].Resource != l {
				t.Errorf("adapter rule for %s: label %s is not mapped to the %s resource (Pods metrics need both)", sm[1], l, l)
			}
		}
		exposed[r.Name.As] = true
	}
	if len(m.hpa.Spec.Metrics) == 0 {
		t.Fatal("HPA has no metrics")
	}
	for _, hm := range m.hpa.Spec.Metrics {
		if hm.Type != autoscalingv2.PodsMetricSourceType || hm.Pods == nil {
			t.Errorf("HPA metric of type %s: want Pods (per-pod cells in flight)", hm.Type)
			continue
		}
		if name := hm.Pods.Metric.Name; !exposed[name] {
			t.Errorf("HPA metric %s: no prometheus-adapter rule exposes it", name)
		}
		if v := hm.Pods.Target.AverageValue; v == nil || v.Cmp(resource.MustParse("0")) <= 0 {
			t.Errorf("HPA metric %s: want a positive averageValue target", hm.Pods.Metric.Name)
		}
	}
}

// mustJSON converts a YAML document to JSON (for a decode that refuses
// unknown fields).
func mustJSON(t *testing.T, y string) []byte {
	t.Helper()
	j, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// TestSeccompProfile: the pod's Localhost profile is the one in
// deploy/seccomp, decodes strictly as an OCI seccomp profile (the format
// the kubelet and docker --security-opt seccomp= read), and denies none of
// the calls cellgate and cellgate-init need to start, confine and end cells
// (clone3 above all, which the runtimes' default profiles refuse).
func TestSeccompProfile(t *testing.T) {
	m := loadManifests(t)
	sp := m.deployment.Spec.Template.Spec.SecurityContext.SeccompProfile
	if sp == nil || sp.Type != corev1.SeccompProfileTypeLocalhost || sp.LocalhostProfile == nil {
		t.Fatalf("pod seccompProfile %+v: want Localhost (RuntimeDefault refuses clone3)", sp)
	}
	b, err := os.ReadFile(filepath.Join("seccomp", *sp.LocalhostProfile))
	if err != nil {
		t.Fatalf("the pod's profile %s: %v", *sp.LocalhostProfile, err)
	}
	var prof specs.LinuxSeccomp
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&prof); err != nil {
		t.Fatalf("seccomp/%s: %v", *sp.LocalhostProfile, err)
	}
	if prof.DefaultAction != specs.ActAllow {
		t.Errorf("defaultAction %s: the profile is a deny list over SCMP_ACT_ALLOW", prof.DefaultAction)
	}
	needed := []string{"clone", "clone3", "unshare", "mount", "umount2", "pivot_root", "sethostname", "seccomp", "execve", "wait4", "waitid", "kill", "pidfd_open", "pidfd_send_signal",
		"setuid", "setgid", "setgroups", "setresuid", "setresgid", "prctl", "mkdirat", "unlinkat", "openat",
		"epoll_pwait", "sendfile", "prlimit64",
		"fsopen", "fsconfig", "fsmount"} // a resident cell's init: its message queues' file system (ipc_wipe)
	for _, r := range prof.Syscalls {
		if r.Action == specs.ActAllow {
			continue
		}
		for _, n := range r.Names {
			if slices.Contains(needed, n) {
				t.Errorf("the profile denies %s, which cellgate needs", n)
			}
		}
		if r.ErrnoRet == nil || *r.ErrnoRet == 0 {
			t.Errorf("rule %v: want an errnoRet (EPERM), not a kill", r.Names)
		}
	}
	// setns only of a user namespace, with which a program run as root
	// enters its own (confine.Plan.RootMap): any other type, 0 (any)
	// included, is denied.
	if !slices.ContainsFunc(prof.Syscalls, func(r specs.LinuxSyscall) bool {
		return r.Action == specs.ActErrno && slices.Equal(r.Names, []string{"setns"}) &&
			slices.Equal(r.Args, []specs.LinuxSeccompArg{{Index: 1, Value: unix.CLONE_NEWUSER, Op: specs.OpNotEqual}})
	}) {
		t.Errorf("the profile does not deny setns of any type but a user namespace (CLONE_NEWUSER)")
	}
	for _, n := range []string{"setns", "ptrace", "bpf", "init_module", "kexec_load", "keyctl", "userfaultfd"} {
		if !slices.ContainsFunc(prof.Syscalls, func(r specs.LinuxSyscall) bool {
			return r.Action == specs.ActErrno && slices.Contains(r.Names, n)
		}) {
			t.Errorf("the profile does not deny %s", n)
		}
	}
}
