package workload

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"unique"

	"github.com/google/uuid"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// PodStore holds what imagepin reads of every pod, and nothing an
// informer would add: pods are most of a cluster's objects (five to a
// Deployment and its ReplicaSet), and an informer's store and indexes cost
// about 350 bytes per object before the object itself.
//
// A pod is held as its name and UID, its node, and a pointer to what it
// shares with other pods (the slimmed pod of keepWhatDriftReads, split in
// two and encoded): its head, the owners and the labels that tell
// templates apart, held once for the pods of one controller; and its
// body, the phase and the images its containers run, held once for the
// whole store, as the pods of every workload that runs the same images
// share it. The pods are grouped by their controller, which is how
// imagepin reads them (Pods). A pod with no controller belongs to no
// workload and is not held.
//
// A reflector fills the store from the API server; a change of what a pod
// runs, or where, is told to the controllers through Source.
type PodStore struct {
	lw toolscache.ListerWatcher

	mu     sync.RWMutex
	pods   map[podKey]podRec
	owners map[ownerKey]*podGroup
	bodies map[string]*podBody
	// oddUIDs: the UIDs that are not UUIDs (podRec.uid is zero).
	oddUIDs map[podKey]types.UID
	subs    []*podSubscriber

	synced   chan struct{}
	syncOnce sync.Once
}

type podKey struct {
	namespace unique.Handle[string]
	name      string
}

type ownerKey struct {
	namespace unique.Handle[string]
	uid       types.UID
}

// podGroup is the pods of one controller, by name, and the states they
// are in: nearly always one, two while a tag moves under a scale-up.
type podGroup struct {
	key    ownerKey
	names  []string
	states []*podState
}

// podState is what pods of one group share, how many they are, and the
// group: their head, encoded (partsOf), held once for the group, and their
// body, held once for the store.
type podState struct {
	head  string
	body  *podBody
	pods  int
	group *podGroup
}

// podBody is a pod's status as imagepin reads it, encoded (partsOf), and
// how many states of the store share it.
type podBody struct {
	raw    string
	states int
}

// podRec is one pod: what differs between the pods of a group as fields,
// the rest (state) held once for all pods that share it. A UID the API
// server made is a UUID, held in 16 bytes (as a string it takes 48).
type podRec struct {
	uid   uuid.UUID
	node  unique.Handle[string]
	state *podState
}

// NewPodStore returns a store filled from lw once started.
func NewPodStore(lw toolscache.ListerWatcher) *PodStore {
	return &PodStore{
		lw:      lw,
		pods:    map[podKey]podRec{},
		owners:  map[ownerKey]*podGroup{},
		bodies:  map[string]*podBody{},
		oddUIDs: map[podKey]types.UID{},
		synced:  make(chan struct{}),
	}
}

// NewPodStoreFor returns a store of every pod the API server at cfg
// serves, listed and watched in protobuf.
func NewPodStoreFor(cfg *rest.Config) (*PodStore, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("pod store client: %w", err)
	}
	return NewPodStore(toolscache.NewListWatchFromClient(cs.CoreV1().RESTClient(), "pods", metav1.NamespaceAll, fields.Everything())), nil
}

// Start runs the store's reflector until ctx ends: a manager runnable.
func (s *PodStore) Start(ctx context.Context) error {
	r := toolscache.NewReflectorWithOptions(s.lw, &corev1.Pod{}, s, toolscache.ReflectorOptions{Name: "imagepin pod store", TypeDescription: "*v1.Pod"})
	r.RunWithContext(ctx)
	return nil
}

// NeedLeaderElection is false: a standby keeps its store filled, to take
// over with it.
func (s *PodStore) NeedLeaderElection() bool { return false }

// HasSynced reports whether the first list has been stored.
func (s *PodStore) HasSynced() bool {
	select {
	case <-s.synced:
		return true
	default:
		return false
	}
}

