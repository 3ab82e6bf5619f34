package pinning

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// setImage does what `kubectl set image` does: a strategic merge patch of
// one container's image, as field manager kubectl-set.
func setImage(t *testing.T, ns, name, container, image string) {
	t.Helper()
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":%q,"image":%q}]}}}}`, container, image)
	if err := k8s.Patch(context.Background(), d, client.RawPatch(types.StrategicMergePatchType, []byte(patch)), client.FieldOwner("kubectl-set")); err != nil {
		t.Fatalf("set image %s=%s: %v", container, image, err)
	}
}

func conflictOf(t *testing.T, p *imagesv1alpha1.ImagePin) *metav1.Condition {
	t.Helper()
	return meta.FindStatusCondition(getPin(t, p).Status.Conditions, imagesv1alpha1.ConditionConflict)
}

// Issue 13 item 1: under Pin, four releases by `kubectl set image` (v2, v3,
// v4, v5) are each pinned; none counts toward Conflict.
func TestReleasesAreNotReverts(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app := reg.Image("release/app")
	digests := map[string]string{}
	for _, tag := range []string{"v1", "v2", "v3", "v4", "v5"} {
		digests[tag] = reg.Push(t, "release/app:"+tag)
	}
	create(t, deployment(ns, "web", "app="+app+":v1"))
	pin := imagePin(ns, "web", imagesv1alpha1.ModePin)
	create(t, pin)
	eventually(t, 30*time.Second, imageIs(t, ns, "web", "app", app+":v1@"+digests["v1"]))
	for _, tag := range []string{"v2", "v3", "v4", "v5"} {
		setImage(t, ns, "web", "app", app+":"+tag)
		eventually(t, 30*time.Second, imageIs(t, ns, "web", "app", app+":"+tag+"@"+digests[tag]))
	}
	if c := conflictOf(t, pin); c == nil || c.Status != metav1.ConditionFalse {
		t.Fatalf("Conflict = %+v after four releases, want False", c)
	}
}

// Issue 13 item 2: a Deployment deleted and created again under a Pin
// ImagePin ends pinned.
func TestRecreatedWorkloadIsPinnedAgain(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app := reg.Image("recreate/app:v1")
	a := reg.Push(t, "recreate/app:v1")
	create(t, deployment(ns, "web", "app="+app))
	create(t, imagePin(ns, "web", imagesv1alpha1.ModePin))
	eventually(t, 30*time.Second, imageIs(t, ns, "web", "app", app+"@"+a))
	eventually(t, 30*time.Second, func() error {
		if g := rolloutOf(t, ns, "web").generation; g != 2 {
			return fmt.Errorf("generation %d, want 2", g)
		}
		return nil
	})

	old := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"}}
	if err := k8s.Delete(context.Background(), old, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		err := k8s.Get(context.Background(), client.ObjectKeyFromObject(old), &appsv1.Deployment{})
		if err == nil {
			return fmt.Errorf("not deleted yet")
		}
		return client.IgnoreNotFound(err)
	})
	create(t, deployment(ns, "web", "app="+app))
	eventually(t, 30*time.Second, imageIs(t, ns, "web", "app", app+"@"+a))
}

// Issue 13 item 2: an ImagePin deleted and created again starts afresh: a
// workload the first one stopped writing (Conflict) is pinned again.
func TestRecreatedImagePinStartsAfresh(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app := reg.Image("recreate-pin/app:v1")
	a := reg.Push(t, "recreate-pin/app:v1")
	create(t, deployment(ns, "synced", "app="+app))
	pin := imagePin(ns, "synced", imagesv1alpha1.ModePin)
	create(t, pin)
	for range maxReverts {
		eventually(t, 30*time.Second, imageIs(t, ns, "synced", "app", app+"@"+a))
		setImage(t, ns, "synced", "app", app)
	}
	eventually(t, 30*time.Second, func() error {
		if c := conflictOf(t, pin); c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("Conflict = %+v, want True", c)
		}
		return nil
	})
	if err := k8s.Delete(context.Background(), pin); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		return notFound(k8s.Get(context.Background(), client.ObjectKeyFromObject(pin), &imagesv1alpha1.ImagePin{}))
	})
	create(t, imagePin(ns, "synced", imagesv1alpha1.ModePin))
	eventually(t, 30*time.Second, imageIs(t, ns, "synced", "app", app+"@"+a))
}

