package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

// podRun is one pod as a kubelet would report it: the node it runs on and
// the digest its container runs, in the imageID form containerd writes.
type podRun struct {
	node, digest string
}

// runPods creates pods owned by owner (a ReplicaSet, StatefulSet,
// DaemonSet or Job), running image, and writes their status the way a
// kubelet does.
func runPods(t *testing.T, owner client.Object, apiVersion, kind, container, image string, runs ...podRun) {
	t.Helper()
	ctx := context.Background()
	repo := image
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i]
	}
	for i, run := range runs {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: owner.GetNamespace(), Name: fmt.Sprintf("%s-%d", owner.GetName(), i),
				OwnerReferences: []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: owner.GetName(), UID: owner.GetUID(), Controller: new(true)}},
			},
			Spec: corev1.PodSpec{NodeName: run.node, Containers: []corev1.Container{{Name: container, Image: image}}},
		}
		create(t, pod)
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{
			Name: container, Image: image, ImageID: repo + "@" + run.digest, Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
		}}}
		if err := k8s.Status().Update(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
}

// deploymentRunning creates a Deployment naming image, a ReplicaSet it
// owns, and pods of that ReplicaSet running the given digests.
func deploymentRunning(t *testing.T, ns, name, image string, runs ...podRun) *appsv1.Deployment {
	t.Helper()
	dep := deployment(ns, name, withLabels("app", name), withImage("app", image))
	create(t, dep)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name + "-rs",
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: name, UID: dep.UID, Controller: new(true)}},
		},
		Spec: appsv1.ReplicaSetSpec{Selector: dep.Spec.Selector, Template: dep.Spec.Template},
	}
	create(t, rs)
	runPods(t, rs, "apps/v1", "ReplicaSet", "app", image, runs...)
	return dep
}

func observePin(ns, app string) *imagesv1alpha1.ImagePin {
	return imagePin(ns, app, selecting("app", app), func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Interval = &metav1.Duration{Duration: 10 * time.Second}
	})
}

// entryFor finds a workload container in the ImagePin's status.
func entryFor(p *imagesv1alpha1.ImagePin, image, workloadName, container string) (*imagesv1alpha1.ImageStatus, *imagesv1alpha1.WorkloadImage, error) {
	for i := range p.Status.Images {
		img := &p.Status.Images[i]
		if img.Image != image {
			continue
		}
		for j := range img.Workloads {
			if w := &img.Workloads[j]; w.Name == workloadName && w.Container == container {
				return img, w, nil
			}
		}
	}
	return nil, nil, fmt.Errorf("no %s/%s entry for %s in %+v", workloadName, container, image, p.Status.Images)
}

func driftIs(w *imagesv1alpha1.WorkloadImage, want ...imagesv1alpha1.DriftReason) error {
	if fmt.Sprint(w.Drift) != fmt.Sprint(want) {
		return fmt.Errorf("drift of %s/%s = %v, want %v", w.Name, w.Container, w.Drift, want)
	}
	return nil
}

func conditionIs(p *imagesv1alpha1.ImagePin, typ string, status metav1.ConditionStatus, reason string) error {
	c := meta.FindStatusCondition(p.Status.Conditions, typ)
	if c == nil || c.Status != status || c.Reason != reason {
		return fmt.Errorf("%s condition = %+v, want %s reason %s", typ, c, status, reason)
	}
	return nil
}

// conditionSays is conditionIs, and the condition's message says each of
// words.
func conditionSays(p *imagesv1alpha1.ImagePin, typ string, status metav1.ConditionStatus, reason string, words ...string) error {
	if err := conditionIs(p, typ, status, reason); err != nil {
		return err
	}
	c := meta.FindStatusCondition(p.Status.Conditions, typ)
	for _, w := range words {
		if !strings.Contains(c.Message, w) {
			return fmt.Errorf("%s's message does not say %q: %s", typ, w, c.Message)
		}
	}
	return nil
}

