package workload

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func container(name, image string) map[string]any {
	return map[string]any{"name": name, "image": image}
}

func podSpec(containers ...map[string]any) map[string]any {
	items := make([]any, len(containers))
	for i, c := range containers {
		items[i] = c
	}
	return map[string]any{"containers": items, "serviceAccountName": "trainer"}
}

// A --workload-kind names a kind, its pod spec paths with wildcards, the
// kinds between it and its pods, and whether its templates are mutable.
func TestParseKind(t *testing.T) {
	k, err := ParseKind("jobset.x-k8s.io/v1alpha2/JobSet,spec=spec.replicatedJobs.*.template.spec.template.spec,via=batch/v1/Job,immutable")
	if err != nil {
		t.Fatal(err)
	}
	if k.Name != "JobSet" || k.GVK != (schema.GroupVersionKind{Group: "jobset.x-k8s.io", Version: "v1alpha2", Kind: "JobSet"}) ||
		k.TemplateMutable || !k.Workload || !k.Admission || !k.Optional || !k.Configured || k.Type != nil {
		t.Errorf("JobSet = %+v", k)
	}
	if len(k.Via) != 1 || k.Via[0] != job {
		t.Errorf("via batch/v1/Job is not the table's Job: %+v", k.Via)
	}
	if len(k.Specs) != 1 || k.Specs[0].String() != "spec.replicatedJobs.*.template.spec.template.spec" {
		t.Errorf("specs = %v", k.Specs)
	}
	lws, err := ParseKind("leaderworkerset.x-k8s.io/v1/LeaderWorkerSet,spec=leader:spec.leaderWorkerTemplate.leaderTemplate.spec,spec=worker:spec.leaderWorkerTemplate.workerTemplate.spec,via=apps/v1/StatefulSet")
	if err != nil {
		t.Fatal(err)
	}
	if len(lws.Specs) != 2 || lws.Specs[0].Name != "leader" || lws.Specs[1].Name != "worker" || !lws.TemplateMutable {
		t.Errorf("LeaderWorkerSet = %+v", lws)
	}
	custom, err := ParseKind("serving.knative.dev/v1/Service,spec=spec.template.spec,via=serving.knative.dev/v1/Revision,via=apps/v1/Deployment,via=apps/v1/ReplicaSet")
	if err != nil {
		t.Fatal(err)
	}
	if rev := custom.Via[0]; rev.Type != nil || rev.Workload || rev.GVK.Kind != "Revision" || !rev.Optional {
		t.Errorf("a custom via kind is read unstructured, not as a workload: %+v", rev)
	}

	for value, says := range map[string]string{
		"PyTorchJob,spec=spec.template.spec":                                                  "is not <group>/<version>/<Kind>",
		"kubeflow.org/v1/pytorchjob,spec=spec.template.spec":                                  "capital letter",
		"kubeflow.org/v1/PyTorchJob":                                                          "no spec=<path>",
		"kubeflow.org/v1/PyTorchJob,spec=spec..template":                                      `field ""`,
		"kubeflow.org/v1/PyTorchJob,spec=spec.a b":                                            `field "a b"`,
		"kubeflow.org/v1/PyTorchJob,spec=*.template.spec":                                     "starts at a field",
		"kubeflow.org/v1/PyTorchJob,spec=spec.a,spec=spec.b":                                  "each needs a distinct name",
		"kubeflow.org/v1/PyTorchJob,spec=a:spec.a,spec=a:spec.b":                              "each needs a distinct name",
		"kubeflow.org/v1/PyTorchJob,spec=spec.template.spec,replicas=3":                       `unknown option "replicas"`,
		"kubeflow.org/v1/PyTorchJob,spec=spec.template.spec,via=Job":                          `via "Job"`,
		"kubeflow.org/v1/PyTorchJob,spec=spec.template.spec,immutable=true":                   "takes no value",
		"kubeflow.org/v1/PyTorchJob,spec=" + strings.Repeat("a.", 16) + "a":                   "at most 16",
		"kubeflow.org/v1/PyTorchJob,spec=Upper:spec.template.spec":                            "template name",
		"kubeflow.org/v1/PyTorchJob,spec=spec.t,via=v1/A,via=v1/B,via=v1/C,via=v1/D,via=v1/E": "at most 4",
		"kubeflow.org/v1/PyTorchJob,spec=spec.t,template-label=a b":                           "template-label",
	} {
		if _, err := ParseKind(value); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("ParseKind(%q) = %v, want an error saying %q", value, err, says)
		}
	}
}

