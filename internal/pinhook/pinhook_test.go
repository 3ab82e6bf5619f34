package pinhook

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/registry/registrytest"
	"github.com/imagepin/imagepin/internal/testenv"
	"github.com/imagepin/imagepin/internal/verify"
	"github.com/imagepin/imagepin/internal/workload"
)

// The webhook is served by a manager and registered with envtest's real
// API server from config/webhook, as a cluster would call it.

var (
	cfg   *rest.Config
	k8s   client.Client
	reg   *registrytest.Registry
	flaky *registrytest.Registry
	// resolver is the webhook's: a test gives it what a controller's
	// check would have learnt.
	resolver *registry.Resolver
	// warnings collects the admission warnings the API server relays.
	warnings = &warningCollector{}
)

type warningCollector struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warningCollector) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, msg)
}

func (w *warningCollector) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.msgs
	w.msgs = nil
	return out
}

// TestMain starts the control plane only when a test asks for it
// (needCluster): the pure tests and the fuzz targets, which call the
// handler directly, run without one.
func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	for i := len(cluster.stop) - 1; i >= 0; i-- {
		cluster.stop[i]()
	}
	os.Exit(code)
}

var cluster struct {
	once sync.Once
	err  error
	stop []func()
}

// needCluster starts, once per test binary, envtest's API server with the
// webhook registered, kube-controller-manager, the in-process registries
// and a manager serving the webhook.
func needCluster(t testing.TB) {
	t.Helper()
	cluster.once.Do(func() { cluster.err = startCluster() })
	if cluster.err != nil {
		t.Fatalf("start the control plane: %v", cluster.err)
	}
}

func startCluster() error {
	ctrl.SetLogger(logr.Discard())
	env := &envtest.Environment{
		BinaryAssetsDirectory: testenv.AssetsDir(),
		// Argo Rollouts' CRDs too: the webhook pins Rollouts.
		// And the test pod-template CRDs the webhook is configured with.
		CRDDirectoryPaths: []string{
			filepath.Join(testenv.RepoRoot(), "config", "crd", "bases"), filepath.Join(testenv.ArgoRolloutsDir(), "crds"),
			filepath.Join(testenv.RepoRoot(), "internal", "testenv", "crds"),
		},
		ErrorIfCRDPathMissing: true,
		WebhookInstallOptions: envtest.WebhookInstallOptions{Paths: []string{filepath.Join(testenv.RepoRoot(), "config", "webhook")}},
	}
	s := testenv.Scheme()
	env.Scheme = s
	var err error
	if cfg, err = env.Start(); err != nil {
		return err
	}
	cluster.stop = append(cluster.stop, func() { _ = env.Stop() })
	if err := workload.ConfigureFlags(testenv.ConfiguredKinds); err != nil {
		return err
	}
	// kube-controller-manager makes ReplicaSets and Pods, so that a pinned
	// Deployment's rollout can be counted.
	dir, err := os.MkdirTemp("", "imagepin-pinhook-")
	if err != nil {
		return err
	}
	cluster.stop = append(cluster.stop, func() { _ = os.RemoveAll(dir) })
	stopKCM, err := (&testenv.Env{Env: env, Config: cfg, Scheme: s}).StartControllerManager(dir)
	if err != nil {
		return err
	}
	cluster.stop = append(cluster.stop, stopKCM)
	// The admin's part of configuring a kind: a rule for it in the
	// webhook configuration (README: Other pod-template kinds).
	if err := addConfiguredKindsRule(cfg, s); err != nil {
		return err
	}
	warnCfg := rest.CopyConfig(cfg)
	warnCfg.WarningHandlerWithContext = warnings
	if k8s, err = client.New(warnCfg, client.Options{Scheme: s}); err != nil {
		return err
	}
	reg, flaky = registrytest.New(), registrytest.New()
	cluster.stop = append(cluster.stop, reg.Close, flaky.Close)
	if blackhole, err = startBlackhole(); err != nil {
		return err
	}
	cluster.stop = append(cluster.stop, blackhole.Close)
	resolver, err = registry.New(registry.Options{InsecureRegistries: []string{reg.Host, flaky.Host, blackhole.Host}, Timeout: 5 * time.Second, MaxStale: time.Hour})
	if err != nil {
		return err
	}
	wo := env.WebhookInstallOptions
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  s,
		Metrics: metricsserver.Options{BindAddress: "0"},
		WebhookServer: webhook.NewServer(webhook.Options{
			Host: wo.LocalServingHost, Port: wo.LocalServingPort, CertDir: wo.LocalServingCertDir,
		}),
	})
	if err != nil {
		return err
	}
	mgr.GetWebhookServer().Register(Path, &webhook.Admission{Handler: &Handler{
		Reader: mgr.GetClient(), Resolver: resolver, Keychains: &registry.Keychains{Reader: mgr.GetClient()},
		Verifier: verify.New(resolver, nil, nil), VerifyLoader: &verify.Loader{Reader: mgr.GetAPIReader()},
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	cluster.stop = append(cluster.stop, func() {
		cancel()
		if err := <-done; err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	})
	return nil
}

func namespace(t testing.TB) string {
	t.Helper()
	needCluster(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "hook-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func deployment(ns, name, app string, images ...string) *appsv1.Deployment {
	labels := map[string]string{"app": app}
	var cs []corev1.Container
	for i, img := range images {
		cs = append(cs, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: img})
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: cs}},
		},
	}
}

