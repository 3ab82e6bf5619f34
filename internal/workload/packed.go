package workload

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"
	"unique"

	"github.com/google/uuid"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The manager's cache holds every workload of the cluster (pods and
// ReplicaSets are held apart, in the PodStore). A typed object costs its
// Go struct whatever it holds (a Deployment is 1,232 bytes empty), so the
// objects of those kinds are held packed: the slimmed object (see
// CacheOptions) in its protobuf encoding, a few hundred bytes. Every read
// and every event unpacks a fresh object, which is what the cache's deep
// copy of each read cost before; nothing outside this file sees a packed
// object.

// protoObject is a typed object with its protobuf encoding: every
// built-in kind.
type protoObject interface {
	client.Object
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}

// packed is one cached object: what differs from one object to the next
// (its name, UID, resourceVersion and deletion) as fields, which the
// informer's key function reads without unpacking, and the rest in its
// protobuf encoding. The namespace, which thousands of objects repeat, is
// held by its unique.Handle. owner is the UID of its controller, which the
// owner index reads (ByIndex) without unpacking. UIDs are held compact.
type packed struct {
	kind                  *Kind
	namespace             unique.Handle[string]
	name, resourceVersion string
	uid, owner            compactUID
	deleted               *metav1.Time
	rest                  string
}

// GetObjectMeta gives the informer's key and index functions the key and
// resourceVersion without unpacking.
func (p *packed) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Namespace: p.namespace.Value(), Name: p.name, ResourceVersion: p.resourceVersion}
}

func (p *packed) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject returns p: a packed object is never changed.
func (p *packed) DeepCopyObject() runtime.Object { return p }

// pack encodes obj when it is of kind k; anything else (a tombstone, an
// object already packed, one that does not encode) is returned as it is,
// and unpack passes it through. obj is the informer's own (the cache's
// transform made it, or the list decoded it): its fields are moved, not
// copied.
func pack(k *Kind, obj any) any {
	o, ok := obj.(protoObject)
	if !ok || isNilPointer(obj) {
		return obj
	}
	p := &packed{
		kind:      k,
		namespace: unique.Make(o.GetNamespace()),
		name:      o.GetName(), resourceVersion: o.GetResourceVersion(), uid: compactUIDOf(o.GetUID()), deleted: o.GetDeletionTimestamp(),
	}
	if ref := metav1.GetControllerOf(o); ref != nil {
		p.owner = compactUIDOf(ref.UID)
	}
	o.SetNamespace("")
	o.SetName("")
	o.SetResourceVersion("")
	o.SetUID("")
	o.SetDeletionTimestamp(nil)
	raw, err := o.Marshal()
	if err != nil {
		return unpacked(p, o)
	}
	p.rest = string(raw)
	return p
}

// unpack returns the object p holds, or obj itself when it is not packed.
// A tombstone's last state is unpacked too.
func unpack(obj any) (any, error) {
	switch p := obj.(type) {
	case *packed:
		out := p.kind.New().(protoObject)
		if err := out.Unmarshal([]byte(p.rest)); err != nil {
			return nil, fmt.Errorf("unpack cached %s %s/%s: %w", p.kind.Name, p.namespace.Value(), p.name, err)
		}
		out.GetObjectKind().SetGroupVersionKind(p.kind.GVK)
		return unpacked(p, out), nil
	case toolscache.DeletedFinalStateUnknown:
		last, err := unpack(p.Obj)
		if err != nil {
			return nil, err
		}
		p.Obj = last
		return p, nil
	}
	return obj, nil
}

// unpacked puts p's own fields back into o.
func unpacked(p *packed, o protoObject) protoObject {
	o.SetNamespace(p.namespace.Value())
	o.SetName(p.name)
	o.SetResourceVersion(p.resourceVersion)
	o.SetUID(p.uid.UID())
	if p.deleted != nil {
		// Each read its own: a reader may change what it reads.
		d := *p.deleted
		o.SetDeletionTimestamp(&d)
	}
	return o
}

// unpackAll unpacks each of objs, for a reader (readFresh).
func unpackAll(objs []any) []any {
	out := make([]any, 0, len(objs))
	for _, o := range objs {
		u, err := readFresh(o)
		if err != nil {
			utilruntime.HandleError(err)
			continue
		}
		out = append(out, u)
	}
	return out
}

