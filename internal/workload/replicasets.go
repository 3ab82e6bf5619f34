package workload

import (
	"unique"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
)

// The PodStore also holds the ReplicaSets (the kind between a Deployment
// or a Rollout and its pods, and no workload itself) as the owner walk
// reads them: per ReplicaSet its name, its UID and its controller, about
// 280 bytes, where a packed ReplicaSet in an informer cost 630. It reads
// nothing else of them: Pods goes from a workload to its ReplicaSets to
// their pods, OwningWorkload from a pod to its ReplicaSet to the
// workload. Old ReplicaSets (ten per Deployment by default) cost the
// same small record.

// setLink is one ReplicaSet: its UID, and its controller as a reference.
type setLink struct {
	uid   compactUID
	owner ownerKey
	// ownerName and ownerKind are the rest of the controller reference.
	ownerName string
	ownerKind unique.Handle[ownerKind]
	// next is the next ReplicaSet of the same controller (setsOf).
	next *setLink
}

// ownerKind is a controller reference's apiVersion and kind.
type ownerKind struct{ apiVersion, kind string }

// setStore is the reflector's store of ReplicaSets: the PodStore's links.
type setStore struct{ s *PodStore }

// holdsReplicaSets reports whether s holds the ReplicaSets (a store made
// with their ListerWatcher, as NewPodStoreFor makes it).
func (s *PodStore) holdsReplicaSets() bool { return s.setsLW != nil }

// ReplicaSetsOwnedBy returns the UIDs of the ReplicaSets in ns whose
// controller is one of owners.
func (s *PodStore) ReplicaSetsOwnedBy(ns string, owners []types.UID) []types.UID {
	nsh := unique.Make(ns)
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []types.UID
	for _, uid := range owners {
		for l := s.setsOf[ownerKey{nsh, compactUIDOf(uid)}]; l != nil; l = l.next {
			out = append(out, l.uid.UID())
		}
	}
	return out
}

// ReplicaSet returns the ReplicaSet ns/name as the owner walk reads it:
// its name, namespace, UID and controller reference.
func (s *PodStore) ReplicaSet(ns, name string) (*appsv1.ReplicaSet, bool) {
	s.mu.RLock()
	l, ok := s.sets[podKey{unique.Make(ns), name}]
	s.mu.RUnlock()
	if !ok {
		return nil, false
	}
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: l.uid.UID()}}
	rs.SetGroupVersionKind(appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))
	if l.owner.uid != (compactUID{}) {
		k := l.ownerKind.Value()
		rs.OwnerReferences = []metav1.OwnerReference{{
			APIVersion: k.apiVersion, Kind: k.kind, Name: l.ownerName, UID: l.owner.uid.UID(), Controller: new(true),
		}}
	}
	return rs, true
}

// putSet stores a ReplicaSet and returns what to tell: its pods' owner,
// when its controller is new or changed (the owner walk from its pods
// goes on through it now).
func (s *PodStore) putSet(obj any) []podChange {
	rs, ok := obj.(*appsv1.ReplicaSet)
	if !ok || rs == nil {
		return nil
	}
	key := podKey{unique.Make(rs.Namespace), rs.Name}
	l := &setLink{uid: compactUIDOf(rs.UID)}
	if ref := metav1.GetControllerOf(rs); ref != nil {
		l.owner = ownerKey{key.namespace, compactUIDOf(ref.UID)}
		l.ownerName = ref.Name
		l.ownerKind = unique.Make(ownerKind{ref.APIVersion, ref.Kind})
	}
	old, had := s.sets[key]
	if had && old.uid == l.uid && old.owner == l.owner && old.ownerName == l.ownerName && old.ownerKind == l.ownerKind {
		return nil
	}
	var changed []podChange
	if had {
		s.unlinkSet(old)
		if old.owner != l.owner {
			changed = s.formerOwnerOf(key.namespace, old)
		}
	}
	s.sets[key] = l
	if l.owner.uid != (compactUID{}) {
		l.next = s.setsOf[l.owner]
		s.setsOf[l.owner] = l
	}
	return append(changed, s.podsOfSet(key.namespace, l)...)
}