// pinFor creates a Pin ImagePin for app=<app> and waits until the
// webhook's cache holds it (a Deployment created before would not be
// pinned; that is the point of the cache, not a failure).
func pinFor(t testing.TB, ns, app string, opts ...func(*imagesv1alpha1.ImagePin)) {
	t.Helper()
	p := &imagesv1alpha1.ImagePin{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app},
		Spec: imagesv1alpha1.ImagePinSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			Mode:     imagesv1alpha1.ModePin,
		},
	}
	for _, o := range opts {
		o(p)
	}
	if err := k8s.Create(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	// Probe with a dry-run until the webhook pins: its cache has the pin.
	reg.Push(t, "probe/app:v1")
	waitPinned(t, deployment(ns, "probe", app, reg.Image("probe/app:v1")))
}

// waitPinned dry-runs probe until the webhook pins it.
func waitPinned(t testing.TB, probe *appsv1.Deployment) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		d := probe.DeepCopy()
		if err := k8s.Create(context.Background(), d, client.DryRunAll); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(d.Spec.Template.Spec.Containers[0].Image, "@sha256:") {
			warnings.take()
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the webhook never pinned a probe: is it registered and serving?")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestDeploymentIsStoredPinned(t *testing.T) {
	ns := namespace(t)
	digest := reg.Push(t, "web/app:v1")
	sidecar := reg.Push(t, "web/proxy:v2")
	pinFor(t, ns, "web")

	d := deployment(ns, "web", "web", reg.Image("web/app:v1"), reg.Image("web/proxy:v2"))
	if err := k8s.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	var got appsv1.Deployment
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(d), &got); err != nil {
		t.Fatal(err)
	}
	cs := got.Spec.Template.Spec.Containers
	if cs[0].Image != reg.Image("web/app:v1")+"@"+digest || cs[1].Image != reg.Image("web/proxy:v2")+"@"+sidecar {
		t.Fatalf("stored images %s, %s; want both pinned", cs[0].Image, cs[1].Image)
	}

	// Applying the same tag-only manifest again keeps the digest it runs,
	// even after the tag moved: no rollout for an unchanged spec.
	reg.Push(t, "web/app:v1")
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(d), &got); err != nil {
			return err
		}
		got.Spec.Template.Spec.Containers[0].Image = reg.Image("web/app:v1")
		return k8s.Update(context.Background(), &got)
	})
	if err != nil {
		t.Fatal(err)
	}
	if img := got.Spec.Template.Spec.Containers[0].Image; img != reg.Image("web/app:v1")+"@"+digest {
		t.Fatalf("re-applied tag-only manifest stored %s, want the digest it already ran (%s)", img, digest)
	}
	if got.Generation != 1 {
		t.Fatalf("generation = %d after re-applying an unchanged manifest, want 1", got.Generation)
	}
}

func TestOutsideTheSelectorIsUntouched(t *testing.T) {
	ns := namespace(t)
	reg.Push(t, "other/app:v1")
	pinFor(t, ns, "web")
	d := deployment(ns, "other", "other", reg.Image("other/app:v1"))
	if err := k8s.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if img := d.Spec.Template.Spec.Containers[0].Image; img != reg.Image("other/app:v1") {
		t.Fatalf("an unselected Deployment was mutated: %s", img)
	}
}

