package workload

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"unique"

	"github.com/google/uuid"

	appsv1 "k8s.io/api/apps/v1"
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
// The pods are held by their controller, which is how imagepin reads them
// (PodsOwnedBy): per controller a group, and in it per pod a record of 48
// bytes, with no map entry of its own. A record holds the pod's UID, its
// node, the end of its name (what follows the controller's name and a
// dash, as a controller names its pods; the whole name otherwise) and a
// pointer to what it shares with other pods (the slimmed pod of
// keepWhatDriftReads, split in two and encoded): its head, the owners and
// the labels that tell templates apart, held once for the pods of one
// controller; and its body, the phase and the images its containers run,
// held once for the whole store, as the pods of every workload that runs
// the same images share it. A pod with no controller belongs to no
// workload and is not held.
//
// A pod is found by its controller, which every event names. Only a pod
// whose controller changed (adopted, released) or is not known (a
// tombstone, Pod) is looked for across its namespace's groups.
//
// A reflector fills the store from the API server; a change of what a pod
// runs, or where, is told to the controllers through Source.
type PodStore struct {
	lw toolscache.ListerWatcher
	// setsLW lists and watches the ReplicaSets (replicasets.go); nil:
	// they are read from the manager's cache.
	setsLW toolscache.ListerWatcher

	mu     sync.RWMutex
	owners map[ownerKey]*podGroup
	// spaces: each namespace's groups, for the pods looked for by name.
	spaces map[unique.Handle[string]][]*podGroup
	bodies map[string]*podBody
	// oddUIDs: the UIDs that are not UUIDs (podRec.uid is zero).
	oddUIDs map[podKey]types.UID
	count   int
	subs    []*podSubscriber

	synced   chan struct{}
	syncOnce sync.Once

	// The ReplicaSets, by namespace and name, and by controller.
	sets       map[podKey]*setLink
	setsOf     map[ownerKey]*setLink
	setsSynced chan struct{}
	setsOnce   sync.Once
}

type podKey struct {
	namespace unique.Handle[string]
	name      string
}

type ownerKey struct {
	namespace unique.Handle[string]
	uid       compactUID
}

// podGroup is the pods of one controller, and the states they are in:
// nearly always one, two while a tag moves under a scale-up. owner is the
// controller's name: the start of its pods' names.
type podGroup struct {
	key    ownerKey
	owner  string
	pods   []podRec
	states []*podState
	// whole counts the records that hold a whole name ("/" and the name).
	whole int
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
// server made is a UUID, held in 16 bytes (as a string it takes 48). end
// is the pod's name after its controller's name and a dash, or, for a
// name that does not start so, "/" and the whole name ("/" is in no
// object name).
type podRec struct {
	end   string
	uid   uuid.UUID
	node  unique.Handle[string]
	state *podState
}

// shortOf is what follows g's controller name and a dash in name, if name
// starts so: what a record holds of it (endOf).
func (g *podGroup) shortOf(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, g.owner)
	if !ok || len(rest) < 2 || rest[0] != '-' {
		return "", false
	}
	return rest[1:], true
}

// endOf is what a record of g holds of the pod name: see podRec.
func (g *podGroup) endOf(name string) string {
	if short, ok := g.shortOf(name); ok {
		// A copy: the name's own bytes are the decoded pod's.
		return strings.Clone(short)
	}
	return "/" + name
}

// nameOf is the name of the pod rec of g.
func (g *podGroup) nameOf(rec *podRec) string {
	if whole, ok := strings.CutPrefix(rec.end, "/"); ok {
		return whole
	}
	return g.owner + "-" + rec.end
}

// find returns the index of the pod name in g, or -1. A name is held one
// way (endOf): a group is looked through only for records held that way.
func (g *podGroup) find(name string) int {
	if short, ok := g.shortOf(name); ok {
		for i := range g.pods {
			if g.pods[i].end == short {
				return i
			}
		}
		return -1
	}
	if g.whole == 0 {
		return -1
	}
	for i := range g.pods {
		if e := g.pods[i].end; len(e) == len(name)+1 && e[0] == '/' && e[1:] == name {
			return i
		}
	}
	return -1
}

