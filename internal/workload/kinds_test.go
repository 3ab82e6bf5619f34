package workload

import (
	"os"
	"regexp"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// The API's WorkloadKind pattern (in the generated CRD) admits every kind
// of the table an ImagePin selects, and a configured kind's name: adding a
// kind is one table entry.
func TestTheAPIAdmitsTheTablesWorkloadKinds(t *testing.T) {
	raw, err := os.ReadFile("../../config/crd/bases/images.imagepin.dev_imagepins.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(raw, &crd); err != nil {
		t.Fatal(err)
	}
	items := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"].Properties["kinds"].Items.Schema
	pattern := regexp.MustCompile(items.Pattern)
	names := SelectableKinds()
	k, err := ParseKind("kubeflow.org/v1/PyTorchJob,spec=spec.pytorchReplicaSpecs.*.template.spec")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range append(names, k.Name) {
		if !pattern.MatchString(string(name)) || len(name) > int(*items.MaxLength) {
			t.Errorf("spec.kinds refuses %q (pattern %s)", name, items.Pattern)
		}
	}
	if len(items.Enum) != 0 {
		t.Errorf("spec.kinds is an enum again: a configured kind could not be selected")
	}
}

// Each kind's pod spec is found by its one path, typed (PodSpec), in place.
func TestPodSpecIsFoundByThePath(t *testing.T) {
	spec := corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "reg.io/app:v1"}}}
	objs := map[string]client.Object{
		"Deployment":            &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: spec}}},
		"StatefulSet":           &appsv1.StatefulSet{Spec: appsv1.StatefulSetSpec{Template: corev1.PodTemplateSpec{Spec: spec}}},
		"DaemonSet":             &appsv1.DaemonSet{Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: spec}}},
		"Job":                   &batchv1.Job{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: spec}}},
		"CronJob":               &batchv1.CronJob{Spec: batchv1.CronJobSpec{JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: spec}}}}},
		"Pod":                   &corev1.Pod{Spec: spec},
		"PodTemplate":           &corev1.PodTemplate{Template: corev1.PodTemplateSpec{Spec: spec}},
		"ReplicationController": &corev1.ReplicationController{Spec: corev1.ReplicationControllerSpec{Template: &corev1.PodTemplateSpec{Spec: spec}}},
		"ReplicaSet":            &appsv1.ReplicaSet{Spec: appsv1.ReplicaSetSpec{Template: corev1.PodTemplateSpec{Spec: spec}}},
		"Rollout": &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
			"spec": map[string]any{"template": map[string]any{"spec": map[string]any{
				"containers": []any{map[string]any{"name": "app", "image": "reg.io/app:v1"}},
			}}},
		}},
	}
	if len(objs) != len(Kinds()) {
		t.Fatalf("the test knows %d kinds, the table %d", len(objs), len(Kinds()))
	}
	for _, k := range Kinds() {
		obj := objs[string(k.Name)]
		got := k.PodSpec(obj)
		if got == nil || len(got.Containers) != 1 || got.Containers[0].Name != "app" {
			t.Errorf("%s: PodSpec = %+v", k.Name, got)
			continue
		}
		if k.Type == nil {
			continue // an unstructured kind's pod spec is a decoded copy
		}
		got.Containers[0].Image = "changed"
		if again := k.PodSpec(obj); again.Containers[0].Image != "changed" {
			t.Errorf("%s: PodSpec is a copy, not the object's own", k.Name)
		}
		if obj := k.New(); obj.GetObjectKind().GroupVersionKind() != k.GVK || k.NewList() == nil {
			t.Errorf("%s: New or NewList", k.Name)
		}
	}
	if k := KindNamed("ReplicationController"); k.PodSpec(&corev1.ReplicationController{}) != nil {
		t.Error("a ReplicationController without a template has a pod spec")
	}
}
