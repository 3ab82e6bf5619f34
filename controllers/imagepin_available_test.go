package controllers

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
)

// historyIs checks that the history of image (of the workload web's
// container app) in got lists want, newest first, and returns it.
func historyIs(got *imagesv1alpha1.ImagePin, image string, want ...string) ([]imagesv1alpha1.DigestRecord, error) {
	img, _, err := entryFor(got, image, "web", "app")
	if err != nil {
		return nil, err
	}
	var ds []string
	for _, h := range img.History {
		ds = append(ds, string(h.Digest))
	}
	if fmt.Sprint(ds) != fmt.Sprint(want) {
		return nil, fmt.Errorf("history %v, want %v", ds, want)
	}
	return img.History, nil
}

// availableIs checks that a history entry was checked and found as want.
func availableIs(h imagesv1alpha1.DigestRecord, want bool) error {
	if h.Available == nil || *h.Available != want || h.CheckedAt == nil {
		return fmt.Errorf("history entry %s: available %v checked %v, want %v", h.Digest, h.Available, h.CheckedAt, want)
	}
	return nil
}

// Issue 20: :v1 is pushed twice and the registry's garbage collection
// deletes the first digest. The ImagePin says so in history, in
// RollbackReady, as DigestGone drift of the pods that still run it, in an
// event and a metric; a rollback override to it is not written.
func TestACollectedDigestIsReportedAndNotRolledBackTo(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("gc/app:v1")
	a := reg.Push(t, "gc/app:v1")
	dep := deploymentRunning(t, ns, "web", image, podRun{"node-a", a}, podRun{"node-b", a})
	pin := observePin(ns, "web")
	create(t, pin)

	// The tag is pushed again: both digests are in history, both there.
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		_, err := historyIs(got, image, a)
		return err
	})
	b := reg.Push(t, "gc/app:v1")
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		h, err := historyIs(got, image, b, a)
		if err != nil {
			return err
		}
		for _, e := range h {
			if err := availableIs(e, true); err != nil {
				return err
			}
		}
		return conditionIs(got, imagesv1alpha1.ConditionRollbackReady, metav1.ConditionTrue, imagesv1alpha1.ReasonDigestsAvailable)
	})

	// Garbage collection deletes the untagged first digest, and a
	// rollback override to it is asked for. An override is checked before
	// it is written: it is refused, the Deployment keeps naming what it
	// names (not a, and not pinned to b in its place), and the check that
	// found it gone says so everywhere.
	reg.Delete(t, "gc/app", a)
	got, err := getPin(pin)
	if err != nil {
		t.Fatal(err)
	}
	got.Spec.Mode = imagesv1alpha1.ModePin
	got.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: image, Digest: imagesv1alpha1.Digest(a)}}
	if err := k8s.Update(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		if err := conditionSays(got, imagesv1alpha1.ConditionReady, metav1.ConditionFalse, imagesv1alpha1.ReasonOverrideDigestGone, "spec.overrides[0].digest", a); err != nil {
			return err
		}
		h, err := historyIs(got, image, b, a)
		if err != nil {
			return err
		}
		if err := availableIs(h[0], true); err != nil {
			return err
		}
		if err := availableIs(h[1], false); err != nil {
			return err
		}
		if err := conditionSays(got, imagesv1alpha1.ConditionRollbackReady, metav1.ConditionFalse, imagesv1alpha1.ReasonDigestsGone, a); err != nil {
			return err
		}
		// The pods run a on: the next pod will not pull it.
		_, w, err := entryFor(got, image, "web", "app")
		if err != nil {
			return err
		}
		if err := driftIs(w, imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftTagMoved, imagesv1alpha1.DriftDigestGone); err != nil {
			return err
		}
		return conditionIs(got, imagesv1alpha1.ConditionDrifted, metav1.ConditionTrue, string(imagesv1alpha1.DriftDigestGone))
	})
	// Ready stays False from one check to the next: its transition time
	// does not move (it did when Ready was set True, then False, by each
	// check, and every check wrote the status).
	first, err := getPin(pin)
	if err != nil {
		t.Fatal(err)
	}
	since := meta.FindStatusCondition(first.Status.Conditions, imagesv1alpha1.ConditionReady).LastTransitionTime
	eventually(t, func() error {
		got, err := getPin(pin)
		if err != nil {
			return err
		}
		if !got.Status.LastCheckTime.After(first.Status.LastCheckTime.Time) {
			return fmt.Errorf("no later check yet (last %s)", got.Status.LastCheckTime)
		}
		if c := meta.FindStatusCondition(got.Status.Conditions, imagesv1alpha1.ConditionReady); !c.LastTransitionTime.Equal(&since) {
			t.Fatalf("Ready's transition time moved from %s to %s with no change", since, c.LastTransitionTime)
		}
		return nil
	})
	if n := testutil.ToFloat64(digestsUnavailable.WithLabelValues(ns, pin.Name)); n != 1 {
		t.Errorf("imagepin_digests_unavailable = %v, want 1", n)
	}
	eventually(t, func() error {
		var evs eventsv1.EventList
		if err := k8s.List(context.Background(), &evs, client.InNamespace(ns)); err != nil {
			return err
		}
		// One event says both: history's rollback target, and the pods
		// that run it.
		var notes []string
		for _, e := range evs.Items {
			if e.Reason == EventDigestGone && e.Regarding.Name == pin.Name {
				notes = append(notes, e.Note)
			}
		}
		if len(notes) != 1 || !strings.Contains(notes[0], a) || !strings.Contains(notes[0], "rollback") || !strings.Contains(notes[0], "new pod will fail to pull") {
			return fmt.Errorf("DigestGone events %q, want one naming %s as a rollback target and as what the pods run", notes, a)
		}
		return nil
	})

	var now appsv1.Deployment
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(dep), &now); err != nil {
		t.Fatal(err)
	}
	if img := now.Spec.Template.Spec.Containers[0].Image; img != image || now.Generation != dep.Generation {
		t.Fatalf("the Deployment was written: image %s generation %d, want %s at %d", img, now.Generation, image, dep.Generation)
	}
}