func TestUnresolvableTagIsAdmittedWithAWarning(t *testing.T) {
	ns := namespace(t)
	pinFor(t, ns, "web")
	d := deployment(ns, "ghost", "web", reg.Image("ghost/app:nope"))
	start := time.Now()
	if err := k8s.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("admission took %s, beyond the webhook timeout", took)
	}
	if img := d.Spec.Template.Spec.Containers[0].Image; img != reg.Image("ghost/app:nope") {
		t.Fatalf("stored %s, want it admitted unpinned", img)
	}
	ws := strings.Join(warnings.take(), "\n")
	if !strings.Contains(ws, "admitted unpinned") || !strings.Contains(ws, reg.Image("ghost/app:nope")) || !strings.Contains(ws, "not found") {
		t.Fatalf("warnings %q do not name the image and the reason", ws)
	}
}

func TestRegistryDownWithFailurePolicyFailRefuses(t *testing.T) {
	ns := namespace(t)
	pinFor(t, ns, "strict", func(p *imagesv1alpha1.ImagePin) { p.Spec.FailurePolicy = imagesv1alpha1.FailurePolicyFail })
	flaky.Push(t, "strict/app:v1")
	flaky.SetDown(true)
	defer flaky.SetDown(false)
	d := deployment(ns, "strict", "strict", flaky.Image("strict/app:v1"))
	err := k8s.Create(context.Background(), d)
	if err == nil || !strings.Contains(err.Error(), "failurePolicy: Fail") || !strings.Contains(err.Error(), flaky.Image("strict/app:v1")) {
		t.Fatalf("want a refusal naming the policy and the image, got %v", err)
	}
}

func TestDryRunAndOwnedPods(t *testing.T) {
	ns := namespace(t)
	digest := reg.Push(t, "dry/app:v1")
	pinFor(t, ns, "dry")
	d := deployment(ns, "dry", "dry", reg.Image("dry/app:v1"))
	if err := k8s.Create(context.Background(), d, client.DryRunAll); err != nil {
		t.Fatal(err)
	}
	if img := d.Spec.Template.Spec.Containers[0].Image; img != reg.Image("dry/app:v1")+"@"+digest {
		t.Fatalf("dry-run returned %s, want it pinned", img)
	}
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(d), &appsv1.Deployment{}); err == nil {
		t.Fatal("a dry-run stored the Deployment")
	}

	// A Pod with a controller is its template's business; a bare Pod is
	// pinned like a workload.
	owned := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "owned", Labels: map[string]string{"app": "dry"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "rs", UID: "u1", Controller: new(true)}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: reg.Image("dry/app:v1")}}},
	}
	bare := owned.DeepCopy()
	bare.Name, bare.OwnerReferences = "bare", nil
	if err := k8s.Create(context.Background(), owned); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(context.Background(), bare); err != nil {
		t.Fatal(err)
	}
	if img := owned.Spec.Containers[0].Image; img != reg.Image("dry/app:v1") {
		t.Fatalf("a Pod owned by a controller was mutated: %s", img)
	}
	if img := bare.Spec.Containers[0].Image; img != reg.Image("dry/app:v1")+"@"+digest {
		t.Fatalf("a bare Pod was not pinned: %s", img)
	}
}

// A Deployment applied through the webhook arrives pinned: one ReplicaSet,
// whose Pods (owned by it) are not mutated again, and no second rollout.
func TestPinnedAtAdmissionRollsOutOnce(t *testing.T) {
	ns := namespace(t)
	digest := reg.Push(t, "once/app:v1")
	pinFor(t, ns, "once")
	d := deployment(ns, "once", "once", reg.Image("once/app:v1"))
	if err := k8s.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	want := reg.Image("once/app:v1") + "@" + digest
	deadline := time.Now().Add(30 * time.Second)
	for {
		var rss appsv1.ReplicaSetList
		if err := k8s.List(context.Background(), &rss, client.InNamespace(ns), client.MatchingLabels{"app": "once"}); err != nil {
			t.Fatal(err)
		}
		var pods corev1.PodList
		if err := k8s.List(context.Background(), &pods, client.InNamespace(ns), client.MatchingLabels{"app": "once"}); err != nil {
			t.Fatal(err)
		}
		if len(rss.Items) == 1 && len(pods.Items) == 1 {
			if img := rss.Items[0].Spec.Template.Spec.Containers[0].Image; img != want {
				t.Fatalf("ReplicaSet image %s, want %s", img, want)
			}
			if img := pods.Items[0].Spec.Containers[0].Image; img != want {
				t.Fatalf("Pod image %s, want %s", img, want)
			}
			break
		}
		if len(rss.Items) > 1 {
			t.Fatalf("%d ReplicaSets, want exactly one", len(rss.Items))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d ReplicaSets and %d Pods after 30s, want 1 and 1", len(rss.Items), len(pods.Items))
		}
		time.Sleep(200 * time.Millisecond)
	}
	var got appsv1.Deployment
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(d), &got); err != nil {
		t.Fatal(err)
	}
	if got.Generation != 1 {
		t.Fatalf("generation %d, want 1: the Deployment was stored pinned, not rewritten after", got.Generation)
	}
}

