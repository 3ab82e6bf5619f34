// Package pinning tests Pin and Follow end to end on envtest's real API
// server with kube-controller-manager from bin/, so that Deployments really
// create ReplicaSets and every rollout can be counted.
package pinning

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
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/controllers"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/registry/registrytest"
	"github.com/imagepin/imagepin/internal/testenv"
	"github.com/imagepin/imagepin/internal/workload"
)

var (
	k8s client.Client
	reg *registrytest.Registry
)

// maxReverts is how many reverts imagepin takes before it stops writing.
const maxReverts = 3

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	ctrl.SetLogger(logr.Discard())
	env, err := testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	dir, err := os.MkdirTemp("", "imagepin-pinning-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	stopKCM, err := env.StartControllerManager(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer stopKCM()
	// Argo Rollouts' CRDs and its real controller, for the Rollout tests.
	if err := env.InstallArgoRolloutsCRDs(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	stopArgo, err := env.StartArgoRollouts(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer stopArgo()
	if k8s, err = client.New(env.Config, client.Options{Scheme: env.Scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	reg = registrytest.New()
	defer reg.Close()
	resolver, err := registry.New(registry.Options{InsecureRegistries: []string{reg.Host}, Timeout: 3 * time.Second, MaxStale: time.Hour})
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
	if err := (&controllers.ImagePinReconciler{
		Client: mgr.GetClient(), Resolver: resolver, APIReader: mgr.GetAPIReader(),
		Recorder: mgr.GetEventRecorder("imagepin"),
	}).SetupWithManager(mgr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return testenv.RunWithManager(m, mgr)
}

// --- fixtures ---

func namespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "pin-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// deployment makes a Deployment labelled app=name with the containers
// given as name=image pairs.
func deployment(ns, name string, containers ...string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	var cs []corev1.Container
	for _, c := range containers {
		n, img, _ := strings.Cut(c, "=")
		cs = append(cs, corev1.Container{Name: n, Image: img})
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels,
			Annotations: map[string]string{"team": "payments"}},
		Spec: appsv1.DeploymentSpec{
			Replicas: new(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: cs}},
		},
	}
}

func imagePin(ns, app string, mode imagesv1alpha1.Mode, opts ...func(*imagesv1alpha1.ImagePin)) *imagesv1alpha1.ImagePin {
	p := &imagesv1alpha1.ImagePin{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app},
		Spec: imagesv1alpha1.ImagePinSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			Mode:     mode,
			Interval: &metav1.Duration{Duration: 10 * time.Second},
		},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := k8s.Create(context.Background(), o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

func eventually(t *testing.T, within time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", within, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type rollout struct {
	generation  int64
	replicaSets int
	images      map[string]string
	annotations map[string]string
}

func rolloutOf(t *testing.T, ns, name string) rollout {
	t.Helper()
	var d appsv1.Deployment
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &d); err != nil {
		t.Fatal(err)
	}
	var rss appsv1.ReplicaSetList
	if err := k8s.List(context.Background(), &rss, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, rs := range rss.Items {
		if ref := metav1.GetControllerOf(&rs); ref != nil && ref.UID == d.UID {
			n++
		}
	}
	images := map[string]string{}
	for _, c := range d.Spec.Template.Spec.Containers {
		images[c.Name] = c.Image
	}
	return rollout{generation: d.Generation, replicaSets: n, images: images, annotations: d.Annotations}
}

// checksAfter waits until the ImagePin has been checked twice after since,
// so that a write that was going to happen has happened.
func checksAfter(t *testing.T, p *imagesv1alpha1.ImagePin, since time.Time) {
	t.Helper()
	var first time.Time
	eventually(t, 45*time.Second, func() error {
		got := getPin(t, p)
		if got.Status.LastCheckTime == nil {
			return fmt.Errorf("not checked yet")
		}
		last := got.Status.LastCheckTime.Time
		if first.IsZero() {
			if last.After(since) {
				first = last
			}
			return fmt.Errorf("waiting for a check after %s", since)
		}
		if last.After(first) {
			return nil
		}
		return fmt.Errorf("waiting for a second check after %s", first)
	})
}

func getPin(t *testing.T, p *imagesv1alpha1.ImagePin) *imagesv1alpha1.ImagePin {
	t.Helper()
	var got imagesv1alpha1.ImagePin
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(p), &got); err != nil {
		t.Fatal(err)
	}
	return &got
}

func imageIs(t *testing.T, ns, name, container, want string) func() error {
	return func() error {
		r := rolloutOf(t, ns, name)
		if r.images[container] != want {
			return fmt.Errorf("%s image = %q, want %q", container, r.images[container], want)
		}
		return nil
	}
}

// --- tests ---

// Pin rewrites the tag-only container to repo:tag@digest in one rollout,
// leaves an excluded sidecar, other fields and annotations alone, and a
// later push to the tag changes nothing but status.
func TestPinPinsOnceAndHoldsThroughARepush(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app, sidecar := reg.Image("pin/app:v1"), reg.Image("pin/sidecars/proxy:v1")
	a := reg.Push(t, "pin/app:v1")
	reg.Push(t, "pin/sidecars/proxy:v1")
	create(t, deployment(ns, "web", "app="+app, "proxy="+sidecar))
	eventually(t, 30*time.Second, func() error {
		if r := rolloutOf(t, ns, "web"); r.replicaSets != 1 {
			return fmt.Errorf("%d ReplicaSets, want the first one", r.replicaSets)
		}
		return nil
	})

	create(t, imagePin(ns, "web", imagesv1alpha1.ModePin, func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Images = &imagesv1alpha1.ImageFilter{Exclude: []string{"*/sidecars/*"}}
	}))
	eventually(t, 30*time.Second, imageIs(t, ns, "web", "app", app+"@"+a))
	eventually(t, 30*time.Second, func() error {
		if r := rolloutOf(t, ns, "web"); r.replicaSets != 2 || r.generation != 2 {
			return fmt.Errorf("generation %d with %d ReplicaSets, want one rollout: generation 2, 2 ReplicaSets", r.generation, r.replicaSets)
		}
		return nil
	})
	r := rolloutOf(t, ns, "web")
	if r.images["proxy"] != sidecar {
		t.Fatalf("the excluded sidecar was rewritten: %q", r.images["proxy"])
	}
	if r.annotations["team"] != "payments" {
		t.Fatalf("annotations changed: %v", r.annotations)
	}

	pin := imagePin(ns, "web", imagesv1alpha1.ModePin)
	reg.Push(t, "pin/app:v1")
	pushed := time.Now()
	eventually(t, 45*time.Second, func() error {
		got := getPin(t, pin)
		for _, img := range got.Status.Images {
			for _, w := range img.Workloads {
				if w.Container == "app" && fmt.Sprint(w.Drift) == "[TagMoved]" {
					return nil
				}
			}
		}
		return fmt.Errorf("no TagMoved yet: %+v", got.Status.Images)
	})
	checksAfter(t, pin, pushed)
	if after := rolloutOf(t, ns, "web"); after.generation != 2 || after.images["app"] != app+"@"+a {
		t.Fatalf("a push under Pin rolled out: generation %d, image %s", after.generation, after.images["app"])
	}
}

// Follow rolls out once per real digest change, not for a push of
// identical content, and an override rolls back although the tag moved.
func TestFollowRollsOutOncePerRealChangeAndOverrideRollsBack(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app := reg.Image("follow/app:v1")
	a := reg.Push(t, "follow/app:v1")
	create(t, deployment(ns, "api", "app="+app))
	pin := imagePin(ns, "api", imagesv1alpha1.ModeFollow)
	create(t, pin)
	eventually(t, 30*time.Second, imageIs(t, ns, "api", "app", app+"@"+a))
	eventually(t, 30*time.Second, func() error {
		if r := rolloutOf(t, ns, "api"); r.generation != 2 {
			return fmt.Errorf("generation %d, want 2", r.generation)
		}
		return nil
	})

	b := reg.Push(t, "follow/app:v1")
	eventually(t, 45*time.Second, imageIs(t, ns, "api", "app", app+"@"+b))
	eventually(t, 30*time.Second, func() error {
		if r := rolloutOf(t, ns, "api"); r.generation != 3 || r.replicaSets != 3 {
			return fmt.Errorf("generation %d with %d ReplicaSets, want 3 and 3: one rollout for the change", r.generation, r.replicaSets)
		}
		return nil
	})

	// The same content pushed again: the digest does not change.
	reg.Tag(t, "follow/app:v1", b)
	checksAfter(t, pin, time.Now())
	if r := rolloutOf(t, ns, "api"); r.generation != 3 {
		t.Fatalf("a push of identical content rolled out: generation %d", r.generation)
	}

	// Roll back to the first digest, although the tag points to b.
	got := getPin(t, pin)
	got.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: app, Digest: imagesv1alpha1.Digest(a)}}
	if err := k8s.Update(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, imageIs(t, ns, "api", "app", app+"@"+a))
	checksAfter(t, pin, time.Now())
	if r := rolloutOf(t, ns, "api"); r.generation != 4 || r.images["app"] != app+"@"+a {
		t.Fatalf("after the override: generation %d, image %s; want 4 and the override's digest held", r.generation, r.images["app"])
	}
}

