package workload

import (
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func TestCacheKeepsOfAPodWhatDriftReads(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-1", Namespace: "prod", UID: "u1", ResourceVersion: "42",
			Labels:          map[string]string{"app": "web"},
			Annotations:     map[string]string{corev1.LastAppliedConfigAnnotation: "{}", "big": "x"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web", UID: "rs1"}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		},
		Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "app", Image: "reg.io/app:v1", Env: []corev1.EnvVar{{Name: "SECRET", Value: "s"}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{
			Name: "app", Image: "reg.io/app:v1", ImageID: "reg.io/app@sha256:abc", RestartCount: 3,
		}}},
	}
	out, err := keepWhatDriftReads(pod)
	if err != nil {
		t.Fatal(err)
	}
	slim := out.(*corev1.Pod)
	if slim.Name != "web-1" || slim.Namespace != "prod" || slim.UID != "u1" || slim.ResourceVersion != "42" ||
		len(slim.OwnerReferences) != 1 || slim.Spec.NodeName != "node-a" || slim.Labels["app"] != "web" {
		t.Fatalf("lost what drift reads: %+v", slim)
	}
	if len(slim.Status.ContainerStatuses) != 1 || slim.Status.ContainerStatuses[0].ImageID != "reg.io/app@sha256:abc" {
		t.Fatalf("lost the image ID: %+v", slim.Status)
	}
	if len(slim.Spec.Containers) != 0 || len(slim.Annotations) != 0 || len(slim.ManagedFields) != 0 || slim.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Fatalf("kept what drift does not read: %+v", slim)
	}
}

func TestCacheKeepsOfASecretOnlyItsDockerConfig(t *testing.T) {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte("{}"), "other": []byte("x")},
	}
	out, err := keepDockerConfigOnly(s)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Secret)
	if len(got.Data) != 1 || got.Data[corev1.DockerConfigJsonKey] == nil || len(got.ManagedFields) != 0 {
		t.Fatalf("secret in cache = %+v, want only its docker config", got)
	}
}

func TestCacheHoldsNoDataOfOtherSecrets(t *testing.T) {
	for _, tc := range []struct {
		typ  corev1.SecretType
		keep string
	}{
		{corev1.SecretTypeOpaque, ""},
		{corev1.SecretTypeServiceAccountToken, ""},
		{corev1.SecretTypeDockercfg, corev1.DockerConfigKey},
	} {
		s := &corev1.Secret{Type: tc.typ, Data: map[string][]byte{
			"password": []byte("x"), corev1.DockerConfigKey: []byte("{}"), "token": []byte("t"),
		}}
		out, err := keepDockerConfigOnly(s)
		if err != nil {
			t.Fatal(err)
		}
		got := out.(*corev1.Secret)
		if tc.keep == "" && len(got.Data) != 0 {
			t.Errorf("%s secret keeps data in the cache: %v", tc.typ, got.Data)
		}
		if tc.keep != "" && (len(got.Data) != 1 || got.Data[tc.keep] == nil) {
			t.Errorf("%s secret in cache = %v, want only %s", tc.typ, got.Data, tc.keep)
		}
	}
}

func TestCacheKeepsOfAReplicaSetItsOwner(t *testing.T) {
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-5d8f7c", Namespace: "prod", UID: "rs1", ResourceVersion: "42", Generation: 3,
			Labels:          map[string]string{"app": "web", "pod-template-hash": "5d8f7c"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Deployment", Name: "web", UID: "d1"}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: FieldManager}},
		},
		Spec: appsv1.ReplicaSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "reg.io/app:v1"}}}}},
	}
	out, err := keepWhatSelectionReads(rs)
	if err != nil {
		t.Fatal(err)
	}
	want := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{
		Name: "web-5d8f7c", Namespace: "prod", UID: "rs1", ResourceVersion: "42",
		OwnerReferences: []metav1.OwnerReference{{Kind: "Deployment", Name: "web", UID: "d1"}},
	}}
	if got := out.(*appsv1.ReplicaSet); !reflect.DeepEqual(got, want) {
		t.Fatalf("cached ReplicaSet:\n%+v\nwant only its identity and owner:\n%+v", got, want)
	}
}