// BenchmarkAdmission creates Deployments through the API server with the
// webhook, on a cache hit (one tag for all) and a miss (a new tag each
// time), against the same without an ImagePin (the webhook answers at once),
// and reports p50 and p99 in milliseconds.
func BenchmarkAdmission(b *testing.B) {
	ns := namespace(b)
	pinFor(b, ns, "bench")
	reg.Push(b, "bench/app:v1")
	for _, tc := range []struct {
		name  string
		app   string
		image func(i int) string
	}{
		{"no-imagepin", "other", func(int) string { return reg.Image("bench/app:v1") }},
		{"cache-hit", "bench", func(int) string { return reg.Image("bench/app:v1") }},
		{"cache-miss", "bench", func(i int) string {
			tag := fmt.Sprintf("bench/app:miss-%d-%d", time.Now().UnixNano(), i)
			reg.Push(b, tag)
			return reg.Image(tag)
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var times []time.Duration
			for i := range b.N {
				d := deployment(ns, fmt.Sprintf("%s-%d-%d", tc.name, time.Now().UnixNano(), i), tc.app, tc.image(i))
				start := time.Now()
				if err := k8s.Create(context.Background(), d); err != nil {
					b.Fatal(err)
				}
				times = append(times, time.Since(start))
			}
			sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
			pct := func(p float64) float64 {
				return float64(times[int(p*float64(len(times)-1))].Microseconds()) / 1000
			}
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
		})
	}
}

// The registry stopped under the default failurePolicy: admitted unpinned
// with a warning, inside the webhook's timeout.
func TestRegistryDownIsAdmittedWithAWarning(t *testing.T) {
	ns := namespace(t)
	pinFor(t, ns, "lenient")
	flaky.Push(t, "lenient/app:v1")
	flaky.SetDown(true)
	defer flaky.SetDown(false)
	d := deployment(ns, "lenient", "lenient", flaky.Image("lenient/app:v1"))
	start := time.Now()
	if err := k8s.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("admission took %s, beyond the webhook's 5s timeout", took)
	}
	if img := d.Spec.Template.Spec.Containers[0].Image; img != flaky.Image("lenient/app:v1") {
		t.Fatalf("stored %s, want it admitted unpinned", img)
	}
	if ws := strings.Join(warnings.take(), "\n"); !strings.Contains(ws, "admitted unpinned") || !strings.Contains(ws, flaky.Image("lenient/app:v1")) {
		t.Fatalf("warnings %q do not name the image", ws)
	}
}

// Issue 14 item 4: the webhook pins an image volume's reference as it pins
// containers, and an untagged one with the tag it implies.
func TestImageVolumeIsStoredPinned(t *testing.T) {
	ns := namespace(t)
	app := reg.Push(t, "volhook/app:v1")
	models := reg.Push(t, "volhook/models:latest")
	pinFor(t, ns, "vol")

	d := deployment(ns, "vol", "vol", reg.Image("volhook/app:v1"))
	d.Spec.Template.Spec.Volumes = []corev1.Volume{{Name: "models", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: reg.Image("volhook/models")}}}}
	d.Spec.Template.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "models", MountPath: "/models"}}
	if err := k8s.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	var got appsv1.Deployment
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(d), &got); err != nil {
		t.Fatal(err)
	}
	if img := got.Spec.Template.Spec.Containers[0].Image; img != reg.Image("volhook/app:v1")+"@"+app {
		t.Fatalf("container stored as %s, want pinned", img)
	}
	if ref := got.Spec.Template.Spec.Volumes[0].Image.Reference; ref != reg.Image("volhook/models:latest")+"@"+models {
		t.Fatalf("image volume stored as %s, want %s:latest@%s", ref, reg.Image("volhook/models"), models)
	}
}

// Issue 14 item 2: the webhook pins an Argo Rollout's template as it pins a
// Deployment's.
func TestRolloutIsStoredPinned(t *testing.T) {
	ns := namespace(t)
	digest := reg.Push(t, "rohook/app:v1")
	pinFor(t, ns, "ro")
	ro := testenv.Rollout(ns, "ro", reg.Image("rohook/app:v1"), 1)
	if err := k8s.Create(context.Background(), ro); err != nil {
		t.Fatal(err)
	}
	img, _, _ := unstructured.NestedSlice(ro.Object, "spec", "template", "spec", "containers")
	if got := img[0].(map[string]any)["image"]; got != reg.Image("rohook/app:v1")+"@"+digest {
		t.Fatalf("Rollout stored with %v, want it pinned", got)
	}
}

