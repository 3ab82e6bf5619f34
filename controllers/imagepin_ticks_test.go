package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

func TestACheckOwedFromThePreviousTickTakesThatTicksAnswers(t *testing.T) {
	const interval = time.Minute
	at := func(s string) time.Time {
		v, err := time.Parse(time.TimeOnly, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	pin := func(uid types.UID, created string) *imagesv1alpha1.ImagePin {
		return &imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{
			Namespace: "prod", Name: "web", UID: uid, CreationTimestamp: metav1.NewTime(at(created)),
		}}
	}
	tests := []struct {
		name    string
		started string
		// checked: when the ImagePin (UID "a") was last checked, if it was.
		checked string
		pin     *imagesv1alpha1.ImagePin
		now     string
		since   string
		owed    bool
		// pending: ImagePins there when the manager began wait for
		// their first check.
		pending bool
		// firstAfter: the reconcile's first visit of another ImagePin,
		// after checked.
		firstAfter string
	}{
		{name: "first check, in the tick the manager started in", started: "10:00:05", pin: pin("a", "09:00:00"), now: "10:00:40", since: "10:00:00"},
		{name: "first check after a tick the manager spent on others: owed", started: "10:00:05", pin: pin("a", "09:00:00"), now: "10:01:10", since: "10:00:00", owed: true},
		{name: "a new ImagePin owes nothing", started: "10:00:05", pin: pin("a", "10:00:50"), now: "10:01:10", since: "10:01:00"},
		{name: "first check long after the manager began (moved from another shard, resumed): owes nothing", started: "09:00:05", pin: pin("a", "08:00:00"), now: "10:01:10", since: "10:01:00"},
		{name: "checked in the previous tick: this tick's check asks anew", started: "09:00:00", checked: "10:00:30", pin: pin("a", "09:00:00"), now: "10:01:10", since: "10:01:00"},
		{name: "checked in this tick already", started: "09:00:00", checked: "10:01:02", pin: pin("a", "09:00:00"), now: "10:01:40", since: "10:01:00"},
		{name: "missed the previous tick, waiting behind others: owed", started: "09:00:00", checked: "09:59:50", pin: pin("a", "09:00:00"), now: "10:01:10", since: "10:00:00", owed: true},
		{name: "checked in the tick the manager began in, again while the first checks of others go on: the cold round outlasted the tick", started: "10:00:05", checked: "10:00:30", pin: pin("a", "09:00:00"), now: "10:01:10", since: "10:00:00", owed: true, pending: true},
		{name: "checked in the tick the manager began in, again once every first check is done: asks anew", started: "10:00:05", checked: "10:00:30", pin: pin("a", "09:00:00"), now: "10:01:10", since: "10:01:00"},
		{name: "checked in the tick the manager began in, again after the first checks of others ended, which went on past the tick: the cold round outlasted the tick", started: "10:00:05", checked: "10:00:30", firstAfter: "10:01:20", pin: pin("a", "09:00:00"), now: "10:01:25", since: "10:00:00", owed: true},
		{name: "checked in the tick the manager began in, again after the first checks of others ended before the tick: asks anew", started: "10:00:05", checked: "10:00:30", firstAfter: "10:00:50", pin: pin("a", "09:00:00"), now: "10:01:25", since: "10:01:00"},
		{name: "first checks pending long after the manager began (a resumed ImagePin): asks anew", started: "09:00:00", checked: "10:00:30", pin: pin("a", "09:00:00"), now: "10:01:10", since: "10:01:00", pending: true},
		{name: "recreated: the check of its namesake does not count", started: "09:00:00", checked: "10:00:30", pin: pin("b", "10:00:55"), now: "10:01:10", since: "10:01:00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ticks := checkTicks{started: at(tc.started), firstPending: func(started time.Time) (bool, bool) {
				if !started.Equal(at(tc.started)) {
					t.Errorf("asked about first checks since %s, want %s", started, tc.started)
				}
				return tc.pending, true
			}}
			if tc.checked != "" {
				ticks.checked(pin("a", "09:00:00"), at(tc.checked), interval)
			}
			if tc.firstAfter != "" {
				other := pin("b", "09:00:00")
				other.Name = "other"
				ticks.visit(other, at(tc.firstAfter))
			}
			since, owed := ticks.freshSince(tc.pin, at(tc.now), interval)
			if !since.Equal(at(tc.since)) || owed != tc.owed {
				t.Fatalf("freshSince = %s, owed %v; want %s, owed %v", since.Format(time.TimeOnly), owed, tc.since, tc.owed)
			}
		})
	}
}

func TestTheFirstCheckStartsTheClock(t *testing.T) {
	var ticks checkTicks
	first, _ := time.Parse(time.TimeOnly, "10:00:40")
	p := &imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web", UID: "a", CreationTimestamp: metav1.NewTime(first.Add(-time.Hour))}}
	// A standby set up hours before it leads begins at its first check.
	if since, owed := ticks.freshSince(p, first, time.Minute); owed || !since.Equal(tickStart(first, time.Minute)) {
		t.Fatalf("first check: since %s, owed %v", since.Format(time.TimeOnly), owed)
	}
	if !ticks.started.Equal(first) {
		t.Fatalf("started = %s, want the first check's %s", ticks.started, first)
	}
}

