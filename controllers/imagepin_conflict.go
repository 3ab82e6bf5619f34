package controllers

import (
	"time"

	"k8s.io/apimachinery/pkg/types"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/selection"
)

// maxReverts is how many times, within the conflict backoff, another actor
// may set an image back to the tag imagepin pinned before imagepin stops
// writing that workload for the backoff.
const maxReverts = 3

// defaultConflictBackoff is how long reverts are remembered, and how long
// imagepin first stops writing a workload that is reverted maxReverts
// times; each block in a row doubles it, up to maxConflictBackoff.
const (
	defaultConflictBackoff = time.Hour
	maxConflictBackoff     = 24 * time.Hour
)

// conflictState remembers, about one workload (by UID) and one ImagePin (by
// UID), what imagepin last wrote and when someone set it back. It lives in
// memory: a restarted manager starts with none, as after a spec change.
type conflictState struct {
	kind imagesv1alpha1.WorkloadKind
	name string
	// lastWritten is, per container, the image imagepin last wrote.
	lastWritten map[string]string
	// wroteGeneration is the workload's generation after imagepin's last
	// write: a cached copy older than that is not a revert, only late.
	wroteGeneration int64
	// reverts are when the image was found set back, within the backoff.
	reverts      []time.Time
	blockedUntil time.Time
	unblockedAt  time.Time
	// blocks counts blocks in a row; a whole backoff after a block with no
	// revert resets it.
	blocks int
	// lastReverts is how many reverts the last block took.
	lastReverts int
	manager     string
}

// pinConflicts is the conflict state of one ImagePin generation.
type pinConflicts struct {
	// uid and generation are the ImagePin's: another UID (the ImagePin
	// deleted and created again) or generation (its spec changed) starts
	// afresh.
	uid        types.UID
	generation int64
	workloads  map[types.UID]*conflictState
}

type conflictDecision int

const (
	writeIt conflictDecision = iota
	stayBlocked
	nowBlocked
)

// decide says whether imagepin writes the workload now. current is, per
// container to be written, the image the workload names now.
//
// A revert is the same tag set back over what imagepin wrote: a GitOps
// tool applying "repo:v1" over "repo:v1@sha256:…", or another digest of
// that tag ("repo" over "repo:latest@…" too). A new tag ("repo:v2" after
// "repo:v1") is a release, new intent: it is pinned, and the workload's
// memory starts again from it, even while it is blocked. Reverts
// are forgotten after the backoff. maxReverts within it block the workload
// for the backoff; then imagepin writes once more, and one revert within a
// backoff of that blocks it again for twice as long (up to a day).
func (st *conflictState) decide(current map[string]string, now time.Time, backoff time.Duration) conflictDecision {
	cutoff := now.Add(-backoff)
	kept := st.reverts[:0]
	for _, t := range st.reverts {
		if t.After(cutoff) {
			kept = append(kept, t)
		}
	}
	st.reverts = kept

	// A tool applies its whole manifest: a release of one container sets
	// the others back to their tags in the same change. A change that
	// releases anything is new intent, not a revert, and ends a block.
	reverted, released := false, false
	for slot, img := range current {
		last, ok := st.lastWritten[slot]
		if !ok || img == last {
			continue
		}
		if selection.ImageKey(img) == selection.ImageKey(last) {
			reverted = true
		} else {
			released = true
			delete(st.lastWritten, slot)
		}
	}
	if released {
		clear(st.lastWritten)
		st.reverts, st.blocks, st.blockedUntil = nil, 0, time.Time{}
		return writeIt
	}
	if st.blockedAt(now) {
		return stayBlocked
	}
	if !st.blockedUntil.IsZero() {
		// The block is over: write once more, from a clean slate (what
		// was set back during the block is not a new revert).
		st.blockedUntil = time.Time{}
		st.unblockedAt = now
		clear(st.lastWritten)
		return writeIt
	}
	if st.blocks > 0 && now.Sub(st.unblockedAt) > backoff && len(st.reverts) == 0 {
		st.blocks = 0 // a whole backoff without a revert since the last block
	}
	if !reverted {
		return writeIt
	}
	st.reverts = append(st.reverts, now)
	// Right after a block, one revert is enough to block again.
	threshold := maxReverts
	if st.blocks > 0 {
		threshold = 1
	}
	if len(st.reverts) < threshold {
		return writeIt
	}
	st.lastReverts = len(st.reverts)
	block := backoff << min(st.blocks, 5)
	if block > maxConflictBackoff || block <= 0 {
		block = maxConflictBackoff
	}
	st.blocks++
	st.blockedUntil = now.Add(block)
	st.reverts = nil
	return nowBlocked
}

func (st *conflictState) blockedAt(now time.Time) bool {
	return now.Before(st.blockedUntil)
}

func (r *ImagePinReconciler) conflictBackoff() time.Duration {
	if r.ConflictBackoff > 0 {
		return r.ConflictBackoff
	}
	return defaultConflictBackoff
}

// conflictsOf returns the conflict state of pin's current generation,
// keyed by workload UID: a spec change starts afresh, as does an ImagePin
// deleted and created again (a new UID). State of workloads no longer
// selected, or deleted, is dropped. Called with conflictMu held.
func (r *ImagePinReconciler) conflictsOf(pin *imagesv1alpha1.ImagePin, live map[types.UID]bool) map[types.UID]*conflictState {
	if r.conflicts == nil {
		r.conflicts = map[types.NamespacedName]*pinConflicts{}
	}
	key := types.NamespacedName{Namespace: pin.Namespace, Name: pin.Name}
	pc := r.conflicts[key]
	if pc == nil || pc.uid != pin.UID || pc.generation != pin.Generation {
		pc = &pinConflicts{uid: pin.UID, generation: pin.Generation, workloads: map[types.UID]*conflictState{}}
		r.conflicts[key] = pc
	}
	for uid := range pc.workloads {
		if !live[uid] {
			delete(pc.workloads, uid)
		}
	}
	return pc.workloads
}

// forgetConflicts drops the state of an ImagePin that is gone.
func (r *ImagePinReconciler) forgetConflicts(key types.NamespacedName) {
	r.conflictMu.Lock()
	defer r.conflictMu.Unlock()
	delete(r.conflicts, key)
}