// Issue 14 item 2: a Rollout with spec.workloadRef has no template of its
// own: the webhook admits it unchanged (before, it answered 400, which the
// API server takes as a refusal, for every such Rollout in the cluster).
func TestRolloutWithWorkloadRefIsAdmitted(t *testing.T) {
	ns := namespace(t)
	pinFor(t, ns, "wref")
	ro := testenv.RolloutOf(ns, "wref", "wref-app", 1)
	if err := k8s.Create(context.Background(), ro); err != nil {
		t.Fatalf("create: %v", err)
	}
	ro.SetLabels(map[string]string{"app": "wref", "tier": "web"})
	if err := k8s.Update(context.Background(), ro); err != nil {
		t.Fatalf("update: %v", err)
	}
}

// addConfiguredKindsRule adds the test CRDs to the webhook's rules.
func addConfiguredKindsRule(cfg *rest.Config, s *runtime.Scheme) error {
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		return err
	}
	var mwcs admissionregistrationv1.MutatingWebhookConfigurationList
	if err := c.List(context.Background(), &mwcs); err != nil {
		return err
	}
	for i := range mwcs.Items {
		mwc := &mwcs.Items[i]
		for j := range mwc.Webhooks {
			mwc.Webhooks[j].Rules = append(mwc.Webhooks[j].Rules, admissionregistrationv1.RuleWithOperations{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
				Rule: admissionregistrationv1.Rule{
					APIGroups: []string{"training.example.com", "batch.example.com"}, APIVersions: []string{"v1"},
					Resources: []string{"trainjobs", "batchsets"},
				},
			})
		}
		if err := c.Update(context.Background(), mwc); err != nil {
			return err
		}
	}
	return nil
}

// Issue 14 item 3: the webhook pins a configured kind's every replica spec
// at admission: a map of them (TrainJob) and a list (BatchSet, whose
// template is immutable: pinned when it is created).
func TestConfiguredKindsAreStoredPinned(t *testing.T) {
	ns := namespace(t)
	a := reg.Push(t, "cfghook/model:v1")
	l := reg.Push(t, "cfghook/log:v1")
	image, sidecar := reg.Image("cfghook/model:v1"), reg.Image("cfghook/log:v1")
	pinFor(t, ns, "bert")
	tj := testenv.TrainJob(ns, "bert",
		testenv.Replica{Name: "Master", Containers: [][2]string{{"trainer", image}}},
		testenv.Replica{Name: "Worker", Containers: [][2]string{{"trainer", image}, {"log", sidecar}}})
	if err := k8s.Create(context.Background(), tj); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"Master/0": image + "@" + a, "Worker/0": image + "@" + a, "Worker/1": sidecar + "@" + l,
	} {
		replica, i, _ := strings.Cut(path, "/")
		cs, _, _ := unstructured.NestedSlice(tj.Object, "spec", "replicaSpecs", replica, "template", "spec", "containers")
		n, _ := strconv.Atoi(i)
		if n >= len(cs) || cs[n].(map[string]any)["image"] != want {
			t.Errorf("TrainJob %s stored as %v, want %s", path, cs, want)
		}
	}

	pinFor(t, ns, "etl")
	bs := testenv.BatchSet(ns, "etl",
		testenv.Replica{Name: "driver", Containers: [][2]string{{"drv", image}}},
		testenv.Replica{Name: "workers", Containers: [][2]string{{"wrk", sidecar}}})
	if err := k8s.Create(context.Background(), bs); err != nil {
		t.Fatal(err)
	}
	jobs, _, _ := unstructured.NestedSlice(bs.Object, "spec", "replicatedJobs")
	for i, want := range []string{image + "@" + a, sidecar + "@" + l} {
		cs, _, _ := unstructured.NestedSlice(jobs[i].(map[string]any), "template", "spec", "template", "spec", "containers")
		if cs[0].(map[string]any)["image"] != want {
			t.Errorf("BatchSet replicatedJobs[%d] stored as %v, want %s", i, cs[0], want)
		}
	}
	// An update of the immutable kind that changes no image is admitted
	// as it is.
	bs.SetLabels(map[string]string{"app": "etl", "tier": "batch"})
	if err := k8s.Update(context.Background(), bs); err != nil {
		t.Fatalf("update: %v", err)
	}
}