func TestAForgottenImagePinIsUncheckedAgain(t *testing.T) {
	start, _ := time.Parse(time.TimeOnly, "10:00:05")
	ticks := checkTicks{started: start}
	p := &imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web", UID: "a", CreationTimestamp: metav1.NewTime(start.Add(-time.Hour))}}
	ticks.checked(p, start.Add(10*time.Second), time.Minute)
	// Suspended (forgotten), resumed two ticks later: not owed, as a
	// stale record would have it.
	ticks.forget(types.NamespacedName{Namespace: "prod", Name: "web"})
	now := start.Add(3 * time.Minute)
	if since, owed := ticks.freshSince(p, now, time.Minute); owed || !since.Equal(tickStart(now, time.Minute)) {
		t.Fatalf("after forget: since %s, owed %v", since.Format(time.TimeOnly), owed)
	}
}

// The cold round is under way while an ImagePin of this manager's shard,
// there before it began checking and not suspended, has not been come to
// by its reconcile; others (another shard's, suspended ones) do not hold
// it open, nor does one the reconcile came to and could not check (an
// invalid spec: it will not be checked before it changes).
func TestFirstChecksPendingCountsTheShardsUnvisitedImagePins(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	const shard = "first-checks"
	inShard := func(p *imagesv1alpha1.ImagePin) { p.Labels = map[string]string{imagesv1alpha1.ShardLabel: shard} }
	unchecked := imagePin(ns, "unchecked", selecting("app", "a"), inShard)
	invalid := imagePin(ns, "invalid", inShard, func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Selector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn}}}
	})
	suspended := imagePin(ns, "suspended", selecting("app", "b"), inShard, func(p *imagesv1alpha1.ImagePin) { p.Spec.Suspend = true })
	other := imagePin(ns, "other-shard", selecting("app", "c"))
	other.Labels = map[string]string{imagesv1alpha1.ShardLabel: "elsewhere"}
	create(t, unchecked, invalid, suspended, other)
	started := time.Now().Add(2 * time.Second) // after their creation timestamps (whole seconds)

	r := directReconciler(started)
	r.Shard = shard
	r.ticks.started = started
	pending := func() bool {
		t.Helper()
		p, err := r.firstChecksPending(context.Background(), started)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	eventually(t, func() error { // the cache holds all four
		var l imagesv1alpha1.ImagePinList
		if err := cached.List(context.Background(), &l, client.InNamespace(ns)); err != nil || len(l.Items) != 4 {
			return fmt.Errorf("%d ImagePins cached, %w", len(l.Items), err)
		}
		return nil
	})
	if !pending() {
		t.Fatal("ImagePins of the shard the reconcile has not come to do not hold the cold round open")
	}
	// The reconcile comes to the invalid one: it is not checked, and no
	// longer pending.
	reconcileOnce(t, r, invalid)
	r.ticks.mu.Lock()
	_, checked := r.ticks.last[client.ObjectKeyFromObject(invalid)]
	r.ticks.mu.Unlock()
	if checked {
		t.Fatal("an invalid spec was checked")
	}
	r.ticks.visit(mustGet(t, unchecked), started.Add(time.Second))
	if pending() {
		t.Fatal("once the reconcile has come to them, an invalid, a suspended or another shard's ImagePin holds the cold round open")
	}
	// A manager that began before they were created owes them no first
	// visit of its cold start.
	fresh := directReconciler(started)
	fresh.Shard = shard
	if p, err := fresh.firstChecksPending(context.Background(), started.Add(-time.Hour)); err != nil || p {
		t.Fatalf("ImagePins created after the manager began hold the cold round open (%v)", err)
	}
}

// mustGet reads p as stored.
func mustGet(t *testing.T, p *imagesv1alpha1.ImagePin) *imagesv1alpha1.ImagePin {
	t.Helper()
	got, err := getPin(p)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// The cold round ends for good once nothing is pending, or past the tick
// after the manager began: what it kept goes, and later first visits (a
// resumed ImagePin) do not move it.
func TestTheColdRoundEndsForGood(t *testing.T) {
	start, _ := time.Parse(time.TimeOnly, "10:00:05")
	pending := true
	ticks := checkTicks{started: start, firstPending: func(time.Time) (bool, bool) { return pending, true }}
	a := &imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "a", UID: "a", CreationTimestamp: metav1.NewTime(start.Add(-time.Hour))}}
	ticks.visit(a, start.Add(time.Second))
	ticks.checked(a, start.Add(time.Second), time.Minute)
	now := start.Add(65 * time.Second) // 10:01:10, the next tick
	if _, owed := ticks.freshSince(a, now, time.Minute); !owed {
		t.Fatal("while first visits are pending, a recheck in the next tick does not take the cold round's answers")
	}
	pending = false
	if _, owed := ticks.freshSince(a, now, time.Minute); owed {
		t.Fatal("with nothing pending, a recheck takes the cold round's answers")
	}
	if !ticks.coldOver || ticks.visited != nil {
		t.Fatalf("the cold round is not over once nothing is pending (over %v, %d visited kept)", ticks.coldOver, len(ticks.visited))
	}
	pending = true // a resumed ImagePin, say: no longer part of the round
	b := a.DeepCopy()
	b.Name, b.UID = "b", "b"
	ticks.visit(b, now)
	if _, owed := ticks.freshSince(a, now, time.Minute); owed {
		t.Fatal("after the cold round ended, a later first visit made a recheck take its answers")
	}
}
