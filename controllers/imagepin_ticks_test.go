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
		{name: "checked in the previous tick: this tick's check asks anew", started: "09:00:00", checked: "10:00:30", pin: pin("a", "09:00:00"), now: "10:01:10", since: "10:01:00"},
		{name: "checked in this tick already", started: "09:00:00", checked: "10:01:02", pin: pin("a", "09:00:00"), now: "10:01:40", since: "10:01:00"},
		{name: "missed the previous tick, waiting behind others: owed", started: "09:00:00", checked: "09:59:50", pin: pin("a", "09:00:00"), now: "10:01:10", since: "10:00:00", owed: true},
		{name: "recreated: the check of its namesake does not count", started: "09:00:00", checked: "10:00:30", pin: pin("b", "10:00:55"), now: "10:01:10", since: "10:01:00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ticks checkTicks
			ticks.start(at(tc.started))
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

func TestAForgottenImagePinIsNewAgain(t *testing.T) {
	var ticks checkTicks
	start, _ := time.Parse(time.TimeOnly, "10:00:05")
	ticks.start(start)
	p := &imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web", UID: "a", CreationTimestamp: metav1.NewTime(start.Add(-time.Hour))}}
	ticks.checked(p, start.Add(10*time.Second), time.Minute)
	ticks.forget(types.NamespacedName{Namespace: "prod", Name: "web"})
	if len(ticks.last) != 0 {
		t.Fatalf("forget kept %v", ticks.last)
	}
}