// readFresh is what a reader of the cache gets for obj: a fresh object,
// which it may change (the cache is told not to copy it again). One that
// could not be packed is the cache's own and is copied.
func readFresh(obj any) (any, error) {
	if _, ok := obj.(*packed); !ok {
		if o, ok := obj.(runtime.Object); ok {
			return o.DeepCopyObject(), nil
		}
	}
	return unpack(obj)
}

// packedKind is the kind whose cached objects are packed, for an informer
// of example's type, or nil.
func packedKind(example runtime.Object) *Kind {
	t := reflect.TypeOf(example)
	if t == nil || t.Kind() != reflect.Pointer {
		return nil
	}
	for _, k := range kinds {
		if k.Type == t.Elem() && cachedSlim(k) {
			if _, ok := example.(protoObject); ok {
				return k
			}
		}
	}
	return nil
}

// newInformer is the cache's informer constructor: an informer of a
// packed kind holds its objects packed.
func newInformer(lw toolscache.ListerWatcher, example runtime.Object, resync time.Duration, indexers toolscache.Indexers) toolscache.SharedIndexInformer {
	// The indexers given here (the cache's namespace index) read only an
	// object's key, which a packed record gives without unpacking.
	inner := toolscache.NewSharedIndexInformer(lw, example, resync, indexers)
	k := packedKind(example)
	if k == nil {
		return inner
	}
	p := &packingInformer{SharedIndexInformer: inner, kind: k}
	// Packed even when the cache sets no transform of its own.
	_ = p.SetTransform(nil)
	return p
}

// packingInformer holds its objects packed and shows them unpacked: to
// event handlers, index functions and readers of its indexer.
type packingInformer struct {
	toolscache.SharedIndexInformer
	kind *Kind
}

// SetTransform runs t, then packs what it returns.
func (i *packingInformer) SetTransform(t toolscache.TransformFunc) error {
	k := i.kind
	return i.SharedIndexInformer.SetTransform(func(obj any) (any, error) {
		if _, done := obj.(*packed); done {
			return obj, nil // transforms must be idempotent
		}
		if t != nil {
			var err error
			if obj, err = t(obj); err != nil {
				return nil, err
			}
		}
		return pack(k, obj), nil
	})
}

func (i *packingInformer) AddEventHandler(h toolscache.ResourceEventHandler) (toolscache.ResourceEventHandlerRegistration, error) {
	return i.SharedIndexInformer.AddEventHandler(unpackingHandler{h})
}

func (i *packingInformer) AddEventHandlerWithResyncPeriod(h toolscache.ResourceEventHandler, resync time.Duration) (toolscache.ResourceEventHandlerRegistration, error) {
	return i.SharedIndexInformer.AddEventHandlerWithResyncPeriod(unpackingHandler{h}, resync)
}

func (i *packingInformer) AddEventHandlerWithOptions(h toolscache.ResourceEventHandler, o toolscache.HandlerOptions) (toolscache.ResourceEventHandlerRegistration, error) {
	return i.SharedIndexInformer.AddEventHandlerWithOptions(unpackingHandler{h}, o)
}

// AddIndexers adds index functions that see the object unpacked.
func (i *packingInformer) AddIndexers(indexers toolscache.Indexers) error {
	return i.SharedIndexInformer.AddIndexers(unpackingIndexers(indexers))
}

func (i *packingInformer) GetStore() toolscache.Store { return i.GetIndexer() }

func (i *packingInformer) GetIndexer() toolscache.Indexer {
	return unpackingIndexer{i.SharedIndexInformer.GetIndexer()}
}

func unpackingIndexers(in toolscache.Indexers) toolscache.Indexers {
	out := make(toolscache.Indexers, len(in))
	for name, f := range in {
		out[name] = func(obj any) ([]string, error) {
			u, err := unpack(obj)
			if err != nil {
				return nil, err
			}
			return f(u)
		}
	}
	return out
}

// unpackingHandler hands its handler unpacked objects.
type unpackingHandler struct {
	h toolscache.ResourceEventHandler
}

func (u unpackingHandler) OnAdd(obj any, initial bool) {
	if o, err := unpack(obj); err == nil {
		u.h.OnAdd(o, initial)
	} else {
		utilruntime.HandleError(err)
	}
}