// dropSet forgets the ReplicaSet at key.
func (s *PodStore) dropSet(key podKey) []podChange {
	l, ok := s.sets[key]
	if !ok {
		return nil
	}
	delete(s.sets, key)
	s.unlinkSet(l)
	return append(s.formerOwnerOf(key.namespace, l), s.podsOfSet(key.namespace, l)...)
}

// formerOwnerOf is the change to tell the controller l named, when l has
// pods: they are no longer its workload's.
func (s *PodStore) formerOwnerOf(ns unique.Handle[string], l *setLink) []podChange {
	if l.owner.uid == (compactUID{}) || s.owners[ownerKey{ns, l.uid}] == nil {
		return nil
	}
	k := l.ownerKind.Value()
	// A head whose controller reference is the former owner (standIn
	// names it).
	m := metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{{APIVersion: k.apiVersion, Kind: k.kind, Controller: new(true)}}}
	raw, _ := m.Marshal()
	return []podChange{{owner: l.owner, name: l.ownerName, raw: string(raw)}}
}

func (s *PodStore) unlinkSet(l *setLink) {
	if l.owner.uid == (compactUID{}) {
		return
	}
	head := s.setsOf[l.owner]
	switch {
	case head == l && l.next == nil:
		delete(s.setsOf, l.owner)
	case head == l:
		s.setsOf[l.owner] = l.next
	default:
		for at := head; at != nil; at = at.next {
			if at.next == l {
				at.next = l.next
				return
			}
		}
	}
}

// podsOfSet is the change to tell of the pods of the ReplicaSet l, if it
// has any.
func (s *PodStore) podsOfSet(ns unique.Handle[string], l *setLink) []podChange {
	g := s.owners[ownerKey{ns, l.uid}]
	if g == nil || len(g.states) == 0 {
		return nil
	}
	return []podChange{g.changeOf(g.states[0])}
}

// Add stores a ReplicaSet (the reflector's store).
func (st setStore) Add(obj any) error { return st.Update(obj) }

// Update stores a ReplicaSet's new state.
func (st setStore) Update(obj any) error {
	st.s.apply(func() []podChange { return st.s.putSet(obj) })
	return nil
}

// Delete forgets a ReplicaSet.
func (st setStore) Delete(obj any) error {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	st.s.apply(func() []podChange {
		rs, ok := obj.(*appsv1.ReplicaSet)
		if !ok || rs == nil {
			return nil
		}
		return st.s.dropSet(podKey{unique.Make(rs.Namespace), rs.Name})
	})
	return nil
}

// Replace stores a whole list of ReplicaSets: those not in it are gone.
// The first tells nobody, as the pods' first list.
func (st setStore) Replace(list []any, _ string) error {
	s := st.s
	first := !closed(s.setsSynced)
	s.apply(func() []podChange {
		var changed []podChange
		listed := make(map[podKey]bool, len(list))
		for _, obj := range list {
			if rs, ok := obj.(*appsv1.ReplicaSet); ok && rs != nil {
				listed[podKey{unique.Make(rs.Namespace), rs.Name}] = true
			}
			changed = append(changed, s.putSet(obj)...)
		}
		for key := range s.sets {
			if !listed[key] {
				changed = append(changed, s.dropSet(key)...)
			}
		}
		if first {
			return nil
		}
		return changed
	})
	s.setsOnce.Do(func() { close(s.setsSynced) })
	return nil
}

// Resync does nothing: the store has no queue to refill.
func (setStore) Resync() error { return nil }

// Transformer keeps of a ReplicaSet what the store reads while the
// reflector streams a list.
func (setStore) Transformer() toolscache.TransformFunc { return keepWhatSelectionReads }