func notFound(err error) error {
	if err == nil {
		return fmt.Errorf("still there")
	}
	return client.IgnoreNotFound(err)
}

// Issue 13 item 4: an image with no tag is pinned as repo:latest@digest and
// Follow keeps following :latest.
func TestUntaggedImageKeepsFollowing(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app := reg.Image("untagged/app")
	a := reg.Push(t, "untagged/app:latest")
	create(t, deployment(ns, "web", "app="+app))
	pin := imagePin(ns, "web", imagesv1alpha1.ModeFollow)
	create(t, pin)
	eventually(t, 30*time.Second, imageIs(t, ns, "web", "app", app+":latest@"+a))
	b := reg.Push(t, "untagged/app:latest")
	eventually(t, 45*time.Second, imageIs(t, ns, "web", "app", app+":latest@"+b))
	// The check writes the workload, then its status: the status may
	// come a moment after the workload.
	eventually(t, 10*time.Second, func() error {
		got := getPin(t, pin)
		if len(got.Status.Images) != 1 || got.Status.Images[0].Image != app+":latest" || len(got.Status.Images[0].History) != 2 {
			return fmt.Errorf("status images = %+v, want one image %s:latest with two digests in its history", got.Status.Images, app)
		}
		return nil
	})
}

// --- Issue 13 item 3: server-side apply next to a GitOps tool ---

// gitopsApply applies a Deployment named web, labelled app=web, with the
// containers and init containers given as name=image, as field manager
// manager, the way a GitOps tool does.
func gitopsApply(t *testing.T, ns, manager string, force bool, inits, containers []string) error {
	t.Helper()
	list := func(items []string) []any {
		var out []any
		for _, c := range items {
			n, img, _ := strings.Cut(c, "=")
			out = append(out, map[string]any{"name": n, "image": img, "ports": []any{map[string]any{"containerPort": int64(8080 + len(out))}},
				"env": []any{map[string]any{"name": "TEAM", "value": "payments"}}})
		}
		return out
	}
	spec := map[string]any{"containers": list(containers)}
	if len(inits) > 0 {
		spec["initContainers"] = list(inits)
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": map[string]any{"name": "web", "namespace": ns, "labels": map[string]any{"app": "web"}},
		"spec": map[string]any{
			"replicas": int64(1),
			"selector": map[string]any{"matchLabels": map[string]any{"app": "web"}},
			"template": map[string]any{"metadata": map[string]any{"labels": map[string]any{"app": "web"}}, "spec": spec},
		},
	}}
	opts := []client.ApplyOption{client.FieldOwner(manager)}
	if force {
		opts = append(opts, client.ForceOwnership)
	}
	return k8s.Apply(context.Background(), client.ApplyConfigurationFromUnstructured(u), opts...)
}

// templateOf reads the containers and init containers of Deployment web as
// name=image, and fails the check when one lost fields the tool applied.
func templateOf(t *testing.T, ns string) (inits, containers []string, err error) {
	t.Helper()
	var d appsv1.Deployment
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "web"}, &d); err != nil {
		t.Fatal(err)
	}
	read := func(cs []corev1.Container) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Name+"="+c.Image)
			if len(c.Ports) == 0 || len(c.Env) == 0 {
				err = fmt.Errorf("container %s was left with only some of its fields: %+v", c.Name, c)
			}
		}
		return out
	}
	return read(d.Spec.Template.Spec.InitContainers), read(d.Spec.Template.Spec.Containers), err
}

func templateIs(t *testing.T, ns string, wantInits, wantContainers []string) func() error {
	return func() error {
		inits, containers, err := templateOf(t, ns)
		if err != nil {
			return err
		}
		if !slices.Equal(inits, wantInits) || !slices.Equal(containers, wantContainers) {
			return fmt.Errorf("init containers %v and containers %v, want %v and %v", inits, containers, wantInits, wantContainers)
		}
		return nil
	}
}

