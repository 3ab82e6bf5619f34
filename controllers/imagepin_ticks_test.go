package controllers

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

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
		// firstAfter: another ImagePin's first check, after checked.
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
			ticks := checkTicks{started: at(tc.started), firstPending: func(started time.Time) bool {
				if !started.Equal(at(tc.started)) {
					t.Errorf("asked about first checks since %s, want %s", started, tc.started)
				}
				return tc.pending
			}}
			if tc.checked != "" {
				ticks.checked(pin("a", "09:00:00"), at(tc.checked), interval)
			}
			if tc.firstAfter != "" {
				other := pin("b", "09:00:00")
				other.Name = "other"
				ticks.checked(other, at(tc.firstAfter), interval)
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
// there before it began checking and not suspended, has not been checked
// by it; others (another shard's, suspended ones) do not hold it open.
func TestFirstChecksPendingCountsTheShardsUncheckedImagePins(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	const shard = "first-checks"
	inShard := func(p *imagesv1alpha1.ImagePin) { p.Labels = map[string]string{imagesv1alpha1.ShardLabel: shard} }
	unchecked := imagePin(ns, "unchecked", selecting("app", "a"), inShard)
	suspended := imagePin(ns, "suspended", selecting("app", "b"), inShard, func(p *imagesv1alpha1.ImagePin) { p.Spec.Suspend = true })
	other := imagePin(ns, "other-shard", selecting("app", "c"))
	other.Labels = map[string]string{imagesv1alpha1.ShardLabel: "elsewhere"}
	create(t, unchecked, suspended, other)
	started := time.Now().Add(2 * time.Second) // after their creation timestamps (whole seconds)

	r := &ImagePinReconciler{Client: k8s, Shard: shard}
	if !r.firstChecksPending(context.Background(), started) {
		t.Fatal("an unchecked ImagePin of the shard does not hold the cold round open")
	}
	r.ticks.checked(unchecked, started.Add(time.Second), time.Minute)
	if r.firstChecksPending(context.Background(), started) {
		t.Fatal("once it is checked, a suspended ImagePin or another shard's holds the cold round open")
	}
	// A manager that began before they were created owes them no first
	// check of its cold start.
	if fresh := (&ImagePinReconciler{Client: k8s, Shard: shard}); fresh.firstChecksPending(context.Background(), started.Add(-time.Hour)) {
		t.Fatal("ImagePins created after the manager began hold the cold round open")
	}
}
