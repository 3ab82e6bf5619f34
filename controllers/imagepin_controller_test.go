package controllers

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/registry/registrytest"
	"github.com/imagepin/imagepin/internal/testenv"
	"github.com/imagepin/imagepin/internal/workload"
)

var (
	env *testenv.Env
	// k8s talks to the API server directly, never through a cache, so a
	// test sees what is stored.
	k8s client.Client
	// reg is the registry the tests push to; resolver resolves against it
	// for the manager the tests run.
	reg      *registrytest.Registry
	resolver *registry.Resolver
	// flaky is a registry one test takes down.
	flaky *registrytest.Registry
	// cached is the manager's client, reading through its cache and
	// indexes, for reconcilers the tests call directly.
	cached client.Client
	// podStore is the manager's pod store, for reconcilers a test runs
	// itself.
	podStore *workload.PodStore
)

// unreachable names a registry nothing listens on: its tags fail to resolve
// at once.
const unreachable = "127.0.0.1:1"

// TestMain starts the real API server and a manager running the ImagePin
// controller against it, as the binary does.
func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	ctrl.SetLogger(logr.Discard())
	var err error
	env, err = testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop control plane:", err)
		}
	}()
	if k8s, err = client.New(env.Config, client.Options{Scheme: env.Scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	reg, flaky = registrytest.New(), registrytest.New()
	defer reg.Close()
	defer flaky.Close()
	resolver, err = registry.New(registry.Options{InsecureRegistries: []string{reg.Host, flaky.Host, unreachable}, Timeout: 3 * time.Second, MaxStale: time.Hour})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The cache as the manager's main.go builds it: slimmed, packed.
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:  env.Scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   workload.CacheOptions(),
		Client:  client.Options{Cache: &client.CacheOptions{Unstructured: true}},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cached = mgr.GetClient()
	// The test pod-template CRDs, handled by configuration; their CRDs
	// are installed by a test, after the start.
	if err := workload.ConfigureFlags(testenv.ConfiguredKinds); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pins := &ImagePinReconciler{
		Client: mgr.GetClient(), Resolver: resolver,
		Recorder: mgr.GetEventRecorder("imagepin"),
		// Argo Rollouts' CRD is installed by a test, after the start.
		ServedPoll: time.Second,
	}
	if err := pins.SetupWithManager(mgr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	podStore = pins.Pods
	if err := (&ClusterImagePinReconciler{ImagePinReconciler: pins}).SetupWithManager(mgr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return testenv.RunWithManager(m, mgr)
}

// --- fixtures ---

// namespace creates a fresh namespace for one test.
func namespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ipin-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

type podOpt func(meta *metav1.ObjectMeta, spec *corev1.PodSpec)

func withLabels(kv ...string) podOpt {
	return func(m *metav1.ObjectMeta, _ *corev1.PodSpec) {
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m.Labels[kv[i]] = kv[i+1]
		}
	}
}

func withImage(container, image string) podOpt {
	return func(_ *metav1.ObjectMeta, s *corev1.PodSpec) {
		s.Containers = append(s.Containers, corev1.Container{Name: container, Image: image})
	}
}

func withInitImage(container, image string) podOpt {
	return func(_ *metav1.ObjectMeta, s *corev1.PodSpec) {
		s.InitContainers = append(s.InitContainers, corev1.Container{Name: container, Image: image})
	}
}

func build(opts []podOpt) (metav1.ObjectMeta, corev1.PodSpec) {
	var m metav1.ObjectMeta
	var s corev1.PodSpec
	for _, o := range opts {
		o(&m, &s)
	}
	if len(s.Containers) == 0 {
		s.Containers = []corev1.Container{{Name: "app", Image: unreachable + "/app:v1"}}
	}
	return m, s
}

func deployment(ns, name string, opts ...podOpt) *appsv1.Deployment {
	m, s := build(opts)
	m.Name, m.Namespace = name, ns
	podLabels := map[string]string{"pod": name}
	return &appsv1.Deployment{ObjectMeta: m, Spec: appsv1.DeploymentSpec{
		Selector: &metav1.LabelSelector{MatchLabels: podLabels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: podLabels}, Spec: s},
	}}
}

func statefulSet(ns, name string, opts ...podOpt) *appsv1.StatefulSet {
	m, s := build(opts)
	m.Name, m.Namespace = name, ns
	podLabels := map[string]string{"pod": name}
	return &appsv1.StatefulSet{ObjectMeta: m, Spec: appsv1.StatefulSetSpec{
		Selector: &metav1.LabelSelector{MatchLabels: podLabels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: podLabels}, Spec: s},
	}}
}

