package controllers

import (
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
	}{
		{name: "first check, in the tick the manager started in", started: "10:00:05", pin: pin("a", "09:00:00"), now: "10:00:40", since: "10:00:00"},
		{name: "first check after a tick the manager spent on others: owed", started: "10:00:05", pin: pin("a", "09:00:00"), now: "10:01:10", since: "10:00:00", owed: true},
		{name: "a new ImagePin owes nothing", started: "10:00:05", pin: pin("a", "10:00:50"), now: "10:01:10", since: "10:01:00"},
		{name: "first check long after the manager began (moved from another shard, resumed): owes nothing", started: "09:00:05", pin: pin("a", "08:00:00"), now: "10:01:10", since: "10:01:00"},
		{name: "checked in the previous tick: this tick's check asks anew", started: "09:00:00", checked: "10:00:30", pin: pin("a", "09:00:00"), now: "10:01:10", since: "10:01:00"},
		{name: "checked in this tick already", started: "09:00:00", checked: "10:01:02", pin: pin("a", "09:00:00"), now: "10:01:40", since: "10:01:00"},
		{name: "missed the previous tick, waiting behind others: owed", started: "09:00:00", checked: "09:59:50", pin: pin("a", "09:00:00"), now: "10:01:10", since: "10:00:00", owed: true},
		{name: "recreated: the check of its namesake does not count", started: "09:00:00", checked: "10:00:30", pin: pin("b", "10:00:55"), now: "10:01:10", since: "10:01:00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ticks := checkTicks{started: at(tc.started)}
			if tc.checked != "" {
				ticks.checked(pin("a", "09:00:00"), at(tc.checked), interval)
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