// A kind imagepin knows cannot be configured again; the same flag value
// twice is one kind.
func TestConfigureRefusesAKnownName(t *testing.T) {
	k, err := ParseKind("example.com/v1/Deployment,spec=spec.template.spec")
	if err != nil {
		t.Fatal(err)
	}
	if err := Configure([]*Kind{k}); err == nil || !strings.Contains(err.Error(), "already imagepin's") {
		t.Errorf("Configure(Deployment of example.com) = %v", err)
	}
	if KindNamed("Deployment").Configured {
		t.Error("the refused kind replaced the built-in one")
	}
}

// Wildcards expand over a map of replica specs (keys sorted) and a list
// of them (keyed by each item's name, or index), each template with its
// JSON pointer; a value that is not a pod spec is left out.
func TestTemplatesExpandWildcards(t *testing.T) {
	pytorch, _ := ParseKind("kubeflow.org/v1/PyTorchJob,spec=spec.pytorchReplicaSpecs.*.template.spec")
	jobset, _ := ParseKind("jobset.x-k8s.io/v1alpha2/JobSet,spec=spec.replicatedJobs.*.template.spec.template.spec")
	lws, _ := ParseKind("leaderworkerset.x-k8s.io/v1/LeaderWorkerSet,spec=leader:spec.leaderWorkerTemplate.leaderTemplate.spec,spec=worker:spec.leaderWorkerTemplate.workerTemplate.spec")
	obj := func(apiVersion, kind string, spec map[string]any) client.Object {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": apiVersion, "kind": kind, "spec": spec}}
	}
	cases := []struct {
		kind *Kind
		obj  client.Object
		want []string // key pointer image
	}{{
		pytorch, obj("kubeflow.org/v1", "PyTorchJob", map[string]any{"pytorchReplicaSpecs": map[string]any{
			"Worker": map[string]any{"replicas": int64(3), "template": map[string]any{"spec": podSpec(container("pytorch", "reg.io/train:v2"))}},
			"Master": map[string]any{"template": map[string]any{"spec": podSpec(container("pytorch", "reg.io/train:v1"))}},
			"Broken": map[string]any{"template": map[string]any{"spec": "not a pod spec"}},
			"Odd":    map[string]any{"template": map[string]any{"spec": map[string]any{"containers": "not a list"}}},
		}}),
		[]string{"Master /spec/pytorchReplicaSpecs/Master/template/spec reg.io/train:v1", "Worker /spec/pytorchReplicaSpecs/Worker/template/spec reg.io/train:v2"},
	}, {
		jobset, obj("jobset.x-k8s.io/v1alpha2", "JobSet", map[string]any{"replicatedJobs": []any{
			map[string]any{"name": "driver", "template": map[string]any{"spec": map[string]any{"template": map[string]any{"spec": podSpec(container("d", "reg.io/d:v1"))}}}},
			map[string]any{"template": map[string]any{"spec": map[string]any{"template": map[string]any{"spec": podSpec(container("w", "reg.io/w:v1"))}}}},
		}}),
		// One item without a name: every item keyed by index.
		[]string{"0 /spec/replicatedJobs/0/template/spec/template/spec reg.io/d:v1", "1 /spec/replicatedJobs/1/template/spec/template/spec reg.io/w:v1"},
	}, {
		jobset, obj("jobset.x-k8s.io/v1alpha2", "JobSet", map[string]any{"replicatedJobs": []any{
			map[string]any{"name": "driver", "template": map[string]any{"spec": map[string]any{"template": map[string]any{"spec": podSpec(container("d", "reg.io/d:v1"))}}}},
			map[string]any{"name": "workers", "template": map[string]any{"spec": map[string]any{"template": map[string]any{"spec": podSpec(container("w", "reg.io/w:v1"))}}}},
		}}),
		[]string{"driver /spec/replicatedJobs/0/template/spec/template/spec reg.io/d:v1", "workers /spec/replicatedJobs/1/template/spec/template/spec reg.io/w:v1"},
	}, {
		// Two of one name: by index, so that two templates never share a key.
		jobset, obj("jobset.x-k8s.io/v1alpha2", "JobSet", map[string]any{"replicatedJobs": []any{
			map[string]any{"name": "w", "template": map[string]any{"spec": map[string]any{"template": map[string]any{"spec": podSpec(container("d", "reg.io/d:v1"))}}}},
			map[string]any{"name": "w", "template": map[string]any{"spec": map[string]any{"template": map[string]any{"spec": podSpec(container("w", "reg.io/w:v1"))}}}},
		}}),
		[]string{"0 /spec/replicatedJobs/0/template/spec/template/spec reg.io/d:v1", "1 /spec/replicatedJobs/1/template/spec/template/spec reg.io/w:v1"},
	}, {
		lws, obj("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", map[string]any{"leaderWorkerTemplate": map[string]any{
			"leaderTemplate": map[string]any{"spec": podSpec(container("l", "reg.io/l:v1"))},
			"workerTemplate": map[string]any{"spec": podSpec(container("w", "reg.io/w:v1"))},
		}}),
		[]string{"leader /spec/leaderWorkerTemplate/leaderTemplate/spec reg.io/l:v1", "worker /spec/leaderWorkerTemplate/workerTemplate/spec reg.io/w:v1"},
	}, {
		// Another kind of the same name: nothing.
		pytorch, obj("other.io/v1", "PyTorchJob", map[string]any{"pytorchReplicaSpecs": map[string]any{
			"Master": map[string]any{"template": map[string]any{"spec": podSpec(container("pytorch", "reg.io/train:v1"))}},
		}}),
		nil,
	}}
	for _, c := range cases {
		var got []string
		for _, tmpl := range c.kind.Templates(c.obj) {
			got = append(got, tmpl.Key+" "+tmpl.Pointer+" "+tmpl.Spec.Containers[0].Image)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s templates:\n got %q\nwant %q", c.kind.Name, got, c.want)
		}
	}
}