func cronJob(ns, name string, opts ...podOpt) *batchv1.CronJob {
	m, s := build(opts)
	m.Name, m.Namespace = name, ns
	s.RestartPolicy = corev1.RestartPolicyNever
	return &batchv1.CronJob{ObjectMeta: m, Spec: batchv1.CronJobSpec{
		Schedule:    "*/5 * * * *",
		JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: s}}},
	}}
}

func job(ns, name string, opts ...podOpt) *batchv1.Job {
	m, s := build(opts)
	m.Name, m.Namespace = name, ns
	s.RestartPolicy = corev1.RestartPolicyNever
	return &batchv1.Job{ObjectMeta: m, Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: s}}}
}

func imagePin(ns, name string, opts ...func(*imagesv1alpha1.ImagePin)) *imagesv1alpha1.ImagePin {
	p := &imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	for _, o := range opts {
		o(p)
	}
	return p
}

func selecting(kv ...string) func(*imagesv1alpha1.ImagePin) {
	return func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{}}
		for i := 0; i+1 < len(kv); i += 2 {
			p.Spec.Selector.MatchLabels[kv[i]] = kv[i+1]
		}
	}
}

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := k8s.Create(context.Background(), o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

// eventually polls check until it returns nil, and fails the test with the
// last error if that takes longer than the controller can reasonably need.
func eventually(t *testing.T, check func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within 30s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func getPin(p *imagesv1alpha1.ImagePin) (*imagesv1alpha1.ImagePin, error) {
	var got imagesv1alpha1.ImagePin
	err := k8s.Get(context.Background(), client.ObjectKeyFromObject(p), &got)
	return &got, err
}

// readyIs checks that the ImagePin's current generation was observed with
// Ready of the given status and reason, and returns it for more checks.
func readyIs(p *imagesv1alpha1.ImagePin, status metav1.ConditionStatus, reason string) (*imagesv1alpha1.ImagePin, error) {
	got, err := getPin(p)
	if err != nil {
		return nil, err
	}
	if got.Status.ObservedGeneration != got.Generation {
		return got, fmt.Errorf("observedGeneration %d, generation %d", got.Status.ObservedGeneration, got.Generation)
	}
	c := meta.FindStatusCondition(got.Status.Conditions, imagesv1alpha1.ConditionReady)
	if c == nil {
		return got, fmt.Errorf("no Ready condition in %+v", got.Status)
	}
	if c.Status != status || c.Reason != reason {
		return got, fmt.Errorf("Ready=%s reason %s (%s), want %s reason %s", c.Status, c.Reason, c.Message, status, reason)
	}
	if c.ObservedGeneration != got.Generation {
		return got, fmt.Errorf("Ready condition observedGeneration %d, generation %d", c.ObservedGeneration, got.Generation)
	}
	return got, nil
}

// checked returns the ImagePin once its current generation was checked.
func checked(p *imagesv1alpha1.ImagePin) (*imagesv1alpha1.ImagePin, error) {
	got, err := getPin(p)
	if err != nil {
		return nil, err
	}
	if got.Status.ObservedGeneration != got.Generation || got.Status.LastCheckTime == nil {
		return got, fmt.Errorf("generation %d not checked yet (observed %d)", got.Generation, got.Status.ObservedGeneration)
	}
	return got, nil
}

// whenChecked waits until pin's current generation is checked and check
// passes on it, and returns it.
func whenChecked(t *testing.T, pin *imagesv1alpha1.ImagePin, check func(got *imagesv1alpha1.ImagePin) error) *imagesv1alpha1.ImagePin {
	t.Helper()
	var got *imagesv1alpha1.ImagePin
	eventually(t, func() error {
		var err error
		if got, err = checked(pin); err != nil {
			return err
		}
		return check(got)
	})
	return got
}

func workloadsAre(p *imagesv1alpha1.ImagePin, want int32) func() error {
	return func() error {
		got, err := checked(p)
		if err != nil {
			return err
		}
		if got.Status.Summary.Workloads != want {
			return fmt.Errorf("summary.workloads = %d, want %d", got.Status.Summary.Workloads, want)
		}
		return nil
	}
}

// --- tests against the running manager ---

func TestCountsTheWorkloadsTheSelectorPicks(t *testing.T) {
	ns := namespace(t)
	cj := cronJob(ns, "nightly", withLabels("app", "web"))
	create(t,
		deployment(ns, "web", withLabels("app", "web"), withImage("app", unreachable+"/web:v1"), withImage("proxy", unreachable+"/sidecars/envoy:1.30")),
		deployment(ns, "web-canary", withLabels("app", "web", "track", "canary"), withImage("app", unreachable+"/web:v1@sha256:"+strings.Repeat("a", 64))),
		deployment(ns, "db", withLabels("app", "db")),
		statefulSet(ns, "cache", withLabels("app", "web"), withInitImage("init", unreachable+"/migrate:v3"), withImage("app", unreachable+"/cache:v2")),
		job(ns, "one-off", withLabels("app", "web")),
		cj,
	)
	// A Job the CronJob created belongs to the CronJob: it is not counted
	// as a workload of its own.
	child := job(ns, "nightly-1", withLabels("app", "web"))
	child.OwnerReferences = []metav1.OwnerReference{{
		APIVersion: "batch/v1", Kind: "CronJob", Name: cj.Name, UID: cj.UID, Controller: new(true),
	}}
	create(t, child)

	pin := imagePin(ns, "web", selecting("app", "web"))
	create(t, pin)
	eventually(t, func() error {
		if err := workloadsAre(pin, 5)(); err != nil {
			return err
		}
		got, _ := getPin(pin)
		// web:v1 (twice, once pinned), envoy, migrate, cache, and the
		// default image of the Job and the CronJob.
		want := imagesv1alpha1.Summary{Workloads: 5, Images: 5, Pinned: 1, Drifted: 7}
		if got.Status.Summary != want {
			return fmt.Errorf("summary = %+v, want %+v", got.Status.Summary, want)
		}
		if got.Status.LastCheckTime == nil {
			return fmt.Errorf("no lastCheckTime")
		}
		return nil
	})

	t.Run("image filters narrow the images counted", func(t *testing.T) {
		filtered := imagePin(ns, "web-no-sidecars", selecting("app", "web"), func(p *imagesv1alpha1.ImagePin) {
			p.Spec.Kinds = []imagesv1alpha1.WorkloadKind{imagesv1alpha1.KindDeployment}
			p.Spec.Images = &imagesv1alpha1.ImageFilter{Exclude: []string{"*/sidecars/*"}}
		})
		create(t, filtered)
		whenChecked(t, filtered, func(got *imagesv1alpha1.ImagePin) error {
			want := imagesv1alpha1.Summary{Workloads: 2, Images: 1, Pinned: 1, Drifted: 2}
			if got.Status.Summary != want {
				return fmt.Errorf("summary = %+v, want %+v", got.Status.Summary, want)
			}
			return nil
		})
	})

	t.Run("a relabelled workload joins and leaves", func(t *testing.T) {
		var db appsv1.Deployment
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "db"}, &db); err != nil {
			t.Fatal(err)
		}
		db.Labels["app"] = "web"
		if err := k8s.Update(context.Background(), &db); err != nil {
			t.Fatal(err)
		}
		eventually(t, workloadsAre(pin, 6))

		db.Labels["app"] = "db"
		if err := k8s.Update(context.Background(), &db); err != nil {
			t.Fatal(err)
		}
		eventually(t, workloadsAre(pin, 5))
	})

	t.Run("a deleted workload is no longer counted", func(t *testing.T) {
		if err := k8s.Delete(context.Background(), &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-canary"}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, workloadsAre(pin, 4))
	})

	t.Run("spec.kinds narrows the kinds", func(t *testing.T) {
		got, err := getPin(pin)
		if err != nil {
			t.Fatal(err)
		}
		got.Spec.Kinds = []imagesv1alpha1.WorkloadKind{imagesv1alpha1.KindStatefulSet, imagesv1alpha1.KindCronJob}
		if err := k8s.Update(context.Background(), got); err != nil {
			t.Fatal(err)
		}
		eventually(t, workloadsAre(pin, 2))
	})
}

func TestWorkloadsInOtherNamespacesAreNotSelected(t *testing.T) {
	ns, other := namespace(t), namespace(t)
	create(t, deployment(ns, "web", withLabels("app", "web")), deployment(other, "web", withLabels("app", "web")))
	pin := imagePin(ns, "all")
	create(t, pin)
	eventually(t, workloadsAre(pin, 1))
}

func TestInvalidSpecIsReportedAndFixable(t *testing.T) {
	ns := namespace(t)
	create(t, deployment(ns, "web", withLabels("app", "web")))
	pin := imagePin(ns, "typo", func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Images = &imagesv1alpha1.ImageFilter{Include: []string{unreachable + "/[web"}}
	})
	create(t, pin)
	eventually(t, func() error {
		got, err := readyIs(pin, metav1.ConditionFalse, imagesv1alpha1.ReasonInvalidSpec)
		if err != nil {
			return err
		}
		msg := meta.FindStatusCondition(got.Status.Conditions, imagesv1alpha1.ConditionReady).Message
		if !strings.Contains(msg, `spec.images.include[0]: "`+unreachable+`/[web" is not a valid glob`) {
			return fmt.Errorf("message does not name the bad field: %s", msg)
		}
		return nil
	})

	got, err := getPin(pin)
	if err != nil {
		t.Fatal(err)
	}
	got.Spec.Images.Include = []string{unreachable + "/*"}
	if err := k8s.Update(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	eventually(t, workloadsAre(pin, 1))
}

func TestSuspendedImagePinSaysSo(t *testing.T) {
	ns := namespace(t)
	pin := imagePin(ns, "paused", func(p *imagesv1alpha1.ImagePin) { p.Spec.Suspend = true })
	create(t, pin)
	eventually(t, func() error {
		_, err := readyIs(pin, metav1.ConditionFalse, imagesv1alpha1.ReasonSuspended)
		return err
	})
}

// --- Reconcile called directly, to see what it returns and writes ---

func directReconciler(now time.Time) *ImagePinReconciler {
	return &ImagePinReconciler{Client: cached, Resolver: resolver, Keychains: &registry.Keychains{Reader: cached}, Pods: podStore, Clock: clocktesting.NewFakePassiveClock(now)}
}

// countingStatusWrites wraps the real client and counts every status write
// it sends, including ones the API server would find empty.
func countingStatusWrites(writes *int) client.Client {
	count := func() { *writes++ }
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		panic(err)
	}
	return interceptor.NewClient(c, interceptor.Funcs{
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
			count()
			return c.SubResource(sub).Patch(ctx, obj, patch, opts...)
		},
		SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
			count()
			return c.SubResource(sub).Update(ctx, obj, opts...)
		},
	})
}