func (u unpackingHandler) OnUpdate(oldObj, newObj any) {
	o, err1 := unpack(oldObj)
	n, err2 := unpack(newObj)
	if err := errors.Join(err1, err2); err != nil {
		utilruntime.HandleError(err)
		return
	}
	u.h.OnUpdate(o, n)
}

func (u unpackingHandler) OnDelete(obj any) {
	if o, err := unpack(obj); err == nil {
		u.h.OnDelete(o)
	} else {
		utilruntime.HandleError(err)
	}
}

// unpackingIndexer is the informer's indexer as its readers see it.
type unpackingIndexer struct{ toolscache.Indexer }

func (u unpackingIndexer) AddIndexers(indexers toolscache.Indexers) error {
	return u.Indexer.AddIndexers(unpackingIndexers(indexers))
}

func (u unpackingIndexer) List() []any { return unpackAll(u.Indexer.List()) }

func (u unpackingIndexer) Get(obj any) (any, bool, error) {
	o, ok, err := u.Indexer.Get(obj)
	return u.one(o, ok, err)
}

func (u unpackingIndexer) GetByKey(key string) (any, bool, error) {
	o, ok, err := u.Indexer.GetByKey(key)
	return u.one(o, ok, err)
}

func (u unpackingIndexer) one(o any, ok bool, err error) (any, bool, error) {
	if err != nil || !ok {
		return o, ok, err
	}
	out, err := readFresh(o)
	return out, err == nil, err
}

func (u unpackingIndexer) Index(name string, obj any) ([]any, error) {
	objs, err := u.Indexer.Index(name, obj)
	return unpackAll(objs), err
}

func (u unpackingIndexer) ByIndex(name, value string) ([]any, error) {
	if name == ownerIndexName {
		if _, indexed := u.GetIndexers()[name]; !indexed {
			return u.byOwner(value)
		}
	}
	objs, err := u.Indexer.ByIndex(name, value)
	return unpackAll(objs), err
}

// ownerIndexName is the name controller-runtime's cache gives the field
// index OwnerIndex ("field:" and the field). A packed informer serves it
// without an index (byOwner).
const ownerIndexName = "field:" + OwnerIndex

// allNamespaces is what controller-runtime puts in place of the namespace
// in an index value, for a cluster-wide read.
const allNamespaces = "__all_namespaces"

// byOwner serves the owner index, whose value is "<namespace>/<controller
// UID>" as controller-runtime's cache forms it: the objects of the
// namespace whose packed record names that owner. An index costs a set
// per owner, more than the packed ReplicaSet itself; the scan reads one
// field per object of the namespace.
func (u unpackingIndexer) byOwner(value string) ([]any, error) {
	ns, uid, ok := strings.Cut(value, "/")
	if !ok {
		return nil, fmt.Errorf("owner index value %q is not <namespace>/<UID>", value)
	}
	var objs []any
	if ns == allNamespaces {
		objs = u.Indexer.List()
	} else {
		var err error
		if objs, err = u.Indexer.ByIndex(toolscache.NamespaceIndex, ns); err != nil {
			return nil, err
		}
	}
	owner := compactUIDOf(types.UID(uid))
	var owned []any
	for _, o := range objs {
		switch p := o.(type) {
		case *packed:
			// No controller is no owner: "ns/" finds nothing.
			if p.owner == owner && p.owner != (compactUID{}) {
				owned = append(owned, p)
			}
		case metav1.Object: // one that could not be packed
			if ref := metav1.GetControllerOf(p); ref != nil && ref.UID == types.UID(uid) {
				owned = append(owned, p)
			}
		}
	}
	return unpackAll(owned), nil
}

// compactUID is a UID in 16 bytes when it is a UUID, as the API server
// makes them (as a string it takes 64), or else as it is.
type compactUID struct {
	uuid  uuid.UUID
	other types.UID
}

func compactUIDOf(uid types.UID) compactUID {
	if u, err := uuid.Parse(string(uid)); err == nil && u.String() == string(uid) {
		return compactUID{uuid: u}
	}
	return compactUID{other: uid}
}

// UID is the UID back.
func (c compactUID) UID() types.UID {
	if c.uuid == (uuid.UUID{}) {
		return c.other
	}
	return types.UID(c.uuid.String())
}
