package workload

import (
	"context"
	"fmt"
	"reflect"
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
		// A custom kind (unstructured) is not indexed: its objects are
		// few, listed by namespace and matched by owner (ownedBy).
		if k.Type != nil && !k.isPod() {
			objs = append(objs, k.New())
		}
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
var vias = viasOf(kinds)

func viasOf(kinds []*Kind) []*Kind {
	var out []*Kind
	for _, k := range kinds {
		for _, v := range k.Via {
			if !slices.Contains(out, v) {
				out = append(out, v)
			}
		}
	}
	return out
}

func controllerUID(obj client.Object) []string {
	if ref := metav1.GetControllerOf(obj); ref != nil {
		return []string{string(ref.UID)}
	}
	return nil
}

// Pods returns the pods a workload runs, through the kinds between it and
// its pods (Kind.Via), each level owned by the one above: Deployment →
// ReplicaSets → Pods, CronJob → Jobs → Pods, a configured JobSet → Jobs →
// Pods, the others → Pods. Pods on the way (a LeaderWorkerSet's leaders,
// which own its worker StatefulSets) are its pods too. The reader must
// have OwnerIndex.
func Pods(ctx context.Context, c client.Reader, w Workload) ([]corev1.Pod, error) {
	ns := w.Object.GetNamespace()
	runner, k := w.Object, KindNamed(w.Kind)
	if w.Runner != nil {
		runner, k = w.Runner, w.RunnerKind
	}
	var via []*Kind
	if k != nil {
		via = k.Via
	}
	owners := []types.UID{runner.GetUID()}
	var out []corev1.Pod
	for _, v := range via {
		if v.isPod() {
			pods, err := podsOwnedBy(ctx, c, ns, owners)
			if err != nil {
				return nil, fmt.Errorf("list pods of %s %s/%s: %w", w.Kind, ns, w.Name(), err)
			}
			out = append(out, pods...)
			owners = owners[:0]
			for _, p := range pods {
				owners = append(owners, p.UID)
			}
			continue
		}
		next, err := ownedBy(ctx, c, v, ns, owners)
		if err != nil {
			return nil, fmt.Errorf("list %ss of %s %s/%s: %w", v.Name, w.Kind, ns, w.Name(), err)
		}
		owners = next
	}
	pods, err := podsOwnedBy(ctx, c, ns, owners)
	if err != nil {
		return nil, fmt.Errorf("list pods of %s %s/%s: %w", w.Kind, ns, w.Name(), err)
	}
	return append(out, pods...), nil
}

// podsOwnedBy lists the pods in ns whose controller is one of owners.
func podsOwnedBy(ctx context.Context, c client.Reader, ns string, owners []types.UID) ([]corev1.Pod, error) {
	var out []corev1.Pod
	for _, uid := range owners {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(ns), client.MatchingFields{OwnerIndex: string(uid)}); err != nil {
			return nil, err
		}
		out = append(out, pods.Items...)
	}
	return out, nil
}

// isPod reports whether k is the Pod kind.
func (k *Kind) isPod() bool { return k.Type == reflect.TypeFor[corev1.Pod]() }

// ownedBy lists the UIDs of the objects of kind v in ns whose controller
// is one of owners: through OwnerIndex for a built-in kind, by matching
// owner references for a custom one.
func ownedBy(ctx context.Context, c client.Reader, v *Kind, ns string, owners []types.UID) ([]types.UID, error) {
	var out []types.UID
	collect := func(list client.ObjectList, keep func(client.Object) bool) error {
		return meta.EachListItem(list, func(item runtime.Object) error {
			if o, ok := item.(client.Object); ok && keep(o) {
				out = append(out, o.GetUID())
			}
			return nil
		})
	}
	if v.Type != nil {
		for _, uid := range owners {
			list := v.NewList()
			if err := c.List(ctx, list, client.InNamespace(ns), client.MatchingFields{OwnerIndex: string(uid)}); err != nil {
				return nil, err
			}
			if err := collect(list, func(client.Object) bool { return true }); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	list := v.NewList()
	if err := listKind(ctx, c, v, list, []client.ListOption{client.InNamespace(ns)}); err != nil {
		return nil, err
	}
	return out, collect(list, func(o client.Object) bool {
		ref := metav1.GetControllerOf(o)
		return ref != nil && slices.Contains(owners, ref.UID)
	})
}

// OwningWorkload walks from a pod (or a ReplicaSet or Job) up its
// controller references to the workload that owns it, reading the cache.
// It returns nil when the object belongs to no workload imagepin selects.
func OwningWorkload(ctx context.Context, c client.Reader, obj client.Object) (client.Object, imagesv1alpha1.WorkloadKind, error) {
	for range maxVias + 2 { // Pod → ReplicaSet → Deployment, Pod → Job → CronJob, …
		ref := metav1.GetControllerOf(obj)
		if ref == nil {
			return nil, "", nil
		}
		k := kindOfRef(ref.APIVersion, ref.Kind)
		if k == nil || (!k.Workload && !slices.Contains(vias, k)) {
			return nil, "", nil
		}
		next := k.New()
		if err := getKind(ctx, c, k, client.ObjectKey{Namespace: obj.GetNamespace(), Name: ref.Name}, next); err != nil {
			return nil, "", client.IgnoreNotFound(err)
		}
		if k.Workload && !partOfAnotherWorkload(next) {
			return next, k.Name, nil
		}
		obj = next
	}
	return nil, "", nil
}