// The mutable-tag story: pods run digest A, the tag is pushed again to B,
// and within one interval the ImagePin says the tag moved.
func TestTagMovedIsSeenWithinTheInterval(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("story/app:v1")
	a := reg.Push(t, "story/app:v1")
	deploymentRunning(t, ns, "web", image, podRun{"node-a", a}, podRun{"node-b", a})
	pin := observePin(ns, "web")
	create(t, pin)

	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		img, w, err := entryFor(got, image, "web", "app")
		if err != nil {
			return err
		}
		if string(img.Digest) != a {
			return fmt.Errorf("digest = %s, want %s", img.Digest, a)
		}
		if len(w.Running) != 1 || string(w.Running[0].Digest) != a || w.Running[0].Pods != 2 || fmt.Sprint(w.Running[0].Nodes) != "[node-a node-b]" {
			return fmt.Errorf("running = %+v, want 2 pods of %s on node-a and node-b", w.Running, a)
		}
		if err := conditionIs(got, imagesv1alpha1.ConditionDrifted, metav1.ConditionFalse, imagesv1alpha1.ReasonNoDrift); err != nil {
			return err
		}
		return driftIs(w, imagesv1alpha1.DriftUnpinned)
	})

	b := reg.Push(t, "story/app:v1")
	pushed := time.Now()
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		img, w, err := entryFor(got, image, "web", "app")
		if err != nil {
			return err
		}
		if err := driftIs(w, imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftTagMoved); err != nil {
			return err
		}
		if string(img.Digest) != b || len(img.History) != 2 || string(img.History[0].Digest) != b || string(img.History[1].Digest) != a {
			return fmt.Errorf("digest %s, history %+v; want %s then %s", img.Digest, img.History, b, a)
		}
		if got.Status.Summary.Drifted != 1 {
			return fmt.Errorf("summary.drifted = %d, want 1", got.Status.Summary.Drifted)
		}
		return conditionIs(got, imagesv1alpha1.ConditionDrifted, metav1.ConditionTrue, string(imagesv1alpha1.DriftTagMoved))
	})
	// The check that saw it ran at the interval; polling adds at most its
	// own period on top.
	if took := time.Since(pushed); took > 10*time.Second+5*time.Second {
		t.Errorf("TagMoved seen %s after the push; the interval is 10s", took)
	}

	// The transition was announced once, on the ImagePin.
	eventually(t, func() error {
		var evs eventsv1.EventList
		if err := k8s.List(context.Background(), &evs, client.InNamespace(ns)); err != nil {
			return err
		}
		moved := 0
		for _, e := range evs.Items {
			if e.Reason == EventTagMoved && e.Regarding.Name == pin.Name && strings.Contains(e.Note, a) && strings.Contains(e.Note, b) {
				moved++
			}
		}
		if moved != 1 {
			return fmt.Errorf("%d TagMoved events naming both digests, want 1", moved)
		}
		return nil
	})
}

func TestMixedReplicasShowsBothDigestsWithPodsAndNodes(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("mixed/app:v1")
	a := reg.Push(t, "mixed/app:v1")
	b := reg.Push(t, "mixed/app:v1")
	deploymentRunning(t, ns, "mixed", image, podRun{"node-a", a}, podRun{"node-b", b}, podRun{"node-c", b})
	pin := observePin(ns, "mixed")
	create(t, pin)

	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		_, w, err := entryFor(got, image, "mixed", "app")
		if err != nil {
			return err
		}
		if err := driftIs(w, imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftTagMoved, imagesv1alpha1.DriftMixedReplicas); err != nil {
			return err
		}
		want := fmt.Sprintf("[{%s 2 [node-b node-c]} {%s 1 [node-a]}]", b, a)
		if got := fmt.Sprint(w.Running); got != want {
			return fmt.Errorf("running = %s, want %s", got, want)
		}
		return conditionIs(got, imagesv1alpha1.ConditionDrifted, metav1.ConditionTrue, string(imagesv1alpha1.DriftTagMoved))
	})
}