func reconcileOnce(t *testing.T, r *ImagePinReconciler, p *imagesv1alpha1.ImagePin) ctrl.Result {
	t.Helper()
	// The reconciler reads through the manager's cache: wait until it
	// holds the ImagePin.
	eventually(t, func() error {
		return r.Get(context.Background(), client.ObjectKeyFromObject(p), &imagesv1alpha1.ImagePin{})
	})
	// The manager's own reconciler writes the status too: a check that
	// read the cache before its write arrived conflicts, and is run again,
	// as the controller runs it again.
	var res ctrl.Result
	eventually(t, func() error {
		var err error
		res, err = r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(p)})
		if err != nil {
			t.Fatalf("Reconcile: %v", err)
		}
		if res.RequeueAfter == conflictRetry {
			return fmt.Errorf("the status write conflicted (the cache was behind)")
		}
		return nil
	})
	return res
}

func TestReconcileRequeuesAtTheInterval(t *testing.T) {
	ns := namespace(t)
	pin := imagePin(ns, "every-90s", func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Interval = &metav1.Duration{Duration: 90 * time.Second}
	})
	create(t, pin)
	now := time.Now()
	res := reconcileOnce(t, directReconciler(now), pin)
	// The next check is on the next tick of the 90s grid every ImagePin
	// and every manager shares: within the interval, on a multiple of it.
	next := now.Add(res.RequeueAfter)
	if res.RequeueAfter <= 0 || res.RequeueAfter > 90*time.Second+tickSlack || next.Sub(next.Truncate(90*time.Second)) > tickSlack {
		t.Fatalf("RequeueAfter = %s from %s, want the next multiple of 90s", res.RequeueAfter, now.Format(time.RFC3339Nano))
	}
}