// WaitForSync waits for the first list, or ctx.
func (s *PodStore) WaitForSync(ctx context.Context) error {
	select {
	case <-s.synced:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("pod store not synced: %w", ctx.Err())
	}
}

// Add stores a pod the watch or a list brought (the reflector's store).
func (s *PodStore) Add(obj any) error { return s.Update(obj) }

// Update stores a pod's new state.
func (s *PodStore) Update(obj any) error {
	s.apply(func() []podChange { return s.put(obj) })
	return nil
}

// Delete forgets a pod.
func (s *PodStore) Delete(obj any) error {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	s.apply(func() []podChange {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return nil
		}
		return s.drop(podKey{unique.Make(p.Namespace), p.Name})
	})
	return nil
}

// Replace stores a whole list: pods not in it are gone. The first list
// tells nobody: every check after it reads the pods anew, and telling of
// each pod of a large cluster kept the controllers from starting.
func (s *PodStore) Replace(list []any, _ string) error {
	first := !s.HasSynced()
	s.apply(func() []podChange {
		var changed []podChange
		seen := make(map[podKey]bool, len(list))
		for _, obj := range list {
			if p, ok := obj.(*corev1.Pod); ok {
				seen[podKey{unique.Make(p.Namespace), p.Name}] = true
			}
			changed = append(changed, s.put(obj)...)
		}
		for k := range s.pods {
			if !seen[k] {
				changed = append(changed, s.drop(k)...)
			}
		}
		if first {
			return nil
		}
		return changed
	})
	s.syncOnce.Do(func() { close(s.synced) })
	return nil
}

// Resync does nothing: the store has no queue to refill.
func (s *PodStore) Resync() error { return nil }

// Transformer slims what the reflector holds while it streams a list.
func (s *PodStore) Transformer() toolscache.TransformFunc { return keepWhatDriftReads }

// podChange is a change to the pods of one owner: the owner, and a head
// that names it (its controller reference), decoded only when told.
type podChange struct {
	owner ownerKey
	raw   string
}

// apply runs change under the lock, then hands the owners whose pods it
// changed to each subscriber, which maps them on its own goroutine: a slow
// map function never holds up the store.
func (s *PodStore) apply(change func() []podChange) {
	s.mu.Lock()
	changed := change()
	subs := s.subs
	s.mu.Unlock()
	if len(changed) == 0 {
		return
	}
	for _, sub := range subs {
		sub.add(changed)
	}
}

// podSubscriber is one controller's queue of changed owners: each owner
// once however often its pods changed before it was mapped.
type podSubscriber struct {
	fn   func(client.Object)
	mu   sync.Mutex
	due  map[ownerKey]string
	wake chan struct{}
}

func (sub *podSubscriber) add(changed []podChange) {
	sub.mu.Lock()
	for _, c := range changed {
		sub.due[c.owner] = c.raw
	}
	sub.mu.Unlock()
	select {
	case sub.wake <- struct{}{}:
	default:
	}
}

// run maps the changed owners until ctx ends.
func (sub *podSubscriber) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.wake:
		}
		sub.mu.Lock()
		due := sub.due
		sub.due = map[ownerKey]string{}
		sub.mu.Unlock()
		for owner, raw := range due {
			if ctx.Err() != nil {
				return
			}
			sub.fn(standIn(owner.namespace, raw))
		}
	}
}