func TestUnresolvableTagSaysWhy(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	reg.Push(t, "missing/app:v1")
	image := reg.Image("missing/app:nope")
	deploymentRunning(t, ns, "ghost", image)
	pin := observePin(ns, "ghost")
	create(t, pin)

	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		img, w, err := entryFor(got, image, "ghost", "app")
		if err != nil {
			return err
		}
		if err := driftIs(w, imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftUnresolvable); err != nil {
			return err
		}
		if !strings.Contains(img.Error, `tag "nope" not found`) {
			return fmt.Errorf("error = %q, want the registry's reason", img.Error)
		}
		if err := conditionIs(got, imagesv1alpha1.ConditionReady, metav1.ConditionFalse, imagesv1alpha1.ReasonResolutionFailed); err != nil {
			return err
		}
		if msg := meta.FindStatusCondition(got.Status.Conditions, imagesv1alpha1.ConditionReady).Message; !strings.Contains(msg, `tag "nope" not found`) {
			return fmt.Errorf("Ready message does not say why: %s", msg)
		}
		return nil
	})
}

// A registry that goes down leaves the last digest in status, with Ready
// False saying why.
func TestRegistryDownKeepsTheLastDigest(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := flaky.Image("flaky/app:v1")
	a := flaky.Push(t, "flaky/app:v1")
	deploymentRunning(t, ns, "flaky", image, podRun{"node-a", a})
	pin := observePin(ns, "flaky")
	create(t, pin)
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		return conditionIs(got, imagesv1alpha1.ConditionReady, metav1.ConditionTrue, imagesv1alpha1.ReasonResolved)
	})

	flaky.SetDown(true)
	defer flaky.SetDown(false)
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		if err := conditionIs(got, imagesv1alpha1.ConditionReady, metav1.ConditionFalse, imagesv1alpha1.ReasonResolutionFailed); err != nil {
			return err
		}
		img, w, err := entryFor(got, image, "flaky", "app")
		if err != nil {
			return err
		}
		if string(img.Digest) != a {
			return fmt.Errorf("digest = %s, want the last good %s kept", img.Digest, a)
		}
		if !strings.Contains(img.Error, "503") && !strings.Contains(img.Error, "Service Unavailable") {
			return fmt.Errorf("error = %q, want the registry's 503", img.Error)
		}
		if msg := meta.FindStatusCondition(got.Status.Conditions, imagesv1alpha1.ConditionReady).Message; !strings.Contains(msg, "last digests kept") || !strings.Contains(msg, "flaky/app:v1") {
			return fmt.Errorf("Ready message does not say what happened: %s", msg)
		}
		return driftIs(w, imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftUnresolvable)
	})
}

func TestMultiArchPlatformDigestIsNotDrift(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("multi/app:v1")
	index, children := reg.PushIndex(t, "multi/app:v1")
	deploymentRunning(t, ns, "multi", image, podRun{"amd64-node", children[0]}, podRun{"arm64-node", children[1]})
	pin := observePin(ns, "multi")
	create(t, pin)

	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		img, w, err := entryFor(got, image, "multi", "app")
		if err != nil {
			return err
		}
		if string(img.Digest) != index {
			return fmt.Errorf("digest = %s, want the index %s", img.Digest, index)
		}
		if err := driftIs(w, imagesv1alpha1.DriftUnpinned); err != nil {
			return err
		}
		return conditionIs(got, imagesv1alpha1.ConditionDrifted, metav1.ConditionFalse, imagesv1alpha1.ReasonNoDrift)
	})
}

// Issue 13 item 10: the platforms of an older index that a spec pins (a
// rollback) are learnt too: its pods' platform digests are not drift,
// though the tag now names another index.
func TestPlatformsOfAnOlderPinnedIndexAreLearnt(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("multi-old/app:v1")
	old, oldChildren := reg.PushIndex(t, "multi-old/app:v1")
	current, _ := reg.PushIndex(t, "multi-old/app:v1")
	deploymentRunning(t, ns, "rollback", image+"@"+old, podRun{"amd64-node", oldChildren[0]}, podRun{"arm64-node", oldChildren[1]})
	pin := observePin(ns, "rollback")
	create(t, pin)

	eventually(t, func() error {
		img, w, err := checkedEntry(pin, image, "rollback", "app")
		if err != nil {
			return err
		}
		if string(img.Digest) != current {
			return fmt.Errorf("digest = %s, want the current index %s", img.Digest, current)
		}
		return driftIs(w, imagesv1alpha1.DriftTagMoved)
	})
}