// A tag that flips to a new digest and back inside minAge rolls nothing
// out; one that stays on the new digest for minAge rolls out once.
func TestFollowWaitsForMinAge(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app := reg.Image("flip/app:v1")
	a := reg.Push(t, "flip/app:v1")
	create(t, deployment(ns, "flip", "app="+app))
	pin := imagePin(ns, "flip", imagesv1alpha1.ModeFollow, func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Follow = &imagesv1alpha1.FollowSpec{MinAge: &metav1.Duration{Duration: 25 * time.Second}}
	})
	create(t, pin)
	eventually(t, 30*time.Second, imageIs(t, ns, "flip", "app", app+"@"+a))

	b := reg.Push(t, "flip/app:v1")
	eventually(t, 45*time.Second, func() error {
		if d := getPin(t, pin).Status.Images[0].Digest; string(d) != b {
			return fmt.Errorf("status digest %s, want the new %s", d, b)
		}
		return nil
	})
	reg.Tag(t, "flip/app:v1", a) // flipped back inside minAge
	checksAfter(t, pin, time.Now())
	if r := rolloutOf(t, ns, "flip"); r.generation != 2 || r.images["app"] != app+"@"+a {
		t.Fatalf("a flip-flop inside minAge rolled out: generation %d, image %s", r.generation, r.images["app"])
	}

	reg.Tag(t, "flip/app:v1", b) // and now it stays
	eventually(t, 75*time.Second, imageIs(t, ns, "flip", "app", app+"@"+b))
	checksAfter(t, pin, time.Now())
	if r := rolloutOf(t, ns, "flip"); r.generation != 3 {
		t.Fatalf("generation %d, want exactly one rollout after minAge (3)", r.generation)
	}
}