// NewPodStore returns a store of the pods lw lists, and of the
// ReplicaSets sets lists (nil: none, they are read from the manager's
// cache), filled once started.
func NewPodStore(lw, sets toolscache.ListerWatcher) *PodStore {
	s := &PodStore{
		lw:      lw,
		setsLW:  sets,
		owners:  map[ownerKey]*podGroup{},
		spaces:  map[unique.Handle[string]][]*podGroup{},
		bodies:  map[string]*podBody{},
		oddUIDs: map[podKey]types.UID{},
		synced:  make(chan struct{}),

		sets:       map[podKey]*setLink{},
		setsOf:     map[ownerKey]*setLink{},
		setsSynced: make(chan struct{}),
	}
	if sets == nil {
		s.setsOnce.Do(func() { close(s.setsSynced) }) // none to wait for
	}
	return s
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
	return NewPodStore(
		toolscache.NewListWatchFromClient(cs.CoreV1().RESTClient(), "pods", metav1.NamespaceAll, fields.Everything()),
		toolscache.NewListWatchFromClient(cs.AppsV1().RESTClient(), "replicasets", metav1.NamespaceAll, fields.Everything()),
	), nil
}

// Start runs the store's reflector until ctx ends: a manager runnable.
func (s *PodStore) Start(ctx context.Context) error {
	if s.setsLW != nil {
		sets := toolscache.NewReflectorWithOptions(s.setsLW, &appsv1.ReplicaSet{}, setStore{s}, toolscache.ReflectorOptions{Name: "imagepin pod store: ReplicaSets", TypeDescription: "*v1.ReplicaSet"})
		go sets.RunWithContext(ctx)
	}
	r := toolscache.NewReflectorWithOptions(s.lw, &corev1.Pod{}, s, toolscache.ReflectorOptions{Name: "imagepin pod store", TypeDescription: "*v1.Pod"})
	r.RunWithContext(ctx)
	return nil
}

// NeedLeaderElection is false: a standby keeps its store filled, to take
// over with it.
func (s *PodStore) NeedLeaderElection() bool { return false }

// closed reports whether c is closed.
func closed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// HasSynced reports whether the first lists (of pods, and of ReplicaSets
// when it holds them) have been stored.
func (s *PodStore) HasSynced() bool { return closed(s.synced) && closed(s.setsSynced) }

// WaitForSync waits for the first list, or ctx.
func (s *PodStore) WaitForSync(ctx context.Context) error {
	for _, c := range []chan struct{}{s.synced, s.setsSynced} {
		select {
		case <-c:
		case <-ctx.Done():
			return fmt.Errorf("pod store not synced: %w", ctx.Err())
		}
	}
	return nil
}

// Add stores a pod the watch brought as added: a new pod, looked for
// only among its controller's.
func (s *PodStore) Add(obj any) error {
	s.apply(func() []podChange { return s.put(obj, true) })
	return nil
}

// Update stores a pod's new state.
func (s *PodStore) Update(obj any) error {
	s.apply(func() []podChange { return s.put(obj, false) })
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
		key := podKey{unique.Make(p.Namespace), p.Name}
		var g *podGroup
		if ref := metav1.GetControllerOf(p); ref != nil {
			g = s.owners[ownerKey{key.namespace, compactUIDOf(ref.UID)}]
			if i := g.findIn(p.Name); i >= 0 {
				return s.removeAt(g, i)
			}
		}
		// A tombstone's controller may be out of date.
		return s.drop(key, g)
	})
	return nil
}