// StatefulSets and DaemonSets own their pods; a CronJob owns Jobs that own
// pods. Each one's running digest is read, and Observe writes none of them.
func TestOtherKindsAndObserveWritesNothing(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("kinds/app:v1")
	a := reg.Push(t, "kinds/app:v1")

	sts := statefulSet(ns, "db", withLabels("app", "kinds"), withImage("app", image))
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "agent", Labels: map[string]string{"app": "kinds"}},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "agent"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"pod": "agent"}}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}}},
		},
	}
	cj := cronJob(ns, "nightly", withLabels("app", "kinds"), withImage("app", image))
	dep := deploymentRunning(t, ns, "kinds", image, podRun{"node-a", a})
	create(t, sts, ds, cj)
	runPods(t, sts, "apps/v1", "StatefulSet", "app", image, podRun{"node-a", a})
	runPods(t, ds, "apps/v1", "DaemonSet", "app", image, podRun{"node-a", a}, podRun{"node-b", a})
	jobOfCron := job(ns, "nightly-29000000", withLabels("app", "kinds"), withImage("app", image))
	jobOfCron.OwnerReferences = []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "CronJob", Name: cj.Name, UID: cj.UID, Controller: new(true)}}
	create(t, jobOfCron)
	runPods(t, jobOfCron, "batch/v1", "Job", "app", image, podRun{"node-c", a})

	versions := resourceVersions(t, dep, sts, ds, cj, jobOfCron)
	pin := observePin(ns, "kinds")
	create(t, pin)
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		for _, tc := range []struct {
			name string
			pods int32
		}{{"kinds", 1}, {"db", 1}, {"agent", 2}, {"nightly", 1}} {
			_, w, err := entryFor(got, image, tc.name, "app")
			if err != nil {
				return err
			}
			if len(w.Running) != 1 || string(w.Running[0].Digest) != a || w.Running[0].Pods != tc.pods {
				return fmt.Errorf("%s %s running = %+v, want %d pods of %s", w.Kind, w.Name, w.Running, tc.pods, a)
			}
			if err := driftIs(w, imagesv1alpha1.DriftUnpinned); err != nil {
				return err
			}
		}
		if got.Status.Summary.Workloads != 4 {
			return fmt.Errorf("summary.workloads = %d, want 4 (the CronJob's Job is the CronJob's)", got.Status.Summary.Workloads)
		}
		return nil
	})
	if after := resourceVersions(t, dep, sts, ds, cj, jobOfCron); !slices.Equal(versions, after) {
		t.Fatalf("Observe wrote a workload: resourceVersions %v -> %v", versions, after)
	}
}

func resourceVersions(t *testing.T, objs ...client.Object) []string {
	t.Helper()
	var out []string
	for _, o := range objs {
		fresh := o.DeepCopyObject().(client.Object)
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(o), fresh); err != nil {
			t.Fatal(err)
		}
		out = append(out, fresh.GetResourceVersion())
	}
	return out
}

// ImagePins that share a tag but were created out of phase check it on one
// grid: each sees the tag move within one interval of the push, and one
// registry request per tick serves them all. (Checking an interval after
// each reconcile, they reused each other's answers up to an interval old
// and saw a move up to two intervals late.)
func TestImagePinsOutOfPhaseEachSeeAMoveWithinTheInterval(t *testing.T) {
	t.Parallel()
	repo := "phase/app"
	image := reg.Image(repo + ":v1")
	a := reg.Push(t, repo+":v1")
	var mu sync.Mutex
	var heads []time.Time
	remove := reg.Route(repo, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/manifests/") {
			mu.Lock()
			heads = append(heads, time.Now())
			mu.Unlock()
		}
		reg.Backend().ServeHTTP(w, r)
	}))
	defer remove()
	headsSince := func(since time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, h := range heads {
			if h.After(since) {
				n++
			}
		}
		return n
	}

	var pins []*imagesv1alpha1.ImagePin
	for i := range 3 {
		ns := namespace(t)
		deploymentRunning(t, ns, "web", image, podRun{"node-a", a})
		pin := observePin(ns, "web")
		create(t, pin)
		pins = append(pins, pin)
		if i < 2 {
			time.Sleep(3300 * time.Millisecond) // out of phase by a third of the interval
		}
	}
	for _, pin := range pins {
		eventually(t, func() error {
			img, _, err := checkedEntry(pin, image, "web", "app")
			if err != nil {
				return err
			}
			if string(img.Digest) != a {
				return fmt.Errorf("digest %s, want %s", img.Digest, a)
			}
			return nil
		})
	}

	// The worst moment: right after a tick's request.
	start := time.Now()
	eventually(t, func() error {
		if headsSince(start) == 0 {
			return errors.New("no check of the tag yet")
		}
		return nil
	})
	b := reg.Push(t, repo+":v1")
	pushed := time.Now()
	for _, pin := range pins {
		eventually(t, func() error {
			img, w, err := checkedEntry(pin, image, "web", "app")
			if err != nil {
				return err
			}
			if string(img.Digest) != b {
				return fmt.Errorf("%s/%s shows %s, want %s", pin.Namespace, pin.Name, img.Digest, b)
			}
			return driftIs(w, imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftTagMoved)
		})
	}
	took := time.Since(pushed)
	// The old scheduling took ~16.5 s here; the margin is for a loaded
	// machine, where every 10 s ImagePin of the package checks on one tick.
	if took > 10*time.Second+5*time.Second {
		t.Errorf("the last of 3 ImagePins saw the move %s after the push; the interval is 10s", took.Round(100*time.Millisecond))
	}
	if n := headsSince(pushed); n > 2 {
		t.Errorf("%d HEADs of the tag in the %s until all 3 ImagePins saw the move, want one per tick", n, took.Round(time.Second))
	}
}