// Without an override, a digest found present is asked about again on the
// spec.retention.checkInterval tick, not before: its deletion shows in the
// next tick, once the answer the check asked for in the background is in
// (the check does not wait for it).
func TestAPresentDigestIsCheckedAgainOnTheRetentionTick(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("gc/tick:v1")
	a := reg.Push(t, "gc/tick:v1")
	deploymentRunning(t, ns, "web", image, podRun{"node-a", a})
	pin := observePin(ns, "web")
	create(t, pin)
	// historyAvailable: the history is want, and its last entry available.
	historyAvailable := func(want ...string) {
		t.Helper()
		whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
			h, err := historyIs(got, image, want...)
			if err != nil {
				return err
			}
			return availableIs(h[len(h)-1], true)
		})
	}
	historyAvailable(a)
	b := reg.Push(t, "gc/tick:v1")
	historyAvailable(b, a)
	reg.Delete(t, "gc/tick", a)

	availableOf := func(now time.Time) *bool {
		t.Helper()
		stored, err := getPin(pin)
		if err != nil {
			t.Fatal(err)
		}
		status := stored.Status.DeepCopy()
		if _, err := directReconciler(now).reconcile(context.Background(), stored, status); err != nil {
			t.Fatal(err)
		}
		img, _, err := entryFor(&imagesv1alpha1.ImagePin{Status: *status}, image, "web", "app")
		if err != nil {
			t.Fatal(err)
		}
		return img.History[1].Available
	}
	now := time.Now()
	if got := availableOf(now); got == nil || !*got {
		t.Fatalf("within the retention tick a is %v; want the answer of the tick (available), not a new HEAD", got)
	}
	// A whole interval later is the digest's next tick, wherever its
	// ticks fall (each digest's grid is offset by its hash).
	next := now.Add(selection.DefaultRetentionCheck)
	eventually(t, func() error {
		if got := availableOf(next); got == nil || *got {
			return fmt.Errorf("in the next retention tick a is %v, want gone", got)
		}
		return nil
	})
}