// put stores obj and returns what to tell: the owners whose pods changed
// node or what they run.
func (s *PodStore) put(obj any) []podChange {
	p, ok := obj.(*corev1.Pod)
	if !ok || p == nil {
		return nil
	}
	key := podKey{unique.Make(p.Namespace), p.Name}
	ref := metav1.GetControllerOf(p)
	if ref == nil {
		return s.drop(key) // orphaned: no workload's pod any more
	}
	node := unique.Make(p.Spec.NodeName)
	head, body := partsOf(p)
	c := compactUIDOf(p.UID)
	uid, odd := c.uuid, c.other != ""
	okey := ownerKey{key.namespace, ref.UID}
	old, had := s.pods[key]
	if had && old.state.group.key == okey && old.uid == uid && old.node == node &&
		old.state.head == head && old.state.body.raw == body && (!odd || s.oddUIDs[key] == p.UID) {
		return nil
	}
	var changed []podChange
	if had {
		// Told for the group it leaves, or after the change below.
		changed = s.drop(key)
	}
	g := s.owners[okey]
	if g == nil {
		g = &podGroup{key: okey}
		s.owners[okey] = g
	}
	g.names = append(g.names, key.name)
	st := s.hold(g, head, body)
	s.pods[key] = podRec{uid: uid, node: node, state: st}
	if odd {
		s.oddUIDs[key] = p.UID
	}
	if had && old.state.group.key == okey {
		return changed // the same owner: told once
	}
	return append(changed, podChange{okey, st.head})
}

// hold returns g's state of head and body, counting one more pod in it.
func (s *PodStore) hold(g *podGroup, head, body string) *podState {
	for _, st := range g.states {
		if st.head != head {
			continue
		}
		if st.body.raw == body {
			st.pods++
			return st
		}
		head = st.head // held once for the group
	}
	b := s.bodies[body]
	if b == nil {
		b = &podBody{raw: body}
		s.bodies[body] = b
	}
	b.states++
	st := &podState{head: head, body: b, pods: 1, group: g}
	g.states = append(g.states, st)
	return st
}

// drop forgets the pod at key.
func (s *PodStore) drop(key podKey) []podChange {
	rec, ok := s.pods[key]
	if !ok {
		return nil
	}
	delete(s.pods, key)
	delete(s.oddUIDs, key)
	st := rec.state
	g := st.group
	g.names = removeFirst(g.names, key.name)
	if st.pods--; st.pods == 0 {
		g.states = removeFirst(g.states, st)
		if st.body.states--; st.body.states == 0 {
			delete(s.bodies, st.body.raw)
		}
	}
	if len(g.names) == 0 {
		delete(s.owners, g.key)
	}
	return []podChange{{g.key, st.head}}
}

// removeFirst removes the first v from list, not keeping its order.
func removeFirst[T comparable](list []T, v T) []T {
	i := slices.Index(list, v)
	if i < 0 {
		return list
	}
	last := len(list) - 1
	var zero T
	list[i], list[last] = list[last], zero
	return list[:last]
}

// standIn is what a subscriber is told of a change to the pods of the
// controller the head raw names: a pod with that namespace and controller
// reference, and nothing else.
func standIn(ns unique.Handle[string], raw string) client.Object {
	var m metav1.ObjectMeta
	// What partsOf encoded decodes; an empty head names no owner.
	_ = m.Unmarshal([]byte(raw))
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Value(), OwnerReferences: m.OwnerReferences}}
}

// decode is what the pods in st share, decoded: a pod without its name,
// namespace, UID and node.
func (st *podState) decode() *corev1.Pod {
	p := &corev1.Pod{}
	// What partsOf encoded decodes; an empty part is a pod that reports
	// nothing of it.
	_ = p.ObjectMeta.Unmarshal([]byte(st.head))
	_ = p.Status.Unmarshal([]byte(st.body.raw))
	return p
}

// restore is the pod of rec at key, from shared (rec's state decoded): a
// shallow copy that shares shared's labels, owners and statuses.
func (s *PodStore) restore(key podKey, rec podRec, shared *corev1.Pod) corev1.Pod {
	p := *shared
	p.Name, p.Namespace, p.Spec.NodeName = key.name, key.namespace.Value(), rec.node.Value()
	p.UID = compactUID{uuid: rec.uid, other: s.oddUIDs[key]}.UID()
	return p
}