// Replace stores a whole list: pods not in it are gone, and so is a pod's
// record under a controller the list no longer names. The first list
// tells nobody: every check after it reads the pods anew, and telling of
// each pod of a large cluster kept the controllers from starting.
func (s *PodStore) Replace(list []any, _ string) error {
	first := !closed(s.synced)
	s.apply(func() []podChange {
		// Each pod's controller as the list names it.
		listed := make(map[podKey]ownerKey, len(list))
		for _, obj := range list {
			if p, ok := obj.(*corev1.Pod); ok && p != nil {
				if ref := metav1.GetControllerOf(p); ref != nil {
					ns := unique.Make(p.Namespace)
					listed[podKey{ns, p.Name}] = ownerKey{ns, compactUIDOf(ref.UID)}
				}
			}
		}
		// Gone first: a pod the list names under another controller
		// than it is held by, or not at all.
		var changed []podChange
		for _, g := range slices.Collect(maps.Values(s.owners)) {
			for i := len(g.pods) - 1; i >= 0; i-- {
				if owner, ok := listed[podKey{g.key.namespace, g.nameOf(&g.pods[i])}]; !ok || owner != g.key {
					changed = append(changed, s.removeAt(g, i)...)
				}
			}
		}
		for _, obj := range list {
			// Looked for among its controller's pods only: it is held
			// there or nowhere.
			changed = append(changed, s.put(obj, true)...)
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

// podChange is a change to the pods of one owner: the owner, its name,
// and a head of its pods (their owner references, decoded only when told).
type podChange struct {
	owner ownerKey
	name  string
	raw   string
}

// changeOf is the change to tell of the pods of g, in state st.
func (g *podGroup) changeOf(st *podState) podChange {
	return podChange{owner: g.key, name: g.owner, raw: st.head}
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
	due  map[ownerKey]podChange
	wake chan struct{}
}

func (sub *podSubscriber) add(changed []podChange) {
	sub.mu.Lock()
	for _, c := range changed {
		sub.due[c.owner] = c
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
		sub.due = map[ownerKey]podChange{}
		sub.mu.Unlock()
		for _, c := range due {
			if ctx.Err() != nil {
				return
			}
			sub.fn(standIn(c))
		}
	}
}

// put stores obj and returns what to tell: the owners whose pods changed
// node or what they run. A pod not found among its controller's pods is
// looked for across its namespace, unless it is new (added).
func (s *PodStore) put(obj any, added bool) []podChange {
	p, ok := obj.(*corev1.Pod)
	if !ok || p == nil {
		return nil
	}
	key := podKey{unique.Make(p.Namespace), p.Name}
	ref := metav1.GetControllerOf(p)
	if ref == nil {
		if added {
			return nil // new, and no workload's: held nowhere
		}
		return s.drop(key, nil) // orphaned: no workload's pod any more
	}
	node := unique.Make(p.Spec.NodeName)
	head, body := partsOf(p)
	c := compactUIDOf(p.UID)
	uid, odd := c.uuid, c.other != ""
	okey := ownerKey{key.namespace, compactUIDOf(ref.UID)}
	var changed []podChange
	g := s.owners[okey]
	if i := g.findIn(p.Name); i >= 0 {
		rec := &g.pods[i]
		if rec.uid == uid && rec.node == node && rec.state.head == head && rec.state.body.raw == body &&
			(!odd || s.oddUIDs[key] == p.UID) {
			return nil
		}
		// Changed in place: the group stays.
		s.release(g, rec.state)
		rec.uid, rec.node, rec.state = uid, node, s.hold(g, head, body)
		if odd {
			s.oddUIDs[key] = p.UID
		} else {
			delete(s.oddUIDs, key)
		}
		return []podChange{g.changeOf(rec.state)}
	} else if !added {
		// Adopted from another controller, or released and adopted.
		changed = s.drop(key, g)
	}
	if g = s.owners[okey]; g == nil {
		g = &podGroup{key: okey, owner: ref.Name}
		s.owners[okey] = g
		s.spaces[key.namespace] = append(s.spaces[key.namespace], g)
	}
	st := s.hold(g, head, body)
	g.pods = grown(g.pods)
	g.pods = append(g.pods, podRec{end: g.endOf(p.Name), uid: uid, node: node, state: st})
	if g.pods[len(g.pods)-1].end[0] == '/' {
		g.whole++
	}
	s.count++
	if odd {
		s.oddUIDs[key] = p.UID
	}
	return append(changed, g.changeOf(st))
}

// grown is pods with room for one more: a small group (most are a few
// pods) grows by one, its records held at their length; a large one as
// append grows it.
func grown(pods []podRec) []podRec {
	if len(pods) < cap(pods) || len(pods) >= smallGroup {
		return pods
	}
	out := make([]podRec, len(pods), len(pods)+1)
	copy(out, pods)
	return out
}

// smallGroup is the size up to which a group's records grow one by one.
const smallGroup = 16

// findIn is g.find for a group that may not be held (nil).
func (g *podGroup) findIn(name string) int {
	if g == nil {
		return -1
	}
	return g.find(name)
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

// release counts one pod fewer in st, a state of g: a state goes with its
// last pod, and a body with its last state.
func (s *PodStore) release(g *podGroup, st *podState) {
	if st.pods--; st.pods == 0 {
		g.states = removeFirst(g.states, st)
		if st.body.states--; st.body.states == 0 {
			delete(s.bodies, st.body.raw)
		}
	}
}

// drop forgets the pod at key wherever in its namespace it is held, but
// in except (looked in already).
func (s *PodStore) drop(key podKey, except *podGroup) []podChange {
	for _, g := range s.spaces[key.namespace] {
		if g == except {
			continue
		}
		if i := g.find(key.name); i >= 0 {
			return s.removeAt(g, i)
		}
	}
	return nil
}

// removeAt forgets the i-th pod of g, and g with its last pod.
func (s *PodStore) removeAt(g *podGroup, i int) []podChange {
	rec := g.pods[i]
	if rec.uid == (uuid.UUID{}) {
		delete(s.oddUIDs, podKey{g.key.namespace, g.nameOf(&rec)})
	}
	if rec.end[0] == '/' {
		g.whole--
	}
	last := len(g.pods) - 1
	g.pods[i], g.pods[last] = g.pods[last], podRec{}
	g.pods = g.pods[:last]
	s.count--
	st := rec.state
	s.release(g, st)
	if len(g.pods) == 0 {
		delete(s.owners, g.key)
		ns := g.key.namespace
		if s.spaces[ns] = removeFirst(s.spaces[ns], g); len(s.spaces[ns]) == 0 {
			delete(s.spaces, ns)
		}
	}
	return []podChange{g.changeOf(st)}
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

// standIn is what a subscriber is told of change c: a pod of the changed
// pods' namespace and owner references, and nothing else.
func standIn(c podChange) client.Object {
	var m metav1.ObjectMeta
	// What partsOf encoded decodes; an empty head names no owner.
	_ = m.Unmarshal([]byte(c.raw))
	nameController(m.OwnerReferences, c.name, c.owner.uid)
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: c.owner.namespace.Value(), OwnerReferences: m.OwnerReferences}}
}

// nameController puts the name and UID of the controller, which a head
// leaves out (its group holds them), back into its reference.
func nameController(refs []metav1.OwnerReference, name string, uid compactUID) {
	for i := range refs {
		if refs[i].Controller != nil && *refs[i].Controller {
			refs[i].Name, refs[i].UID = name, uid.UID()
			return
		}
	}
}

// decode is what the pods in st share, decoded: a pod without its name,
// namespace, UID and node.
func (st *podState) decode() *PodShare {
	var m metav1.ObjectMeta
	// What partsOf encoded decodes; an empty part is a pod that reports
	// nothing of it.
	_ = m.Unmarshal([]byte(st.head))
	nameController(m.OwnerReferences, st.group.owner, st.group.key.uid)
	p := &PodShare{Labels: m.Labels, OwnerReferences: m.OwnerReferences}
	_ = p.Status.Unmarshal([]byte(st.body.raw))
	return p
}

// viewOf is the pod rec of g as a check reads it, sharing shared (rec's
// state decoded).
func (s *PodStore) viewOf(g *podGroup, rec *podRec, shared *PodShare) Pod {
	p := Pod{Name: g.nameOf(rec), Node: rec.node.Value(), Shared: shared}
	if rec.uid == (uuid.UUID{}) {
		p.UID = s.oddUIDs[podKey{g.key.namespace, p.Name}]
	} else {
		p.UID = compactUID{uuid: rec.uid}.UID()
	}
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
	// The controller's name and UID are its group's: the reference
	// keeps the rest (apiVersion, kind, blockOwnerDeletion).
	refs := slices.Clone(sp.OwnerReferences)
	nameController(refs, "", compactUID{})
	m := metav1.ObjectMeta{Labels: templateLabelsOf(sp.Labels), OwnerReferences: refs}
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
func (s *PodStore) PodsOwnedBy(ns string, owners []types.UID) []Pod {
	nsh := unique.Make(ns)
	s.mu.RLock()
	defer s.mu.RUnlock()
	decoded := map[*podState]*PodShare{}
	var out []Pod
	for _, uid := range owners {
		g := s.owners[ownerKey{nsh, compactUIDOf(uid)}]
		if g == nil {
			continue
		}
		for i := range g.pods {
			rec := &g.pods[i]
			shared := decoded[rec.state]
			if shared == nil {
				shared = rec.state.decode()
				decoded[rec.state] = shared
			}
			out = append(out, s.viewOf(g, rec, shared))
		}
	}
	return out
}

// Pod returns the pod ns/name as PodsOwnedBy returns pods, if held. It is
// looked for across the namespace's controllers: for the few pods that
// are on the way from a workload to its pods (a LeaderWorkerSet's
// leaders).
func (s *PodStore) Pod(ns, name string) (*corev1.Pod, bool) {
	nsh := unique.Make(ns)
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, g := range s.spaces[nsh] {
		if i := g.find(name); i >= 0 {
			rec := &g.pods[i]
			return s.viewOf(g, rec, rec.state.decode()).Object(ns), true
		}
	}
	return nil, false
}

// Len is the number of pods held.
func (s *PodStore) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.count
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
	sub := &podSubscriber{due: map[ownerKey]podChange{}, wake: make(chan struct{}, 1), fn: func(o client.Object) {
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
