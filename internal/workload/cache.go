package workload

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CacheOptions keeps the manager's cache to what the controller reads:
// managedFields and kubectl's last-applied annotation are stripped from
// everything; of Pods only what drift reads is kept; of Secrets only the
// docker config of pull secrets (dockerconfigjson and legacy dockercfg).
func CacheOptions() cache.Options {
	return cache.Options{
		DefaultTransform: stripForCache,
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Transform: keepDockerConfigOnly},
			&corev1.Pod{}:    {Transform: keepWhatDriftReads},
		},
	}
}

func stripForCache(obj any) (any, error) {
	if o, ok := obj.(client.Object); ok {
		o.SetManagedFields(nil)
		if a := o.GetAnnotations(); a != nil {
			if _, ok := a[corev1.LastAppliedConfigAnnotation]; ok {
				delete(a, corev1.LastAppliedConfigAnnotation)
				o.SetAnnotations(a)
			}
		}
	}
	return obj, nil
}

// keepWhatDriftReads keeps of a Pod only what drift is computed from: its
// owner, node and the image IDs its containers report. Pods are the most
// numerous objects in the cache.
func keepWhatDriftReads(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return stripForCache(obj)
	}
	slim := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, OwnerReferences: p.OwnerReferences, DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}
	slim.Status.InitContainerStatuses = slimStatuses(p.Status.InitContainerStatuses)
	slim.Status.ContainerStatuses = slimStatuses(p.Status.ContainerStatuses)
	return slim, nil
}

func slimStatuses(in []corev1.ContainerStatus) []corev1.ContainerStatus {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.ContainerStatus, len(in))
	for i, s := range in {
		out[i] = corev1.ContainerStatus{Name: s.Name, Image: s.Image, ImageID: s.ImageID}
	}
	return out
}

func keepDockerConfigOnly(obj any) (any, error) {
	if s, ok := obj.(*corev1.Secret); ok {
		keep := ""
		switch s.Type {
		case corev1.SecretTypeDockerConfigJson:
			keep = corev1.DockerConfigJsonKey
		case corev1.SecretTypeDockercfg:
			keep = corev1.DockerConfigKey
		}
		// Any other Secret is held as metadata only: its data never
		// enters the manager's memory.
		for k := range s.Data {
			if k != keep {
				delete(s.Data, k)
			}
		}
		s.StringData = nil
	}
	return stripForCache(obj)
}
