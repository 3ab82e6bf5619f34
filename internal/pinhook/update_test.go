package pinhook

import (
	"context"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Issue 13 item 6 (the UPDATE rule) and item 7 (overrides on images that
// carry a digest): planImage decides each image from plain values.
func TestPlanImage(t *testing.T) {
	const (
		tag  = "reg.example/app:v1"
		tag2 = "reg.example/app:v2"
	)
	x := "sha256:" + strings.Repeat("1", 64)
	y := "sha256:" + strings.Repeat("2", 64)
	resolve := func(ref string) *imagePlan { return &imagePlan{ref: ref} }
	// An override's plan says so: the webhook checks its digest is still
	// in the registry.
	overrideTo := func(ref, d string) *imagePlan { return &imagePlan{ref: ref, digest: d, override: true} }
	for _, tc := range []struct {
		name string
		in   imageInput
		want *imagePlan // nil: left as it is
	}{
		{"create pins a tag", imageInput{image: tag, selected: true}, resolve(tag)},
		{"not selected", imageInput{image: tag}, nil},
		{"empty image", imageInput{selected: true}, nil},
		{"create leaves a pinned image", imageInput{image: tag + "@" + x, selected: true}, nil},
		{"create leaves a malformed digest", imageInput{image: tag + "@sha256:nope", selected: true}, nil},

		// Item 6: Jobs and bare Pods on UPDATE.
		{"job or pod update with the image unchanged", imageInput{image: tag, selected: true, update: true, old: tag, hadOld: true}, nil},
		{"pod update that changes the image", imageInput{image: tag2, selected: true, update: true, old: tag + "@" + x, hadOld: true}, resolve(tag2)},
		{"pod update back to the tag it runs pinned", imageInput{image: tag, selected: true, update: true, old: tag + "@" + x, hadOld: true}, &imagePlan{ref: tag, digest: x, kept: true}},
		{"job update with an override but the image unchanged", imageInput{image: tag + "@" + x, selected: true, update: true, old: tag + "@" + x, hadOld: true, override: y}, nil},
		{"pod update adds a container", imageInput{image: tag, selected: true, update: true}, resolve(tag)},

		// Templates that may change pin on any UPDATE.
		{"deployment update pins an unchanged tag", imageInput{image: tag, selected: true, update: true, templateMutable: true, old: tag, hadOld: true}, resolve(tag)},
		{"deployment re-apply keeps the running digest", imageInput{image: tag, selected: true, update: true, templateMutable: true, old: tag + "@" + x, hadOld: true}, &imagePlan{ref: tag, digest: x, kept: true}},
		{"deployment release of a new tag resolves it", imageInput{image: tag2, selected: true, update: true, templateMutable: true, old: tag + "@" + x, hadOld: true}, resolve(tag2)},

		// Item 7: overrides apply to pinned images too.
		{"override on a tag", imageInput{image: tag, selected: true, override: y}, overrideTo(tag, y)},
		{"override on an image pinned elsewhere", imageInput{image: tag + "@" + x, selected: true, override: y}, overrideTo(tag, y)},
		{"override already in place", imageInput{image: tag + "@" + y, selected: true, override: y}, nil},
		{"override on an update of a deployment pinned by CI", imageInput{image: tag + "@" + x, selected: true, update: true, templateMutable: true, old: tag + "@" + y, hadOld: true, override: y}, overrideTo(tag, y)},
		{"override on an image not selected", imageInput{image: tag + "@" + x, override: y}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := planImage(tc.in)
			switch {
			case tc.want == nil && ok:
				t.Fatalf("planImage = %+v, want the image left as it is", got)
			case tc.want != nil && !ok:
				t.Fatalf("planImage left the image, want %+v", *tc.want)
			case tc.want != nil && got != *tc.want:
				t.Fatalf("planImage = %+v, want %+v", got, *tc.want)
			}
		})
	}
}

// Issue 13 item 6: through the handler, an UPDATE of a Job or a bare Pod
// pins only images the request changes, ephemeral containers and
// subresources are never patched, and an object being deleted is left
// alone; a Deployment's UPDATE still pins.
func TestHandleUpdatePinsOnlyWhatItMayChange(t *testing.T) {
	e := hookEnvFor(t)
	labels := `{"app":"web"}`
	v1 := "REG/app:v1"
	pinnedV1 := e.reg.Image("app:v1") + "@" + e.digest
	withLabel := func(obj string) string {
		return strings.Replace(obj, `"labels":{"app":"web"}`, `"labels":{"app":"web","team":"x"}`, 1)
	}
	for _, tc := range []struct {
		name     string
		kind     string
		old, obj string
		sub      string
		want     map[string]string // pointer → image written
	}{
		{
			name: "job label", kind: "Job",
			old: seedObject("Job", labels, v1), obj: withLabel(seedObject("Job", labels, v1)),
		},
		{
			name: "job unsuspend", kind: "Job",
			old: strings.Replace(seedObject("Job", labels, v1), `"spec":{"template"`, `"spec":{"suspend":true,"template"`, 1),
			obj: strings.Replace(seedObject("Job", labels, v1), `"spec":{"template"`, `"spec":{"suspend":false,"template"`, 1),
		},
		{
			name: "job finalizer removal", kind: "Job",
			old: strings.Replace(seedObject("Job", labels, v1), `"metadata":{"name":"x",`, `"metadata":{"name":"x","deletionTimestamp":"2025-01-01T00:00:00Z","finalizers":["hold"],`, 1),
			obj: strings.Replace(seedObject("Job", labels, v1), `"metadata":{"name":"x",`, `"metadata":{"name":"x","deletionTimestamp":"2025-01-01T00:00:00Z",`, 1),
		},
		{
			name: "pod label", kind: "Pod",
			old: seedObject("Pod", labels, v1), obj: withLabel(seedObject("Pod", labels, v1)),
		},
		{
			name: "pod image changed in one container", kind: "Pod",
			old:  seedObject("Pod", labels, v1, "REG/app:v0"),
			obj:  seedObject("Pod", labels, v1, v1),
			want: map[string]string{"/spec/containers/1/image": pinnedV1},
		},
		{
			name: "pod with an ephemeral container", kind: "Pod",
			old: withEphemeral(seedObject("Pod", labels, pinnedV1), v1),
			obj: withLabel(withEphemeral(seedObject("Pod", labels, pinnedV1), v1)),
		},
		{
			// The API server refuses this change through the Pod itself;
			// the webhook must not make it either.
			name: "pod update that changes an ephemeral container", kind: "Pod",
			old: withEphemeral(seedObject("Pod", labels, pinnedV1), "REG/app:v0"),
			obj: withEphemeral(seedObject("Pod", labels, pinnedV1), v1),
		},
		{
			name: "ephemeralcontainers subresource", kind: "Pod", sub: "ephemeralcontainers",
			old: seedObject("Pod", labels, pinnedV1), obj: withEphemeral(seedObject("Pod", labels, v1), v1),
		},
		{
			name: "deployment being deleted", kind: "Deployment",
			old: seedObject("Deployment", labels, v1),
			obj: strings.Replace(seedObject("Deployment", labels, v1), `"metadata":{"name":"x",`, `"metadata":{"name":"x","deletionTimestamp":"2025-01-01T00:00:00Z",`, 1),
		},
		{
			name: "deployment label pins its template", kind: "Deployment",
			old: seedObject("Deployment", labels, v1), obj: withLabel(seedObject("Deployment", labels, v1)),
			want: map[string]string{
				"/spec/template/spec/initContainers/0/image": pinnedV1,
				"/spec/template/spec/containers/0/image":     pinnedV1,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := e.request(tc.kind, []byte(tc.obj), []byte(tc.old))
			req.SubResource = tc.sub
			if req.Operation != admissionv1.Update {
				t.Fatal("the request is not an UPDATE")
			}
			resp := e.h.Handle(context.Background(), req)
			checkResponse(t, tc.kind, req.Object.Raw, resp)
			if !resp.Allowed {
				t.Fatalf("refused: %+v", resp.Result)
			}
			got := map[string]string{}
			for _, op := range resp.Patches {
				got[op.Path], _ = op.Value.(string)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("patches %v, want %v", got, tc.want)
			}
			for p, img := range tc.want {
				if got[p] != img {
					t.Fatalf("patches %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// withEphemeral adds an ephemeral container naming image to a Pod.
func withEphemeral(pod, image string) string {
	return strings.Replace(pod, `"spec":{"containers":[`, `"spec":{"ephemeralContainers":[{"name":"debug","image":"`+image+`"}],"containers":[`, 1)
}

// Issue 13 item 6: a Job stored unpinned (created before the ImagePin)
// still takes, unchanged, a label, an unsuspend and the removal of its
// last finalizer once a Pin ImagePin selects it; before, the webhook
// pinned its immutable template on each of these UPDATEs and the API
// server refused them.
func TestUnpinnedJobTakesLabelUnsuspendAndFinalizerRemoval(t *testing.T) {
	ns := namespace(t)
	reg.Push(t, "batch/app:v1")
	image := reg.Image("batch/app:v1")
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "batch", Labels: map[string]string{"app": "batch"}, Finalizers: []string{"test.imagepin.dev/hold"}},
		Spec: batchv1.JobSpec{
			Suspend: new(true),
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "app", Image: image}},
			}},
		},
	}
	if err := k8s.Create(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	pinFor(t, ns, "batch")

	update := func(what string, change func(*batchv1.Job)) {
		t.Helper()
		var got batchv1.Job
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(job), &got); err != nil {
				return err
			}
			change(&got)
			return k8s.Update(context.Background(), &got)
		})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if img := got.Spec.Template.Spec.Containers[0].Image; img != image {
			t.Fatalf("%s stored image %s, want it unchanged (%s)", what, img, image)
		}
	}
	update("kubectl label", func(j *batchv1.Job) { j.Labels["team"] = "data" })
	update("unsuspend", func(j *batchv1.Job) { j.Spec.Suspend = new(false) })
	propagation := metav1.DeletePropagationBackground
	if err := k8s.Delete(context.Background(), job, &client.DeleteOptions{PropagationPolicy: &propagation}); err != nil {
		t.Fatal(err)
	}
	update("finalizer removal", func(j *batchv1.Job) {
		if j.DeletionTimestamp == nil {
			t.Fatal("the Job is not being deleted")
		}
		j.Finalizers = nil
	})
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(job), &batchv1.Job{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the Job is still there after its last finalizer was removed: %v", err)
	}
}

