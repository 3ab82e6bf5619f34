package controllers

import (
	"slices"
	"sync"
	"unique"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
)

// Push events (internal/receiver) reach the ImagePins that name the tag
// they concern: each check records the tags its ImagePin names, and a hint
// has those ImagePins checked at once. The check resolves as always (the
// resolver's hint makes its cached answer unfresh), so an event is never
// an answer, only a reason to ask.

// hintQueue is how many hinted ImagePins may wait to be queued; past it a
// hint is dropped and the ImagePin's next tick sees the tag.
const hintQueue = 1024

// tagIndex is which tags each ImagePin names, and the reverse, by tag and
// by repository. It is safe for concurrent use; its zero value is empty.
// Each ImagePin is held once (tagPin), and listed under each of its keys
// by pointer: at 1,000 ImagePins naming ten tags each, a map of ImagePins
// per tag cost more than the ImagePins' statuses' repeated strings.
type tagIndex struct {
	mu    sync.Mutex
	byPin map[types.NamespacedName]*tagPin
	pins  map[unique.Handle[registry.TagRef]][]*tagPin
}

// tagPin is one ImagePin of a tagIndex and the keys it is listed under
// (its tags, then their repositories), each once.
type tagPin struct {
	key  types.NamespacedName
	keys []unique.Handle[registry.TagRef]
}

// set records the tags pin names now, replacing what it named before.
func (x *tagIndex) set(pin types.NamespacedName, refs []registry.TagRef) {
	keys := make([]unique.Handle[registry.TagRef], 0, 2*len(refs))
	for _, t := range refs {
		for _, k := range []registry.TagRef{t, {Repository: t.Repository}} {
			if h := unique.Make(k); !slices.Contains(keys, h) {
				keys = append(keys, h)
			}
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if p := x.byPin[pin]; p != nil && slices.Equal(p.keys, keys) {
		return // the check found the same tags: nearly always
	}
	x.forgetLocked(pin)
	if len(keys) == 0 {
		return
	}
	if x.byPin == nil {
		x.byPin = map[types.NamespacedName]*tagPin{}
		x.pins = map[unique.Handle[registry.TagRef]][]*tagPin{}
	}
	// A copy of its own length: keys was made for every tag twice.
	p := &tagPin{key: pin, keys: slices.Clone(keys)}
	x.byPin[pin] = p
	for _, k := range keys {
		x.pins[k] = append(x.pins[k], p)
	}
}

// forget drops an ImagePin that is gone, suspended or invalid.
func (x *tagIndex) forget(pin types.NamespacedName) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.forgetLocked(pin)
}

func (x *tagIndex) forgetLocked(pin types.NamespacedName) {
	p := x.byPin[pin]
	if p == nil {
		return
	}
	for _, k := range p.keys {
		rest := slices.DeleteFunc(x.pins[k], func(q *tagPin) bool { return q == p })
		if len(rest) == 0 {
			delete(x.pins, k)
		} else {
			x.pins[k] = rest
		}
	}
	delete(x.byPin, pin)
}

// pinsOf returns the ImagePins naming t (any tag of t.Repository when
// t.Tag is empty).
func (x *tagIndex) pinsOf(t registry.TagRef) []types.NamespacedName {
	x.mu.Lock()
	defer x.mu.Unlock()
	listed := x.pins[unique.Make(t)]
	out := make([]types.NamespacedName, 0, len(listed))
	for _, p := range listed {
		out = append(out, p.key)
	}
	return out
}

// tagRefs are the tags the observed containers resolve.
func (o observation) tagRefs() []registry.TagRef {
	seen := map[string]bool{}
	var out []registry.TagRef
	for _, c := range o.containers {
		if !c.hasTag || seen[c.image] {
			continue
		}
		seen[c.image] = true
		if t, err := registry.TagRefOf(c.image); err == nil {
			out = append(out, t)
		}
	}
	return out
}

// Names reports whether an ImagePin or a ClusterImagePin names t (any tag of t.Repository when
// t.Tag is empty), as of its last check.
func (r *ImagePinReconciler) Names(t registry.TagRef) bool {
	return len(r.tags.pinsOf(t)) > 0
}

// Recheck has every ImagePin that names t checked now, and returns how
// many were queued and how many found the queue full. It never blocks: a
// hint that finds the queue full is dropped, and the ImagePin's next tick
// sees the tag.
func (r *ImagePinReconciler) Recheck(t registry.TagRef) (queued, full int) {
	for _, p := range r.tags.pinsOf(t) {
		if r.queueCheck(p) {
			queued++
		} else {
			full++
		}
	}
	return queued, full
}

// queueCheck has the ImagePin p (a ClusterImagePin when p.Namespace is
// empty) checked now; false when the queue is full or not set up.
func (r *ImagePinReconciler) queueCheck(p types.NamespacedName) bool {
	// ClusterImagePins are known by their name alone.
	var obj client.Object = &imagesv1alpha1.ImagePin{}
	queue := r.hinted
	if p.Namespace == "" {
		obj, queue = &imagesv1alpha1.ClusterImagePin{}, r.clusterHinted
	}
	obj.SetNamespace(p.Namespace)
	obj.SetName(p.Name)
	if queue == nil {
		return false // not set up: no controller to tell
	}
	select {
	case queue <- event.GenericEvent{Object: obj}:
		return true
	default:
		return false
	}
}

// checkKey is how the queues know the ImagePin observe was given: a
// ClusterImagePin's, acting in a namespace, by the ClusterImagePin's name.
func checkKey(pin *imagesv1alpha1.ImagePin) types.NamespacedName {
	if name, ok := selection.ClusterPinName(pin); ok {
		return types.NamespacedName{Name: name}
	}
	return client.ObjectKeyFromObject(pin)
}