func TestCacheKeepsOfAWorkloadWhatSelectionReads(t *testing.T) {
	template := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"run": "web"}, Annotations: map[string]string{"big": "x"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "builder",
			ImagePullSecrets:   []corev1.LocalObjectReference{{Name: "regcred"}},
			InitContainers:     []corev1.Container{{Name: "init", Image: "reg.io/init:v1", Args: []string{"--x"}}},
			Containers: []corev1.Container{{Name: "app", Image: "reg.io/app:v1", Env: []corev1.EnvVar{{Name: "SECRET", Value: "s"}},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")}}}},
		},
	}
	meta := metav1.ObjectMeta{
		Name: "web", Namespace: "prod", UID: "u1", ResourceVersion: "42", Generation: 7,
		Labels:          map[string]string{"app": "web"},
		Annotations:     map[string]string{"big": "x"},
		OwnerReferences: []metav1.OwnerReference{{Kind: "CronJob", Name: "nightly", UID: "cj1"}},
		ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
	}
	replicas := int32(3)
	for _, obj := range []client.Object{
		&appsv1.Deployment{ObjectMeta: meta, Spec: appsv1.DeploymentSpec{Replicas: &replicas, Template: template}, Status: appsv1.DeploymentStatus{Replicas: 3}},
		&appsv1.StatefulSet{ObjectMeta: meta, Spec: appsv1.StatefulSetSpec{Replicas: &replicas, Template: template}},
		&appsv1.DaemonSet{ObjectMeta: meta, Spec: appsv1.DaemonSetSpec{Template: template}},
		&batchv1.Job{ObjectMeta: meta, Spec: batchv1.JobSpec{Template: template}},
		&batchv1.CronJob{ObjectMeta: meta, Spec: batchv1.CronJobSpec{Schedule: "@daily", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: template}}}},
	} {
		out, err := keepWhatSelectionReads(obj)
		if err != nil {
			t.Fatal(err)
		}
		w := Workload{Object: out.(client.Object)}
		var spec *corev1.PodSpec
		switch o := out.(type) {
		case *appsv1.Deployment:
			spec = &o.Spec.Template.Spec
			if o.Spec.Replicas != nil || o.Status.Replicas != 0 {
				t.Errorf("%T kept replicas", o)
			}
		case *appsv1.StatefulSet:
			spec = &o.Spec.Template.Spec
		case *appsv1.DaemonSet:
			spec = &o.Spec.Template.Spec
		case *batchv1.Job:
			spec = &o.Spec.Template.Spec
		case *batchv1.CronJob:
			spec = &o.Spec.JobTemplate.Spec.Template.Spec
			if o.Spec.Schedule != "" {
				t.Errorf("%T kept its schedule", o)
			}
		}
		m := w.Object
		if m.GetName() != "web" || m.GetNamespace() != "prod" || m.GetUID() != "u1" || m.GetResourceVersion() != "42" || m.GetGeneration() != 7 ||
			m.GetLabels()["app"] != "web" || len(m.GetOwnerReferences()) != 1 {
			t.Errorf("%T lost its identity, generation, labels or owner: %+v", obj, m)
		}
		if len(m.GetAnnotations()) != 0 || len(m.GetManagedFields()) != 0 {
			t.Errorf("%T kept annotations or managedFields", obj)
		}
		s := spec
		if s.ServiceAccountName != "builder" || len(s.ImagePullSecrets) != 1 ||
			len(s.InitContainers) != 1 || s.InitContainers[0].Image != "reg.io/init:v1" ||
			len(s.Containers) != 1 || s.Containers[0].Name != "app" || s.Containers[0].Image != "reg.io/app:v1" {
			t.Errorf("%T lost what selection and credentials read: %+v", obj, s)
		}
		if len(s.Containers[0].Env) != 0 || len(s.Containers[0].Resources.Limits) != 0 || len(s.InitContainers[0].Args) != 0 {
			t.Errorf("%T kept container details nothing reads: %+v", obj, s.Containers[0])
		}
	}
	rs, err := keepWhatSelectionReads(&appsv1.ReplicaSet{ObjectMeta: meta, Spec: appsv1.ReplicaSetSpec{Template: template}})
	if err != nil {
		t.Fatal(err)
	}
	if o := rs.(*appsv1.ReplicaSet); len(o.OwnerReferences) != 1 || len(o.Spec.Template.Spec.Containers) != 0 {
		t.Errorf("a ReplicaSet keeps its owner and nothing of its template: %+v", o)
	}
}

// Issue 14 item 4: the cache keeps every volume (name only, the source of
// image volumes), so an image volume's index in the cache is its index in
// the object, which the controller's patch names; and pods keep the digest
// their image volumes mounted.
func TestCacheKeepsImageVolumesAtTheirIndex(t *testing.T) {
	d := &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Volumes: []corev1.Volume{
		{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
		{Name: "models", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: "reg.io/models:v1"}}},
	}}}}}
	out, err := keepWhatSelectionReads(d)
	if err != nil {
		t.Fatal(err)
	}
	vs := out.(*appsv1.Deployment).Spec.Template.Spec.Volumes
	if len(vs) != 2 || vs[1].Name != "models" || vs[1].Image == nil || vs[1].Image.Reference != "reg.io/models:v1" || vs[0].ConfigMap != nil {
		t.Fatalf("cached volumes %+v, want both, the image volume at index 1 and no other source", vs)
	}
	p := &corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "app", VolumeMounts: []corev1.VolumeMountStatus{
		{Name: "cfg", MountPath: "/cfg"},
		{Name: "models", MountPath: "/models", VolumeStatus: &corev1.VolumeStatus{Image: &corev1.ImageVolumeStatus{ImageRef: "reg.io/models@sha256:" + strings.Repeat("a", 64)}}},
	}}}}}
	slim, err := keepWhatDriftReads(p)
	if err != nil {
		t.Fatal(err)
	}
	ms := slim.(*corev1.Pod).Status.ContainerStatuses[0].VolumeMounts
	if len(ms) != 1 || ms[0].Name != "models" || ms[0].VolumeStatus.Image.ImageRef == "" {
		t.Fatalf("cached mounts %+v, want the image volume's with its digest", ms)
	}
	if _, err := keepWhatSelectionReads((*appsv1.Deployment)(nil)); err != nil {
		t.Fatal(err)
	}
}

// An object the cache keeps whole (a Rollout, read as unstructured) keeps
// imagepin's own managedFields entry, so that ownership a failed release
// left behind is seen and released later.
func TestCacheKeepsImagepinsOwnManagedFieldsOfEveryObject(t *testing.T) {
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout"}}
	u.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: "argocd-controller"}, {Manager: FieldManager, Operation: metav1.ManagedFieldsOperationUpdate}})
	out, err := stripForCache(u)
	if err != nil {
		t.Fatal(err)
	}
	if !OwnsFields(out.(client.Object)) || len(out.(client.Object).GetManagedFields()) != 1 {
		t.Fatalf("managedFields %+v, want imagepin's only", out.(client.Object).GetManagedFields())
	}
}