// Another field manager setting the image back is not fought: after a few
// reverts imagepin stops writing that workload and says who reverts it.
func TestRevertingActorIsNotFought(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app := reg.Image("gitops/app:v1")
	a := reg.Push(t, "gitops/app:v1")
	create(t, deployment(ns, "synced", "app="+app))
	pin := imagePin(ns, "synced", imagesv1alpha1.ModePin)
	create(t, pin)

	revert := func() {
		t.Helper()
		eventually(t, 30*time.Second, func() error {
			var d appsv1.Deployment
			if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "synced"}, &d); err != nil {
				return err
			}
			d.Spec.Template.Spec.Containers[0].Image = app
			return k8s.Update(context.Background(), &d, client.FieldOwner("gitops-controller"))
		})
	}
	for range maxReverts {
		eventually(t, 30*time.Second, imageIs(t, ns, "synced", "app", app+"@"+a))
		revert()
	}
	eventually(t, 30*time.Second, func() error {
		c := meta.FindStatusCondition(getPin(t, pin).Status.Conditions, imagesv1alpha1.ConditionConflict)
		if c == nil || c.Status != metav1.ConditionTrue || c.Reason != imagesv1alpha1.ReasonImageReverted {
			return fmt.Errorf("Conflict = %+v, want True ImageReverted", c)
		}
		if !strings.Contains(c.Message, `"gitops-controller"`) || !strings.Contains(c.Message, "Deployment/synced") {
			return fmt.Errorf("Conflict message does not name the workload and the other manager: %s", c.Message)
		}
		return nil
	})
	if got := gaugeValue(t, "imagepin_conflict_workloads", map[string]string{"namespace": ns, "imagepin": "synced"}); got != 1 {
		t.Errorf("imagepin_conflict_workloads = %v, want 1 while the Deployment is not written", got)
	}
	gen := rolloutOf(t, ns, "synced").generation
	checksAfter(t, pin, time.Now())
	if r := rolloutOf(t, ns, "synced"); r.generation != gen || r.images["app"] != app {
		t.Fatalf("imagepin kept writing after the conflict: generation %d -> %d, image %s", gen, r.generation, r.images["app"])
	}

	// A spec change is the signal to try again.
	got := getPin(t, pin)
	got.Spec.Interval = &metav1.Duration{Duration: 11 * time.Second}
	if err := k8s.Update(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, imageIs(t, ns, "synced", "app", app+"@"+a))
}