// Issue 13 item 6: a bare Pod's UPDATE never changes the image of a
// container it does not change (stored unpinned before the ImagePin), pins
// the one it changes, and leaves ephemeral containers (added through
// their subresource) alone.
func TestBarePodUpdateKeepsRunningImages(t *testing.T) {
	ns := namespace(t)
	reg.Push(t, "bare/app:v1")
	reg.Push(t, "bare/proxy:v1")
	v2 := reg.Push(t, "bare/proxy:v2")
	reg.Push(t, "bare/debug:v1")
	app := reg.Image("bare/app:v1")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bare", Labels: map[string]string{"app": "bare"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "app", Image: app},
			{Name: "proxy", Image: reg.Image("bare/proxy:v1")},
		}},
	}
	if err := k8s.Create(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	pinFor(t, ns, "bare")

	update := func(what string, change func(*corev1.Pod)) *corev1.Pod {
		t.Helper()
		var got corev1.Pod
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pod), &got); err != nil {
				return err
			}
			change(&got)
			return k8s.Update(context.Background(), &got)
		})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return &got
	}
	got := update("kubectl label", func(p *corev1.Pod) { p.Labels["team"] = "web" })
	if img := got.Spec.Containers[0].Image; img != app {
		t.Fatalf("a label update changed the running image to %s, want %s", img, app)
	}

	got = update("kubectl set image proxy", func(p *corev1.Pod) { p.Spec.Containers[1].Image = reg.Image("bare/proxy:v2") })
	if img := got.Spec.Containers[1].Image; img != reg.Image("bare/proxy:v2")+"@"+v2 {
		t.Fatalf("the image the update set is stored as %s, want it pinned", img)
	}
	if img := got.Spec.Containers[0].Image; img != app {
		t.Fatalf("an update of another container changed app's image to %s, want %s", img, app)
	}

	got.Spec.EphemeralContainers = append(got.Spec.EphemeralContainers, corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug", Image: reg.Image("bare/debug:v1")},
	})
	if err := k8s.SubResource("ephemeralcontainers").Update(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	got = update("kubectl annotate", func(p *corev1.Pod) { p.Annotations = map[string]string{"note": "debugging"} })
	if n := len(got.Spec.EphemeralContainers); n != 1 {
		t.Fatalf("%d ephemeral containers, want 1", n)
	}
	if img := got.Spec.EphemeralContainers[0].Image; img != reg.Image("bare/debug:v1") {
		t.Fatalf("the ephemeral container's image became %s through the Pod", img)
	}
	if img := got.Spec.Containers[0].Image; img != app {
		t.Fatalf("an annotation changed app's image to %s", img)
	}
}