// A pod is told to its template by its containers' names, then images.
func TestTemplateOfPod(t *testing.T) {
	w := Workload{Templates: []Template{
		{Key: "Master", Spec: &corev1.PodSpec{Containers: []corev1.Container{{Name: "pytorch", Image: "reg.io/train:v1"}}}},
		{Key: "Worker", Spec: &corev1.PodSpec{Containers: []corev1.Container{{Name: "pytorch", Image: "reg.io/train:v2@sha256:aa"}}}},
		{Key: "Sidecar", Spec: &corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: "reg.io/train:v2"}}}},
	}}
	// With the kind's TemplateLabel, the label says, whatever the
	// containers (Kubeflow names every replica's container "pytorch").
	configure(t, "kubeflow.org/v1/PyTorchJob,spec=spec.pytorchReplicaSpecs.*.template.spec,template-label=training.kubeflow.org/replica-type")
	labelled := Workload{Kind: "PyTorchJob", Templates: w.Templates[:2]}
	worker := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"training.kubeflow.org/replica-type": "worker"}},
		Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "pytorch", Image: "reg.io/train:v1"}}}}
	if got := labelled.TemplateOf(worker); got != 1 {
		t.Errorf("a pod labelled worker is told to template %d", got)
	}
	pod := func(name, image string) *corev1.Pod {
		return &corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: name, Image: image}}}}
	}
	for _, c := range []struct {
		pod  *corev1.Pod
		want int
	}{
		{pod("pytorch", "reg.io/train:v1"), 0},
		{pod("pytorch", "reg.io/train:v2"), 1},
		{pod("proxy", "reg.io/train:v2"), 2},
		{pod("pytorch", "reg.io/other:v9"), 0},
		{&corev1.Pod{}, 0},
	} {
		if got := w.TemplateOf(c.pod); got != c.want {
			t.Errorf("TemplateOf(%+v) = %d, want %d", c.pod.Status.ContainerStatuses, got, c.want)
		}
	}
}