// A CronJob is pinned in its job template; a Job, whose pod template is
// immutable, is reported and left alone.
func TestCronJobIsPinnedAndJobIsLeftAlone(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app := reg.Image("batch/app:v1")
	a := reg.Push(t, "batch/app:v1")
	labels := map[string]string{"app": "batch"}
	podSpec := corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "task", Image: app}}}
	cj := &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "nightly", Labels: labels},
		Spec: batchv1.CronJobSpec{Schedule: "0 3 * * *", JobTemplate: batchv1.JobTemplateSpec{
			Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: podSpec}},
		}},
	}
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "once", Labels: labels},
		Spec:       batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: podSpec}},
	}
	create(t, cj, job)
	pin := imagePin(ns, "batch", imagesv1alpha1.ModePin)
	create(t, pin)

	eventually(t, 30*time.Second, func() error {
		var got batchv1.CronJob
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(cj), &got); err != nil {
			return err
		}
		if img := got.Spec.JobTemplate.Spec.Template.Spec.Containers[0].Image; img != app+"@"+a {
			return fmt.Errorf("CronJob image = %s, want %s@%s", img, app, a)
		}
		return nil
	})
	checksAfter(t, pin, time.Now())
	var got batchv1.Job
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(job), &got); err != nil {
		t.Fatal(err)
	}
	if img := got.Spec.Template.Spec.Containers[0].Image; img != app {
		t.Fatalf("the Job was written: %s", img)
	}
	for _, img := range getPin(t, pin).Status.Images {
		for _, w := range img.Workloads {
			if w.Kind == imagesv1alpha1.KindJob && w.Name == "once" {
				if fmt.Sprint(w.Drift) != "[Unpinned]" {
					t.Fatalf("the Job is reported with drift %v, want [Unpinned]", w.Drift)
				}
				return
			}
		}
	}
	t.Fatal("the Job is not reported in status")
}

// Two ImagePins in Pin mode with different overrides select one
// Deployment: the first by name writes it, the other leaves it, and nothing
// takes turns rolling it out.
func TestTwoImagePinsDoNotFight(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app := reg.Image("two/app:v1")
	a := reg.Push(t, "two/app:v1")
	b := reg.Push(t, "two/app:v1")
	create(t, deployment(ns, "shared", "app="+app))
	first := imagePin(ns, "shared", imagesv1alpha1.ModePin, func(p *imagesv1alpha1.ImagePin) {
		p.Name = "a-holds"
		p.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: app, Digest: imagesv1alpha1.Digest(a)}}
	})
	second := imagePin(ns, "shared", imagesv1alpha1.ModePin, func(p *imagesv1alpha1.ImagePin) {
		p.Name = "b-other"
		p.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: app, Digest: imagesv1alpha1.Digest(b)}}
	})
	create(t, first, second)
	eventually(t, 30*time.Second, imageIs(t, ns, "shared", "app", app+"@"+a))
	gen := rolloutOf(t, ns, "shared").generation
	checksAfter(t, second, time.Now())
	if r := rolloutOf(t, ns, "shared"); r.generation != gen || r.images["app"] != app+"@"+a {
		t.Fatalf("the ImagePins took turns: generation %d -> %d, image %s", gen, r.generation, r.images["app"])
	}
}

// gaugeValue reads a gauge of the manager's metrics registry by its labels.
func gaugeValue(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			match := 0
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] == l.GetValue() {
					match++
				}
			}
			if match == len(labels) {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}