// A spec that cannot be honoured ends the reconcile without an error and
// without a requeue: retrying cannot fix it, its next edit will.
func TestReconcileDoesNotRetryAnInvalidSpec(t *testing.T) {
	ns := namespace(t)
	pin := imagePin(ns, "bad-selector", func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Selector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn}}}
	})
	create(t, pin)
	res := reconcileOnce(t, directReconciler(time.Now()), pin)
	if !res.IsZero() {
		t.Fatalf("Reconcile of an invalid spec returned %+v, want no requeue", res)
	}
	got, err := readyIs(pin, metav1.ConditionFalse, imagesv1alpha1.ReasonInvalidSpec)
	if err != nil {
		t.Fatal(err)
	}
	if msg := meta.FindStatusCondition(got.Status.Conditions, imagesv1alpha1.ConditionReady).Message; !strings.Contains(msg, "spec.selector:") {
		t.Fatalf("message does not name spec.selector: %s", msg)
	}
}

// Nothing is written when nothing changed: once the manager has recorded a
// suspended ImagePin, reconciling it again leaves its resourceVersion alone.
func TestReconcileWritesNothingWhenNothingChanged(t *testing.T) {
	ns := namespace(t)
	create(t, deployment(ns, "web", withLabels("app", "web")))
	pin := imagePin(ns, "quiet", func(p *imagesv1alpha1.ImagePin) { p.Spec.Suspend = true })
	create(t, pin)
	// A suspended ImagePin is not requeued, so once its status is written
	// the manager leaves it alone and only this test's reconciles remain.
	eventually(t, func() error {
		_, err := readyIs(pin, metav1.ConditionFalse, imagesv1alpha1.ReasonSuspended)
		return err
	})
	before, err := getPin(pin)
	if err != nil {
		t.Fatal(err)
	}
	var writes int
	r := &ImagePinReconciler{Client: countingStatusWrites(&writes), Resolver: resolver, Pods: podStore, Clock: clocktesting.NewFakePassiveClock(time.Now())}
	reconcileOnce(t, r, pin)
	reconcileOnce(t, r, pin)
	if writes != 0 {
		t.Errorf("%d status writes for an unchanged status, want none", writes)
	}
	after, err := getPin(pin)
	if err != nil {
		t.Fatal(err)
	}
	if before.ResourceVersion != after.ResourceVersion {
		t.Fatalf("an unchanged status was written again: resourceVersion %s -> %s", before.ResourceVersion, after.ResourceVersion)
	}
}

// A check at the instant of the last check computes the status that is
// already stored, so patchStatus has nothing to write.
func TestCheckIsDeterministic(t *testing.T) {
	ns := namespace(t)
	create(t, deployment(ns, "web", withLabels("app", "web")))
	pin := imagePin(ns, "active")
	create(t, pin)
	eventually(t, workloadsAre(pin, 1))
	stored, err := getPin(pin)
	if err != nil {
		t.Fatal(err)
	}
	r := directReconciler(stored.Status.LastCheckTime.Time)
	status := stored.Status.DeepCopy()
	if _, err := r.reconcile(context.Background(), stored, status); err != nil {
		t.Fatal(err)
	}
	if !apiequality.Semantic.DeepEqual(&stored.Status, status) {
		t.Fatalf("a check at the same instant changed the status:\nstored %+v\nnow    %+v", stored.Status, *status)
	}
}
