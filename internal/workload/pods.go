package workload

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// OwnerIndex is the cache field index of the kinds between workloads and
// their pods (ReplicaSets, Jobs), by the UID of their controller. Pods
// are held by controller in the PodStore.
const OwnerIndex = ".metadata.controllerUID"

// Pod is a pod as a check reads it: its own name, UID and node, and what
// it shares with the other pods of its controller that are in the same
// state (Shared), to be read and not changed. A check reads every pod of
// the workloads it selects: 56 bytes each this way, and a PodShare of
// about 400 per state, where a corev1.Pod is 1,240 bytes before what it
// holds.
type Pod struct {
	Name   string
	UID    types.UID
	Node   string
	Shared *PodShare
}

// PodShare is what the pods of one controller in one state share: the
// labels that tell its templates apart, its owner references, its phase
// and container statuses (as keepWhatDriftReads slims them).
type PodShare struct {
	Labels          map[string]string
	OwnerReferences []metav1.OwnerReference
	Status          corev1.PodStatus
}

// Object is p as a pod of namespace ns, with what it shares copied.
func (p Pod) Object(ns string) *corev1.Pod {
	out := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: p.Name, Namespace: ns, UID: p.UID,
		Labels: maps.Clone(p.Shared.Labels), OwnerReferences: slices.Clone(p.Shared.OwnerReferences),
	}}
	out.Spec.NodeName = p.Node
	p.Shared.Status.DeepCopyInto(&out.Status)
	return out
}

// ShareOf is what pod p shares with the other pods of its controller in
// its state.
func ShareOf(p *corev1.Pod) *PodShare {
	return &PodShare{Labels: p.Labels, OwnerReferences: p.OwnerReferences, Status: p.Status}
}

// PodReader is what imagepin reads of pods: a PodStore.
type PodReader interface {
	// PodsOwnedBy returns the pods in ns whose controller is one of
	// owners, to be read and not changed.
	PodsOwnedBy(ns string, owners []types.UID) []Pod
	// Pod returns the pod ns/name, if there is one.
	Pod(ns, name string) (*corev1.Pod, bool)
}

// replicaSetReader is a PodReader that holds the ReplicaSets too (a
// PodStore made by NewPodStoreFor): they are read from it, not from the
// manager's cache.
type replicaSetReader interface {
	holdsReplicaSets() bool
	ReplicaSetsOwnedBy(ns string, owners []types.UID) []types.UID
	ReplicaSet(ns, name string) (*appsv1.ReplicaSet, bool)
}

// replicaSetsIn returns pods as a replicaSetReader when k is ReplicaSet
// and pods holds them.
func replicaSetsIn(pods PodReader, k *Kind) (replicaSetReader, bool) {
	r, ok := pods.(replicaSetReader)
	return r, ok && k == replicaSet && r.holdsReplicaSets()
}

// IndexOwners registers OwnerIndex with the manager's cache, for the
// kinds between workloads and their pods that the cache does not pack: a
// packed kind's informer serves the index from its packed records
// (unpackingIndexer.byOwner), without the cost of one.
func IndexOwners(ctx context.Context, indexer client.FieldIndexer) error {
	for _, k := range vias {
		// A custom kind (unstructured) is not indexed: its objects are
		// few, listed by namespace and matched by owner (ownedBy).
		if k.Type == nil || k.isPod() || packedKind(k.New()) != nil {
			continue
		}
		if err := indexer.IndexField(ctx, k.New(), OwnerIndex, controllerUID); err != nil {
			return fmt.Errorf("index %s by controller: %w", k.Name, err)
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
// have OwnerIndex. The pods are to be read, not changed.
func Pods(ctx context.Context, c client.Reader, pods PodReader, w Workload) ([]Pod, error) {
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
	var out []Pod
	for _, v := range via {
		if v.isPod() {
			on := pods.PodsOwnedBy(ns, owners)
			out = append(out, on...)
			owners = owners[:0]
			for _, p := range on {
				owners = append(owners, p.UID)
			}
			continue
		}
		if sets, ok := replicaSetsIn(pods, v); ok {
			owners = sets.ReplicaSetsOwnedBy(ns, owners)
			continue
		}
		next, err := ownedBy(ctx, c, v, ns, owners)
		if err != nil {
			return nil, fmt.Errorf("list %ss of %s %s/%s: %w", v.Name, w.Kind, ns, w.Name(), err)
		}
		owners = next
	}
	return append(out, pods.PodsOwnedBy(ns, owners)...), nil
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
// controller references to the workload that owns it, reading the cache
// and, for a pod on the way (a LeaderWorkerSet's leader), pods. It returns
// nil when the object belongs to no workload imagepin selects.
func OwningWorkload(ctx context.Context, c client.Reader, pods PodReader, obj client.Object) (client.Object, imagesv1alpha1.WorkloadKind, error) {
	for range maxVias + 2 { // Pod → ReplicaSet → Deployment, Pod → Job → CronJob, …
		ref := metav1.GetControllerOf(obj)
		if ref == nil {
			return nil, "", nil
		}
		k := kindOfRef(ref.APIVersion, ref.Kind)
		if k == nil || (!k.Workload && !slices.Contains(vias, k)) {
			return nil, "", nil
		}
		if k.isPod() {
			p, ok := pods.Pod(obj.GetNamespace(), ref.Name)
			if !ok {
				return nil, "", nil
			}
			obj = p
			continue
		}
		if sets, ok := replicaSetsIn(pods, k); ok {
			rs, ok := sets.ReplicaSet(obj.GetNamespace(), ref.Name)
			if !ok {
				return nil, "", nil
			}
			obj = rs
			continue
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
