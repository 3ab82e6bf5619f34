package workload

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// OwnerIndex is the cache field index of Pods, ReplicaSets and Jobs by the
// UID of their controller.
const OwnerIndex = ".metadata.controllerUID"

// IndexOwners registers OwnerIndex with the manager's cache.
func IndexOwners(ctx context.Context, indexer client.FieldIndexer) error {
	for _, obj := range []client.Object{&corev1.Pod{}, &appsv1.ReplicaSet{}, &batchv1.Job{}} {
		if err := indexer.IndexField(ctx, obj, OwnerIndex, controllerUID); err != nil {
			return fmt.Errorf("index %T by controller: %w", obj, err)
		}
	}
	return nil
}

func controllerUID(obj client.Object) []string {
	if ref := metav1.GetControllerOf(obj); ref != nil {
		return []string{string(ref.UID)}
	}
	return nil
}

// Pods returns the pods a workload runs: Deployment → ReplicaSets → Pods,
// StatefulSet and DaemonSet → Pods, Job → Pods, CronJob → Jobs → Pods.
// The reader must have OwnerIndex.
func Pods(ctx context.Context, c client.Reader, w Workload) ([]corev1.Pod, error) {
	ns := w.Object.GetNamespace()
	owners := []types.UID{w.Object.GetUID()}
	switch w.Kind {
	case imagesv1alpha1.KindDeployment:
		var rss appsv1.ReplicaSetList
		if err := c.List(ctx, &rss, client.InNamespace(ns), client.MatchingFields{OwnerIndex: string(w.Object.GetUID())}); err != nil {
			return nil, fmt.Errorf("list ReplicaSets of Deployment %s/%s: %w", ns, w.Name(), err)
		}
		owners = owners[:0]
		for _, rs := range rss.Items {
			owners = append(owners, rs.UID)
		}
	case imagesv1alpha1.KindCronJob:
		var jobs batchv1.JobList
		if err := c.List(ctx, &jobs, client.InNamespace(ns), client.MatchingFields{OwnerIndex: string(w.Object.GetUID())}); err != nil {
			return nil, fmt.Errorf("list Jobs of CronJob %s/%s: %w", ns, w.Name(), err)
		}
		owners = owners[:0]
		for _, j := range jobs.Items {
			owners = append(owners, j.UID)
		}
	}
	var out []corev1.Pod
	for _, uid := range owners {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(ns), client.MatchingFields{OwnerIndex: string(uid)}); err != nil {
			return nil, fmt.Errorf("list pods of %s %s/%s: %w", w.Kind, ns, w.Name(), err)
		}
		out = append(out, pods.Items...)
	}
	return out, nil
}

// OwningWorkload walks from a pod (or a ReplicaSet or Job) up its
// controller references to the workload that owns it, reading the cache.
// It returns nil when the object belongs to no workload imagepin selects.
func OwningWorkload(ctx context.Context, c client.Reader, obj client.Object) (client.Object, imagesv1alpha1.WorkloadKind, error) {
	for range 3 { // Pod → ReplicaSet → Deployment, Pod → Job → CronJob
		ref := metav1.GetControllerOf(obj)
		if ref == nil {
			return nil, "", nil
		}
		var next client.Object
		var kind imagesv1alpha1.WorkloadKind
		switch {
		case ref.Kind == "ReplicaSet" && ref.APIVersion == "apps/v1":
			next = &appsv1.ReplicaSet{}
		case ref.Kind == "Deployment" && ref.APIVersion == "apps/v1":
			next, kind = &appsv1.Deployment{}, imagesv1alpha1.KindDeployment
		case ref.Kind == "StatefulSet" && ref.APIVersion == "apps/v1":
			next, kind = &appsv1.StatefulSet{}, imagesv1alpha1.KindStatefulSet
		case ref.Kind == "DaemonSet" && ref.APIVersion == "apps/v1":
			next, kind = &appsv1.DaemonSet{}, imagesv1alpha1.KindDaemonSet
		case ref.Kind == "Job" && ref.APIVersion == "batch/v1":
			next, kind = &batchv1.Job{}, imagesv1alpha1.KindJob
		case ref.Kind == "CronJob" && ref.APIVersion == "batch/v1":
			next, kind = &batchv1.CronJob{}, imagesv1alpha1.KindCronJob
		default:
			return nil, "", nil
		}
		if err := c.Get(ctx, client.ObjectKey{Namespace: obj.GetNamespace(), Name: ref.Name}, next); err != nil {
			return nil, "", client.IgnoreNotFound(err)
		}
		if kind == imagesv1alpha1.KindJob && ownedByCronJob(next.(*batchv1.Job)) {
			obj = next
			continue
		}
		if kind != "" {
			return next, kind, nil
		}
		obj = next
	}
	return nil, "", nil
}