// The cache keeps of a configured kind what it keeps of a built-in one,
// at the same places: a list of replica specs keeps its length.
func TestSlimUnstructuredKeepsTheTemplatesWhereTheyAre(t *testing.T) {
	jobset, _ := ParseKind("jobset.x-k8s.io/v1alpha2/JobSet,spec=spec.replicatedJobs.*.template.spec.template.spec")
	full := podSpec(map[string]any{"name": "w", "image": "reg.io/w:v1", "env": []any{map[string]any{"name": "A", "value": "secretish"}}})
	full["volumes"] = []any{map[string]any{"name": "data", "emptyDir": map[string]any{}}, map[string]any{"name": "model", "image": map[string]any{"reference": "reg.io/m:v1"}}}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
		"metadata": map[string]any{"name": "train", "namespace": "ml", "uid": "u1", "generation": int64(2), "annotations": map[string]any{"big": "x"}, "labels": map[string]any{"app": "train"}},
		"spec": map[string]any{"suspend": true, "replicatedJobs": []any{
			map[string]any{"name": "driver", "replicas": int64(1)},
			map[string]any{"name": "workers", "template": map[string]any{"spec": map[string]any{"parallelism": int64(4), "template": map[string]any{"spec": full}}}},
		}},
		"status": map[string]any{"conditions": []any{}},
	}}
	slim := slimUnstructured(u, jobset)
	if slim.GetName() != "train" || slim.GetUID() != "u1" || slim.GetGeneration() != 2 || slim.GetLabels()["app"] != "train" || len(slim.GetAnnotations()) != 0 {
		t.Errorf("metadata: %+v", slim.Object["metadata"])
	}
	if _, ok := slim.Object["status"]; ok {
		t.Error("status kept")
	}
	ts := jobset.Templates(slim)
	if len(ts) != 1 || ts[0].Key != "workers" || ts[0].Pointer != "/spec/replicatedJobs/1/template/spec/template/spec" {
		t.Fatalf("templates of the slim object: %+v", ts)
	}
	s := ts[0].Spec
	if s.ServiceAccountName != "trainer" || len(s.Containers) != 1 || s.Containers[0].Image != "reg.io/w:v1" || len(s.Containers[0].Env) != 0 {
		t.Errorf("pod spec: %+v", s)
	}
	if len(s.Volumes) != 2 || s.Volumes[1].Image == nil || s.Volumes[1].Image.Reference != "reg.io/m:v1" || s.Volumes[0].EmptyDir != nil {
		t.Errorf("volumes: %+v", s.Volumes)
	}
	if spec := slim.Object["spec"].(map[string]any); spec["suspend"] != nil {
		t.Errorf("spec kept what nothing reads: %v", spec)
	}
}

// configure adds kinds to the table for one test, and restores it after.
func configure(t *testing.T, flags ...string) {
	t.Helper()
	saved, savedSelectable, savedVias := kinds, selectable, vias
	t.Cleanup(func() { kinds, selectable, vias = saved, savedSelectable, savedVias })
	if err := ConfigureFlags(flags); err != nil {
		t.Fatal(err)
	}
}

// A Deployment a configured kind's custom via kind controls (a Knative
// Revision's) is part of that workload, not a Deployment of its own; one a
// built-in kind between does not control is still its own.
func TestObjectsUnderACustomViaArePartOfTheConfiguredWorkload(t *testing.T) {
	configure(t, "serving.knative.dev/v1/Service,spec=spec.template.spec,via=serving.knative.dev/v1/Configuration,via=serving.knative.dev/v1/Revision,via=apps/v1/Deployment,via=apps/v1/ReplicaSet")
	owned := func(apiVersion, kind string) client.Object {
		u := &unstructured.Unstructured{}
		u.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: "x", UID: "u", Controller: new(true)}})
		return u
	}
	if !partOfAnotherWorkload(owned("serving.knative.dev/v1", "Revision")) {
		t.Error("a Revision's Deployment counted as a workload of its own")
	}
	if !partOfAnotherWorkload(owned("serving.knative.dev/v1", "Service")) {
		t.Error("a Knative Service's Configuration is not part of it")
	}
	if partOfAnotherWorkload(owned("apps/v1", "ReplicaSet")) || partOfAnotherWorkload(owned("v1", "Pod")) {
		t.Error("an object controlled by a built-in kind between is part of another workload")
	}
	if KindNamed("Service") == nil || !slices.Contains(SelectableKinds(), "Service") || !slices.Contains(vias, KindNamed("ReplicaSet")) {
		t.Error("the configured kind is not in the table")
	}
}
