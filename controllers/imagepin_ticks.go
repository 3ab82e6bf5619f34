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
	// firstPending, if set, says whether an ImagePin that was there when
	// this manager began checking has not had its first check yet: the
	// cold start's round of checks is still under way. lastFirst is when
	// the last such first check was made: one made after a tick began
	// says the round was under way at that tick.
	firstPending func(started time.Time) bool
	lastFirst    time.Time
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
// checked again in the next when the cold start's first checks of other
// ImagePins were still under way as it began (one was made after it,
// lastFirst, or one is still pending, firstPending): the cold round
// outlasted the tick, and its answers serve this check too. Asking again would send
// a second request for every tag of the ImagePins checked first.
func (t *checkTicks) freshSince(pin *imagesv1alpha1.ImagePin, now time.Time, interval time.Duration) (since time.Time, owed bool) {
	tick := tickStart(now, interval)
	previous := tick.Add(-interval)
	t.mu.Lock()
	if t.started.IsZero() {
		// The first check: this manager is leader and its cache synced.
		t.started = now
	}
	l, ok := t.last[types.NamespacedName{Namespace: pin.Namespace, Name: pin.Name}]
	started, lastFirst := t.started, t.lastFirst
	t.mu.Unlock()
	startedInPrevious := !started.Before(previous) && started.Before(tick)
	if ok && l.uid == pin.UID {
		owed = l.tick.Before(previous) ||
			(l.tick.Equal(previous) && startedInPrevious &&
				((!lastFirst.IsZero() && !lastFirst.Before(tick)) || (t.firstPending != nil && t.firstPending(started))))
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

// checked records that pin was checked at now.
func (t *checkTicks) checked(pin *imagesv1alpha1.ImagePin, now time.Time, interval time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last == nil {
		t.last = map[types.NamespacedName]lastCheck{}
	}
	key := types.NamespacedName{Namespace: pin.Namespace, Name: pin.Name}
	if l, ok := t.last[key]; (!ok || l.uid != pin.UID) && pin.CreationTimestamp.Time.Before(t.started) && (t.lastFirst.IsZero() || now.After(t.lastFirst)) {
		t.lastFirst = now
	}
	t.last[key] = lastCheck{uid: pin.UID, tick: tickStart(now, interval)}
}

// hasChecked says whether this manager has checked the ImagePin key with
// uid since it was last forgotten.
func (t *checkTicks) hasChecked(key types.NamespacedName, uid types.UID) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	l, ok := t.last[key]
	return ok && l.uid == uid
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
