package controllers

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// checkTicks remembers, per ImagePin, the tick its last check counted
// for, and when this manager began checking (its first check: the
// manager is leader and its cache has synced).
type checkTicks struct {
	mu      sync.Mutex
	started time.Time
	last    map[types.NamespacedName]lastCheck
	// The cold round: this manager's first visit of each ImagePin that
	// was there when it began. visited holds the ImagePins its reconcile
	// has come to (checked or not: a suspended or invalid one, a failed
	// read), lastFirst when the last of those first visits was: one
	// after a tick began says the round was under way at that tick.
	// firstPending, if set, says whether one still waits for its first
	// visit (pending), when it could tell (known). coldOver ends the
	// round, and what is kept of it.
	visited      map[types.NamespacedName]types.UID
	lastFirst    time.Time
	coldOver     bool
	firstPending func(started time.Time) (pending, known bool)
}

// begin records that this manager began checking at now, unless it has
// already: the cold round's plan begins before the first check.
func (t *checkTicks) begin(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.started.IsZero() {
		t.started = now
	}
}

// lastCheck is the tick an ImagePin's last check counted for; uid tells a
// recreated ImagePin from the one checked.
type lastCheck struct {
	uid  types.UID
	tick time.Time
}

// freshSince is the instant from which resolutions serve a check of pin
// at now: the start of the current tick, or the previous tick's when the
// check is one pin owes from that tick. A check is owed when the checks
// queued behind a cold start (or a round longer than the interval)
// outlast a tick: pin was checked before the previous tick began and not
// since, or it has never been checked by this manager, which began
// checking in the previous tick and had not come to it yet. Its tags were
// asked for in the previous tick's round; asking them again would send a
// second request for every tag that round asked before the tick. The next
// tick's check asks anew. An ImagePin created since the manager began, or
// one it comes to later than the tick after its start (moved from another
// shard, resumed, a ClusterImagePin's new namespace), owes nothing.
//
// The same holds for an ImagePin checked in the tick the manager began in,
// checked again in the next when the cold start's round was still under
// way as that tick began: the reconcile came to an ImagePin that was there
// at the start for the first time after it (lastFirst), or one still
// waits (firstPending). The round's answers serve this check too; asking
// again would send a second request for every tag of the ImagePins
// checked first.
func (t *checkTicks) freshSince(pin *imagesv1alpha1.ImagePin, now time.Time, interval time.Duration) (since time.Time, owed bool) {
	tick := tickStart(now, interval)
	previous := tick.Add(-interval)
	t.mu.Lock()
	if t.started.IsZero() {
		// The first check: this manager is leader and its cache synced.
		t.started = now
	}
	l, ok := t.last[types.NamespacedName{Namespace: pin.Namespace, Name: pin.Name}]
	started, lastFirst, coldOver := t.started, t.lastFirst, t.coldOver
	if !coldOver && started.Before(previous) {
		// Past the tick after the one the manager began in: the cold
		// round's rule is over, and what it kept goes.
		t.endColdLocked()
		coldOver = true
	}
	t.mu.Unlock()
	startedInPrevious := !started.Before(previous) && started.Before(tick)
	if ok && l.uid == pin.UID {
		owed = l.tick.Before(previous) ||
			(l.tick.Equal(previous) && startedInPrevious && !coldOver && t.coldRoundAt(tick, lastFirst, started))
	} else {
		owed = startedInPrevious && pin.CreationTimestamp.Time.Before(started)
	}
	if owed {
		return previous, true
	}
	return tick, false
}

// answerWindow is which answers serve one check's resolutions.
type answerWindow struct {
	// freshSince and interval are the registry.Request's: interval is
	// zero for an owed check, whose freshSince is already a tick back.
	freshSince time.Time
	interval   time.Duration
	// answerBy is half a second after the current tick began.
	answerBy time.Time
}

// window is the answerWindow of a check of pin at now.
func (t *checkTicks) window(pin *imagesv1alpha1.ImagePin, now time.Time, interval time.Duration) answerWindow {
	w := answerWindow{interval: interval}
	var owed bool
	if w.freshSince, owed = t.freshSince(pin, now, interval); owed {
		w.interval = 0
	}
	// The half second counts from the tick, not from each check: the
	// checks that wait for a worker past it take what has come and go on.
	w.answerBy = time.Now().Add(answerWithin - now.Sub(tickStart(now, interval)))
	return w
}

// coldRoundAt says whether the cold round was under way when tick began:
// a first visit was made since, or one is still pending. Once nothing is
// pending, the round is over for good.
func (t *checkTicks) coldRoundAt(tick, lastFirst, started time.Time) bool {
	if !lastFirst.IsZero() && !lastFirst.Before(tick) {
		return true
	}
	if t.firstPending == nil {
		return false
	}
	pending, known := t.firstPending(started)
	if known && !pending {
		t.mu.Lock()
		t.endColdLocked()
		t.mu.Unlock()
	}
	return pending
}

// endColdLocked ends the cold round; t.mu is held.
func (t *checkTicks) endColdLocked() {
	t.coldOver, t.visited = true, nil
}

// visit records that the reconcile came to pin at now, whatever it then
// does with it: the first visit of an ImagePin that was there when the
// manager began is part of the cold round.
func (t *checkTicks) visit(pin *imagesv1alpha1.ImagePin, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.coldOver || (!t.started.IsZero() && !pin.CreationTimestamp.Time.Before(t.started)) {
		return
	}
	key := types.NamespacedName{Namespace: pin.Namespace, Name: pin.Name}
	if uid, ok := t.visited[key]; ok && uid == pin.UID {
		return
	}
	if t.visited == nil {
		t.visited = map[types.NamespacedName]types.UID{}
	}
	t.visited[key] = pin.UID
	if t.lastFirst.IsZero() || now.After(t.lastFirst) {
		t.lastFirst = now
	}
}

// unvisited returns how many of pins (there before the manager began) the
// reconcile has not come to yet.
func (t *checkTicks) unvisited(pins []*imagesv1alpha1.ImagePin) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, p := range pins {
		if uid, ok := t.visited[types.NamespacedName{Namespace: p.Namespace, Name: p.Name}]; !ok || uid != p.UID {
			n++
		}
	}
	return n
}

// checked records that pin was checked at now.
func (t *checkTicks) checked(pin *imagesv1alpha1.ImagePin, now time.Time, interval time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last == nil {
		t.last = map[types.NamespacedName]lastCheck{}
	}
	t.last[types.NamespacedName{Namespace: pin.Namespace, Name: pin.Name}] = lastCheck{uid: pin.UID, tick: tickStart(now, interval)}
}

// forget drops what is remembered of an ImagePin that is gone, moved to
// another shard, suspended or invalid: its next check is a first one.
func (t *checkTicks) forget(key types.NamespacedName) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.last, key)
}

// forgetWhere drops what is remembered of the ImagePins whose keys gone
// says are gone.
func (t *checkTicks) forgetWhere(gone func(types.NamespacedName) bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range t.last {
		if gone(k) {
			delete(t.last, k)
		}
	}
}