// A restarted manager takes the verdicts its status recorded in this
// retention tick as this tick's: it does not ask the registry about every
// digest of history again (N HEADs per restart).
func TestARestartedManagerDoesNotAskAgainWhatItsStatusRecordedThisTick(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("gc/restart:v1")
	a := reg.Push(t, "gc/restart:v1")
	deploymentRunning(t, ns, "web", image, podRun{"node-a", a})
	pin := observePin(ns, "web")
	create(t, pin)
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		_, err := historyIs(got, image, a)
		return err
	})
	b := reg.Push(t, "gc/restart:v1")
	var stored *imagesv1alpha1.ImagePin
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		h, err := historyIs(got, image, b, a)
		if err != nil {
			return err
		}
		if err := availableIs(h[1], true); err != nil {
			return err
		}
		stored = got
		return nil
	})

	// The restart: a resolver that knows nothing, counting the HEADs of a
	// by digest.
	var heads atomic.Int32
	t.Cleanup(reg.Route("gc/restart", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && strings.HasSuffix(r.URL.Path, "/manifests/"+a) {
			heads.Add(1)
		}
		reg.Backend().ServeHTTP(w, r)
	})))
	fresh, err := registry.New(registry.Options{InsecureRegistries: []string{reg.Host}, Timeout: 3 * time.Second, MaxStale: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	restarted := directReconciler(time.Now())
	restarted.Resolver = fresh
	status := stored.Status.DeepCopy()
	if _, err := restarted.reconcile(context.Background(), stored, status); err != nil {
		t.Fatal(err)
	}
	restarted.asking.Wait()
	if n := heads.Load(); n != 0 {
		t.Fatalf("the restarted manager asked about %s %d times; its status recorded it this tick", a, n)
	}
	img, _, err := entryFor(&imagesv1alpha1.ImagePin{Status: *status}, image, "web", "app")
	if err != nil {
		t.Fatal(err)
	}
	if err := availableIs(img.History[1], true); err != nil {
		t.Fatal(err)
	}
}

// A check that starts from a status older than the stored one (a cache
// that has not seen the last write yet: a workload's event can come
// first) does not write over it: its history would be made anew, with a
// new firstSeen. The write fails with a conflict, and the check is
// retried from the stored status.
func TestACheckFromAStaleStatusDoesNotOverwriteHistory(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("stale/app:v1")
	a := reg.Push(t, "stale/app:v1")
	deploymentRunning(t, ns, "web", image, podRun{"node-a", a})
	pin := observePin(ns, "web")
	create(t, pin)
	stale := pin.DeepCopy() // as created: no status yet
	var firstSeen metav1.Time
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		h, err := historyIs(got, image, a)
		if err != nil {
			return err
		}
		firstSeen = h[0].FirstSeen
		return nil
	})

	r := directReconciler(time.Now().Add(5 * time.Second))
	status := stale.Status.DeepCopy()
	if _, err := r.reconcile(context.Background(), stale, status); err != nil {
		t.Fatal(err)
	}
	if err := r.patchStatus(context.Background(), stale, status); !apierrors.IsConflict(err) {
		t.Fatalf("a status written over a newer one: %v, want a conflict", err)
	}
	got, err := getPin(pin)
	if err != nil {
		t.Fatal(err)
	}
	h, err := historyIs(got, image, a)
	if err != nil {
		t.Fatal(err)
	}
	if !h[0].FirstSeen.Equal(&firstSeen) {
		t.Fatalf("history's firstSeen moved from %s to %s", firstSeen, h[0].FirstSeen)
	}
}
