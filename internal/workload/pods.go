package workload

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// OwnerIndex is the cache field index of Pods, and of the kinds between
// workloads and their pods (ReplicaSets, Jobs), by the UID of their
// controller.
const OwnerIndex = ".metadata.controllerUID"

// IndexOwners registers OwnerIndex with the manager's cache.
func IndexOwners(ctx context.Context, indexer client.FieldIndexer) error {
	objs := []client.Object{&corev1.Pod{}}
	for _, k := range vias {
		objs = append(objs, k.New())
	}
	for _, obj := range objs {
		if err := indexer.IndexField(ctx, obj, OwnerIndex, controllerUID); err != nil {
			return fmt.Errorf("index %T by controller: %w", obj, err)
		}
	}
	return nil
}

// vias are the kinds that stand between a workload and its pods, derived
// once from the table: the owner walk asks on every pod event.
var vias = func() []*Kind {
	var out []*Kind
	for _, k := range kinds {
		if k.Via != nil && !slices.Contains(out, k.Via) {
			out = append(out, k.Via)
		}
	}
	return out
}()

func controllerUID(obj client.Object) []string {
	if ref := metav1.GetControllerOf(obj); ref != nil {
		return []string{string(ref.UID)}
	}
	return nil
}

// Pods returns the pods a workload runs, through the kind its pods are
// owned by where there is one (Kind.Via): Deployment → ReplicaSets → Pods,
// CronJob → Jobs → Pods, the others → Pods. The reader must have
// OwnerIndex.
func Pods(ctx context.Context, c client.Reader, w Workload) ([]corev1.Pod, error) {
	ns := w.Object.GetNamespace()
	runner, k := w.Object, KindNamed(w.Kind)
	if w.Runner != nil {
		runner, k = w.Runner, w.RunnerKind
	}
	owners := []types.UID{runner.GetUID()}
	if k != nil && k.Via != nil {
		list := k.Via.NewList()
		if err := c.List(ctx, list, client.InNamespace(ns), client.MatchingFields{OwnerIndex: string(runner.GetUID())}); err != nil {
			return nil, fmt.Errorf("list %ss of %s %s/%s: %w", k.Via.Name, w.Kind, ns, w.Name(), err)
		}
		owners = owners[:0]
		err := meta.EachListItem(list, func(item runtime.Object) error {
			if o, ok := item.(client.Object); ok {
				owners = append(owners, o.GetUID())
			}
			return nil
		})
		if err != nil {
			return nil, err
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
		k := kindOfRef(ref.APIVersion, ref.Kind)
		if k == nil || (!k.Workload && !slices.Contains(vias, k)) {
			return nil, "", nil
		}
		next := k.New()
		if err := c.Get(ctx, client.ObjectKey{Namespace: obj.GetNamespace(), Name: ref.Name}, next); err != nil {
			return nil, "", client.IgnoreNotFound(err)
		}
		if k.Workload && !partOfAnotherWorkload(next) {
			return next, k.Name, nil
		}
		obj = next
	}
	return nil, "", nil
}