// Issue 13 item 10: more than one ImagePin is checked at once, so one
// ImagePin waiting on a blackholed registry does not delay the others: an
// ImagePin created while another's registry request hangs is Ready before
// that request ends.
func TestOneBlackholedRegistryDoesNotDelayOtherImagePins(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	var inFlight atomic.Int32
	held := make(chan struct{}, 1)
	release := make(chan struct{})
	remove := reg.Route("blackhole/app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inFlight.Add(1)
		defer inFlight.Add(-1)
		select {
		case held <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer remove()
	defer close(release)

	fastImage := reg.Image("fast/app:v1")
	reg.Push(t, "fast/app:v1")
	create(t, deployment(ns, "slow", withLabels("app", "slow"), withImage("app", reg.Image("blackhole/app:v1"))))
	create(t, deployment(ns, "fast", withLabels("app", "fast"), withImage("app", fastImage)))
	create(t, imagePin(ns, "slow", selecting("app", "slow")))
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the slow ImagePin never asked its registry")
	}
	fast := imagePin(ns, "fast", selecting("app", "fast"))
	create(t, fast)
	eventually(t, func() error {
		_, err := readyIs(fast, metav1.ConditionTrue, imagesv1alpha1.ReasonResolved)
		return err
	})
	if inFlight.Load() == 0 {
		t.Fatal("the other ImagePin became Ready only after the blackholed request ended: one slow registry delayed every ImagePin")
	}
}

// Issue 14 item 4: an image volume (spec.volumes[].image.reference) is
// resolved and reported like a container, marked as a volume, with the
// digest its pods' status says was mounted; a move of its tag is TagMoved.
func TestImageVolumeIsReportedLikeAContainer(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app, models := reg.Image("vol/app:v1"), reg.Image("vol/models:v1")
	a := reg.Push(t, "vol/app:v1")
	m1 := reg.Push(t, "vol/models:v1")
	dep := deployment(ns, "ml", withLabels("app", "ml"), withImage("app", app))
	dep.Spec.Template.Spec.Volumes = []corev1.Volume{{Name: "models", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: models + "@" + m1}}}}
	dep.Spec.Template.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "models", MountPath: "/models"}}
	create(t, dep)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ml-0",
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "ml", UID: dep.UID, Controller: new(true)}}},
		Spec: *dep.Spec.Template.Spec.DeepCopy(),
	}
	pod.Spec.NodeName = "node-a"
	// A Deployment does not own pods directly; a ReplicaSet in between.
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ml-rs",
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "ml", UID: dep.UID, Controller: new(true)}}},
		Spec: appsv1.ReplicaSetSpec{Selector: dep.Spec.Selector, Template: dep.Spec.Template},
	}
	create(t, rs)
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "ml-rs", UID: rs.UID, Controller: new(true)}}
	create(t, pod)
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{
		Name: "app", Image: app, ImageID: strings.TrimSuffix(app, ":v1") + "@" + a, Ready: true,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
		VolumeMounts: []corev1.VolumeMountStatus{{Name: "models", MountPath: "/models",
			VolumeStatus: &corev1.VolumeStatus{Image: &corev1.ImageVolumeStatus{ImageRef: strings.TrimSuffix(models, ":v1") + "@" + m1}}}},
	}}}
	if err := k8s.Status().Update(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	pin := observePin(ns, "ml")
	create(t, pin)

	eventually(t, func() error {
		img, w, err := checkedEntry(pin, models, "ml", "models")
		if err != nil {
			return err
		}
		if !w.Volume || string(img.Digest) != m1 || string(w.PinnedDigest) != m1 {
			return fmt.Errorf("volume entry %+v of %+v, want a volume pinned to and resolving to %s", w, img, m1)
		}
		if len(w.Running) != 1 || string(w.Running[0].Digest) != m1 {
			return fmt.Errorf("running %+v, want %s from the pod's volume mount status", w.Running, m1)
		}
		return driftIs(w)
	})
	m2 := reg.Push(t, "vol/models:v1")
	eventually(t, func() error {
		img, w, err := checkedEntry(pin, models, "ml", "models")
		if err != nil {
			return err
		}
		if string(img.Digest) != m2 {
			return fmt.Errorf("digest %s, want the moved %s", img.Digest, m2)
		}
		return driftIs(w, imagesv1alpha1.DriftTagMoved)
	})
}

