package workload

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