func TestServerSideApplyNextToAGitOpsTool(t *testing.T) {
	t.Parallel()
	app, sidecar, migrate := reg.Image("ssa/app:v1"), reg.Image("ssa/proxy:v1"), reg.Image("ssa/migrate:v1")
	a, p, m := reg.Push(t, "ssa/app:v1"), reg.Push(t, "ssa/proxy:v1"), reg.Push(t, "ssa/migrate:v1")
	app2 := reg.Image("ssa/app:v2")
	a2 := reg.Push(t, "ssa/app:v2")

	// setup applies app+sidecar (and an init container) as the tool, and
	// waits until imagepin pinned them all.
	setup := func(t *testing.T, withInit bool) string {
		ns := namespace(t)
		var inits, wantInits []string
		if withInit {
			inits, wantInits = []string{"migrate=" + migrate}, []string{"migrate=" + migrate + "@" + m}
		}
		if err := gitopsApply(t, ns, "argocd-controller", true, inits, []string{"app=" + app, "proxy=" + sidecar}); err != nil {
			t.Fatal(err)
		}
		create(t, imagePin(ns, "web", imagesv1alpha1.ModePin))
		eventually(t, 30*time.Second, templateIs(t, ns, wantInits, []string{"app=" + app + "@" + a, "proxy=" + sidecar + "@" + p}))
		// A write and the release of its ownership are two requests: an
		// apply without force in between would still meet imagepin.
		eventually(t, 30*time.Second, ownsNothing(ns))
		return ns
	}

	for _, force := range []bool{true, false} {
		t.Run(fmt.Sprintf("the tool drops a sidecar, force=%v", force), func(t *testing.T) {
			t.Parallel()
			ns := setup(t, false)
			if err := gitopsApply(t, ns, "argocd-controller", force, nil, []string{"app=" + app}); err != nil {
				t.Fatalf("the tool's apply failed: %v", err)
			}
			// The sidecar is gone at once, not left as name and image, and
			// app ends pinned again.
			if _, containers, _ := templateOf(t, ns); slices.ContainsFunc(containers, func(c string) bool { return strings.HasPrefix(c, "proxy=") }) {
				t.Fatalf("the dropped sidecar survived the tool's apply: %v", containers)
			}
			eventually(t, 30*time.Second, templateIs(t, ns, nil, []string{"app=" + app + "@" + a}))
		})
		t.Run(fmt.Sprintf("the tool drops an init container, force=%v", force), func(t *testing.T) {
			t.Parallel()
			ns := setup(t, true)
			if err := gitopsApply(t, ns, "argocd-controller", force, nil, []string{"app=" + app, "proxy=" + sidecar}); err != nil {
				t.Fatalf("the tool's apply failed: %v", err)
			}
			if inits, _, _ := templateOf(t, ns); len(inits) != 0 {
				t.Fatalf("the dropped init container survived the tool's apply: %v", inits)
			}
			eventually(t, 30*time.Second, templateIs(t, ns, nil, []string{"app=" + app + "@" + a, "proxy=" + sidecar + "@" + p}))
		})
		t.Run(fmt.Sprintf("the tool releases app while proxy stays, force=%v", force), func(t *testing.T) {
			t.Parallel()
			ns := setup(t, false)
			if err := gitopsApply(t, ns, "argocd-controller", force, nil, []string{"app=" + app2, "proxy=" + sidecar}); err != nil {
				t.Fatalf("the tool's apply failed: %v", err)
			}
			eventually(t, 30*time.Second, templateIs(t, ns, nil, []string{"app=" + app2 + "@" + a2, "proxy=" + sidecar + "@" + p}))
		})
	}

	// An image updater that applies only the one container it manages:
	// the other stays pinned, and imagepin's next write keeps the object
	// valid.
	t.Run("another manager releases one container while the other stays pinned", func(t *testing.T) {
		t.Parallel()
		ns := setup(t, false)
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "apps/v1", "kind": "Deployment",
			"metadata": map[string]any{"name": "web", "namespace": ns},
			"spec": map[string]any{"template": map[string]any{"spec": map[string]any{
				"containers": []any{map[string]any{"name": "app", "image": app2}},
			}}},
		}}
		if err := k8s.Apply(context.Background(), client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("image-updater"), client.ForceOwnership); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, templateIs(t, ns, nil, []string{"app=" + app2 + "@" + a2, "proxy=" + sidecar + "@" + p}))
	})

	// The user's own `kubectl apply --server-side` of the unchanged
	// manifest after imagepin pinned it does not conflict with imagepin.
	t.Run("a user's apply of the unchanged manifest does not conflict", func(t *testing.T) {
		t.Parallel()
		ns := setup(t, false)
		if err := gitopsApply(t, ns, "kubectl", false, nil, []string{"app=" + app, "proxy=" + sidecar}); err != nil {
			t.Fatalf("kubectl apply --server-side of the unchanged manifest: %v", err)
		}
		eventually(t, 30*time.Second, templateIs(t, ns, nil, []string{"app=" + app + "@" + a, "proxy=" + sidecar + "@" + p}))
	})

}