// Issue 14 item 2: the manager starts without Argo Rollouts' CRD, says so
// and keeps the other kinds going; once the CRD is installed, Rollouts are
// selected without a restart, and their pods are found through their
// ReplicaSets: a Rollout whose pods run two digests is MixedReplicas.
func TestRolloutIsSelectedOnceItsCRDAppears(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("rollout/app:v1")
	a := reg.Push(t, "rollout/app:v1")
	b := reg.Push(t, "rollout/app:v1")
	if err := env.InstallArgoRolloutsCRDs(); err != nil {
		t.Fatal(err)
	}
	ro := testenv.Rollout(ns, "canary", image, 2)
	eventually(t, func() error { return k8s.Create(context.Background(), ro) })
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "canary-rs",
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "argoproj.io/v1alpha1", Kind: "Rollout", Name: "canary", UID: ro.GetUID(), Controller: new(true)}}},
		Spec: appsv1.ReplicaSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "canary"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "canary"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}}},
		},
	}
	create(t, rs)
	runPods(t, rs, "apps/v1", "ReplicaSet", "app", image, podRun{"node-a", a}, podRun{"node-b", b})
	pin := imagePin(ns, "canary", selecting("app", "canary"), func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Kinds = []imagesv1alpha1.WorkloadKind{imagesv1alpha1.KindRollout}
		p.Spec.Interval = &metav1.Duration{Duration: 10 * time.Second}
	})
	create(t, pin)
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		if got.Status.Summary.Workloads != 1 {
			return fmt.Errorf("summary %+v, want the Rollout selected", got.Status.Summary)
		}
		_, w, err := entryFor(got, image, "canary", "app")
		if err != nil {
			return err
		}
		if w.Kind != imagesv1alpha1.KindRollout || len(w.Running) != 2 {
			return fmt.Errorf("entry %+v, want a Rollout running two digests", w)
		}
		return driftIs(w, imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftTagMoved, imagesv1alpha1.DriftMixedReplicas)
	})
}