// partsOf is what p shares with other pods, encoded: its head, what the
// other pods of its controller share (owners and template labels), and
// its body, what pods that run the same images share wherever they are
// (phase and container statuses, as keepWhatDriftReads slims them). The
// name, UID, node, versions and deletion are neither.
func partsOf(p *corev1.Pod) (head, body string) {
	slim, _ := keepWhatDriftReads(p)
	sp := slim.(*corev1.Pod)
	// Of the labels, those that say which template a pod comes from
	// (Kind.TemplateLabel): the rest (a StatefulSet's pod name, a Job's
	// completion index) differ from pod to pod, and nothing reads them.
	m := metav1.ObjectMeta{Labels: templateLabelsOf(sp.Labels), OwnerReferences: sp.OwnerReferences}
	// Metadata and a status always encode; were they not to, the pod
	// would still count, as one that runs nothing imagepin can read.
	h, _ := m.Marshal()
	b, _ := sp.Status.Marshal()
	return string(h), string(b)
}

// PodsOwnedBy returns the pods in ns whose controller is one of owners,
// as keepWhatDriftReads slims them. The pods share what they have in
// common (labels, owner references, statuses): they are to be read, not
// changed.
func (s *PodStore) PodsOwnedBy(ns string, owners []types.UID) []corev1.Pod {
	nsh := unique.Make(ns)
	s.mu.RLock()
	defer s.mu.RUnlock()
	decoded := map[*podState]*corev1.Pod{}
	var out []corev1.Pod
	for _, uid := range owners {
		g := s.owners[ownerKey{nsh, uid}]
		if g == nil {
			continue
		}
		for _, name := range g.names {
			key := podKey{nsh, name}
			rec := s.pods[key]
			shared := decoded[rec.state]
			if shared == nil {
				shared = rec.state.decode()
				decoded[rec.state] = shared
			}
			out = append(out, s.restore(key, rec, shared))
		}
	}
	return out
}

// Pod returns the pod ns/name as PodsOwnedBy returns pods, if held.
func (s *PodStore) Pod(ns, name string) (*corev1.Pod, bool) {
	key := podKey{unique.Make(ns), name}
	s.mu.RLock()
	defer s.mu.RUnlock()
	rec, ok := s.pods[key]
	if !ok {
		return nil, false
	}
	p := s.restore(key, rec, rec.state.decode())
	return &p, true
}

// Len is the number of pods held.
func (s *PodStore) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.pods)
}

// Source is a controller source of pod changes: a pod added or gone, or
// one that runs other images or moved to another node, maps through fn (a
// stand-in pod naming the changed pods' namespace and controller) to
// requests. The controller waits for the store's first list before it
// starts its workers.
func (s *PodStore) Source(fn handler.MapFunc) *PodSource {
	return &PodSource{store: s, fn: fn}
}

// PodSource is a PodStore's changes as a controller source.
type PodSource struct {
	store *PodStore
	fn    handler.MapFunc
}

// Start subscribes the controller's queue to the store's changes; they
// are mapped on a goroutine of the source's own until ctx ends.
func (ps *PodSource) Start(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
	sub := &podSubscriber{due: map[ownerKey]string{}, wake: make(chan struct{}, 1), fn: func(o client.Object) {
		for _, r := range ps.fn(ctx, o) {
			q.Add(r)
		}
	}}
	ps.store.mu.Lock()
	// Copied on write: apply reads the list outside the lock.
	ps.store.subs = append(ps.store.subs[:len(ps.store.subs):len(ps.store.subs)], sub)
	ps.store.mu.Unlock()
	go sub.run(ctx)
	return nil
}

// WaitForSync waits for the store's first list.
func (ps *PodSource) WaitForSync(ctx context.Context) error { return ps.store.WaitForSync(ctx) }

func (ps *PodSource) String() string { return "imagepin pod store" }

// templateLabelsOf keeps of labels those some kind reads to tell its pods'
// templates apart.
func templateLabelsOf(labels map[string]string) map[string]string {
	var out map[string]string
	for _, k := range kinds {
		if v, ok := labels[k.TemplateLabel]; ok && k.TemplateLabel != "" {
			if out == nil {
				out = map[string]string{}
			}
			out[k.TemplateLabel] = v
		}
	}
	return out
}