// ownsNothing: imagepin owns no field of Deployment web.
func ownsNothing(ns string) func() error {
	return func() error {
		var d appsv1.Deployment
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "web"}, &d); err != nil {
			return err
		}
		for _, e := range d.ManagedFields {
			if e.Manager == "imagepin" {
				return fmt.Errorf("imagepin still owns fields: %s", e.FieldsV1)
			}
		}
		return nil
	}
}

// --- Issue 13 item 5: a big ImagePin never gets stuck ---

func cronJob(ns, name, label, image string) *batchv1.CronJob {
	return &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": label}},
		Spec: batchv1.CronJobSpec{Schedule: "0 3 * * *", JobTemplate: batchv1.JobTemplateSpec{
			Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "task", Image: image}},
			}}},
		}},
	}
}

func cronJobImage(t *testing.T, ns, name string) string {
	t.Helper()
	var cj batchv1.CronJob
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &cj); err != nil {
		t.Fatal(err)
	}
	return cj.Spec.JobTemplate.Spec.Template.Spec.Containers[0].Image
}

// 300 CronJobs sharing one image under one Pin ImagePin: the status is
// written (Ready, history) and shows TagMoved on a re-push, although the
// CRD lists at most 256 workloads per image.
func TestThreeHundredWorkloadsOnOneImage(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	img := reg.Image("big/app:v1")
	a := reg.Push(t, "big/app:v1")
	const n = 300
	for i := range n {
		create(t, cronJob(ns, fmt.Sprintf("job-%03d", i), "big", img))
	}
	pin := imagePin(ns, "big", imagesv1alpha1.ModePin)
	create(t, pin)
	eventually(t, 90*time.Second, func() error {
		got := getPin(t, pin)
		if !meta.IsStatusConditionTrue(got.Status.Conditions, imagesv1alpha1.ConditionReady) || got.Status.Summary.Pinned != n {
			return fmt.Errorf("summary %+v, Ready %v: want %d pinned and Ready", got.Status.Summary, meta.IsStatusConditionTrue(got.Status.Conditions, imagesv1alpha1.ConditionReady), n)
		}
		return nil
	})
	if got := cronJobImage(t, ns, fmt.Sprintf("job-%03d", n-1)); got != img+"@"+a {
		t.Fatalf("the last CronJob is %s, want pinned", got)
	}
	b := reg.Push(t, "big/app:v1")
	eventually(t, 45*time.Second, func() error {
		got := getPin(t, pin)
		if len(got.Status.Images) != 1 {
			return fmt.Errorf("%d images in status", len(got.Status.Images))
		}
		st := got.Status.Images[0]
		if string(st.Digest) != b || len(st.History) != 2 {
			return fmt.Errorf("digest %s with %d history entries, want %s and 2", st.Digest, len(st.History), b)
		}
		if len(st.Workloads) == 0 || fmt.Sprint(st.Workloads[0].Drift) != "[TagMoved]" || got.Status.Summary.Drifted != n {
			return fmt.Errorf("drift not reported for every workload: summary %+v", got.Status.Summary)
		}
		if len(st.Workloads) > 256 || got.Status.Summary.Omitted != int32(n-len(st.Workloads)) {
			return fmt.Errorf("%d workloads listed, %d omitted", len(st.Workloads), got.Status.Summary.Omitted)
		}
		return nil
	})
}