// Issue 14 item 2: a Rollout with spec.workloadRef is handled through the
// Deployment it references: that Deployment's template is reported, with
// the pods of the Rollout's ReplicaSets, and Pin writes the Deployment.
func TestRolloutWithWorkloadRefIsHandledThroughItsDeployment(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("wref/app:v1")
	a := reg.Push(t, "wref/app:v1")
	if err := env.InstallArgoRolloutsCRDs(); err != nil {
		t.Fatal(err)
	}
	dep := deployment(ns, "wref-app", withLabels("app", "wref-app"), withImage("app", image))
	dep.Spec.Replicas = new(int32(0))
	create(t, dep)
	ro := testenv.RolloutOf(ns, "wref", "wref-app", 1)
	eventually(t, func() error { return k8s.Create(context.Background(), ro) })
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "wref-rs",
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "argoproj.io/v1alpha1", Kind: "Rollout", Name: "wref", UID: ro.GetUID(), Controller: new(true)}}},
		Spec: appsv1.ReplicaSetSpec{Selector: dep.Spec.Selector, Template: dep.Spec.Template},
	}
	create(t, rs)
	runPods(t, rs, "apps/v1", "ReplicaSet", "app", image, podRun{"node-a", a})
	pin := imagePin(ns, "wref", selecting("app", "wref"), func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Kinds = []imagesv1alpha1.WorkloadKind{imagesv1alpha1.KindRollout}
		p.Spec.Mode = imagesv1alpha1.ModePin
		p.Spec.Interval = &metav1.Duration{Duration: 10 * time.Second}
	})
	create(t, pin)
	eventually(t, func() error {
		var got appsv1.Deployment
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(dep), &got); err != nil {
			return err
		}
		if img := got.Spec.Template.Spec.Containers[0].Image; img != image+"@"+a {
			return fmt.Errorf("the referenced Deployment names %s, want it pinned", img)
		}
		p, err := checked(pin)
		if err != nil {
			return err
		}
		_, w, err := entryFor(p, image, "wref-app", "app")
		if err != nil {
			return err
		}
		if w.Kind != imagesv1alpha1.KindDeployment || len(w.Running) != 1 || string(w.Running[0].Digest) != a {
			return fmt.Errorf("entry %+v, want the Deployment with the Rollout's pod running %s", w, a)
		}
		return nil
	})
}

// checkedEntry is entryFor of the ImagePin once checked.
func checkedEntry(p *imagesv1alpha1.ImagePin, image, workloadName, container string) (*imagesv1alpha1.ImageStatus, *imagesv1alpha1.WorkloadImage, error) {
	got, err := checked(p)
	if err != nil {
		return nil, nil, err
	}
	return entryFor(got, image, workloadName, container)
}

// Issue 19: an index whose digest the pods run (as containerd reports it)
// is resolved with HEADs alone: its platforms are never read, so no GET,
// which Docker Hub would count as a pull. TestMultiArchPlatformDigestIsNotDrift
// is the other side: pods that run platform digests have them learnt.
func TestAnIndexThePodsRunIsNeverRead(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	var gets atomic.Int32
	remove := reg.Route("multi-idx/app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") {
			gets.Add(1)
		}
		reg.Backend().ServeHTTP(w, r)
	}))
	defer remove()
	image := reg.Image("multi-idx/app:v1")
	index, _ := reg.PushIndex(t, "multi-idx/app:v1")
	gets.Store(0)
	deploymentRunning(t, ns, "idx", image, podRun{"node-a", index}, podRun{"node-b", index})
	pin := observePin(ns, "idx")
	create(t, pin)
	eventually(t, func() error {
		img, w, err := checkedEntry(pin, image, "idx", "app")
		if err != nil {
			return err
		}
		if string(img.Digest) != index {
			return fmt.Errorf("digest = %s, want the index %s", img.Digest, index)
		}
		return driftIs(w, imagesv1alpha1.DriftUnpinned)
	})
	if n := gets.Load(); n != 0 {
		t.Errorf("%d manifest GETs for an index the pods run, want none", n)
	}
}

// A spec pinned to one platform's manifest of the tag's index, whose pods
// run it, has not drifted: the index's platforms are learnt, because the
// spec names another digest than the tag (review of issue 19 item 2).
func TestSpecPinnedToAPlatformOfTheTagIsNotDrift(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("multi-platform/app:v1")
	index, children := reg.PushIndex(t, "multi-platform/app:v1")
	deploymentRunning(t, ns, "amd64", image+"@"+children[0], podRun{"amd64-node", children[0]})
	pin := observePin(ns, "amd64")
	create(t, pin)
	eventually(t, func() error {
		img, w, err := checkedEntry(pin, image, "amd64", "app")
		if err != nil {
			return err
		}
		if string(img.Digest) != index {
			return fmt.Errorf("digest = %s, want the index %s", img.Digest, index)
		}
		return driftIs(w)
	})
}