// Follow keeps moving an image left out of status: 101 images under one
// ImagePin (status lists at most 100), and the one left out moves.
func TestFollowMovesImagesLeftOutOfStatus(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	const n = 101
	first := map[int]string{}
	for i := range n {
		first[i] = reg.Push(t, fmt.Sprintf("many/app-%03d:v1", i))
		create(t, cronJob(ns, fmt.Sprintf("job-%03d", i), "many", reg.Image(fmt.Sprintf("many/app-%03d:v1", i))))
	}
	pin := imagePin(ns, "many", imagesv1alpha1.ModeFollow)
	create(t, pin)
	last := fmt.Sprintf("job-%03d", n-1)
	lastImage := reg.Image(fmt.Sprintf("many/app-%03d:v1", n-1))
	eventually(t, 60*time.Second, func() error {
		if got := cronJobImage(t, ns, last); got != lastImage+"@"+first[n-1] {
			return fmt.Errorf("%s is %s, not pinned yet", last, got)
		}
		return nil
	})
	for _, img := range getPin(t, pin).Status.Images {
		if img.Image == lastImage {
			t.Fatalf("the test needs %s left out of status, but it is listed", lastImage)
		}
	}
	moved := reg.Push(t, fmt.Sprintf("many/app-%03d:v1", n-1))
	eventually(t, 45*time.Second, func() error {
		if got := cronJobImage(t, ns, last); got != lastImage+"@"+moved {
			return fmt.Errorf("%s is %s, want it followed to %s", last, got, moved)
		}
		return nil
	})
}

// Issue 13 item 10: the writer of a container respects image filters: two
// ImagePins with disjoint images.include select one Deployment, and each
// pins its own container.
func TestImagePinsWithDisjointImageFiltersBothPin(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app, sidecar := reg.Image("disjoint/apps/web:v1"), reg.Image("disjoint/sidecars/proxy:v1")
	a, p := reg.Push(t, "disjoint/apps/web:v1"), reg.Push(t, "disjoint/sidecars/proxy:v1")
	create(t, deployment(ns, "web", "app="+app, "proxy="+sidecar))
	create(t,
		imagePin(ns, "web", imagesv1alpha1.ModePin, func(p *imagesv1alpha1.ImagePin) {
			p.Name = "a-apps"
			p.Spec.Images = &imagesv1alpha1.ImageFilter{Include: []string{"*/apps/*"}}
		}),
		imagePin(ns, "web", imagesv1alpha1.ModePin, func(p *imagesv1alpha1.ImagePin) {
			p.Name = "b-sidecars"
			p.Spec.Images = &imagesv1alpha1.ImageFilter{Include: []string{"*/sidecars/*"}}
		}))
	eventually(t, 30*time.Second, imageIs(t, ns, "web", "app", app+"@"+a))
	eventually(t, 30*time.Second, imageIs(t, ns, "web", "proxy", sidecar+"@"+p))
}

// Issue 14 item 4: an image volume is pinned and followed like a container,
// in one rollout per real change.
func TestImageVolumeIsPinnedAndFollowed(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	app, models := reg.Image("volpin/app:v1"), reg.Image("volpin/models:v1")
	a := reg.Push(t, "volpin/app:v1")
	m1 := reg.Push(t, "volpin/models:v1")
	d := deployment(ns, "ml", "app="+app)
	d.Spec.Template.Spec.Volumes = []corev1.Volume{{Name: "models", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: models}}}}
	d.Spec.Template.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "models", MountPath: "/models"}}
	create(t, d)
	create(t, imagePin(ns, "ml", imagesv1alpha1.ModeFollow))
	volumeIs := func(want string) func() error {
		return func() error {
			var got appsv1.Deployment
			if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(d), &got); err != nil {
				return err
			}
			if ref := got.Spec.Template.Spec.Volumes[0].Image.Reference; ref != want {
				return fmt.Errorf("volume reference %s, want %s", ref, want)
			}
			return nil
		}
	}
	eventually(t, 30*time.Second, volumeIs(models+"@"+m1))
	eventually(t, 30*time.Second, imageIs(t, ns, "ml", "app", app+"@"+a))
	eventually(t, 30*time.Second, func() error {
		if g := rolloutOf(t, ns, "ml").generation; g != 2 {
			return fmt.Errorf("generation %d, want 2: one write for both", g)
		}
		return nil
	})
	m2 := reg.Push(t, "volpin/models:v1")
	eventually(t, 45*time.Second, volumeIs(models+"@"+m2))
	if g := rolloutOf(t, ns, "ml").generation; g != 3 {
		t.Fatalf("generation %d, want 3: one rollout for the volume's change", g)
	}
}
