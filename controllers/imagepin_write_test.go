package controllers

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
)

func TestPlanWrites(t *testing.T) {
	const img = "reg.io/app:v1"
	tagOnly := func(resolved string) containerObs {
		return containerObs{kind: imagesv1alpha1.KindDeployment, workload: "web", place: place{container: "app"}, image: img, hasTag: true,
			result: registry.Result{Digest: resolved}}
	}
	pinnedTo := func(pinned, resolved string) containerObs {
		c := tagOnly(resolved)
		c.pinned = pinned
		return c
	}
	failing := func(pinned string) containerObs {
		c := pinnedTo(pinned, dg("b"))
		c.err = errors.New("registry down")
		c.result.Stale = true
		return c
	}
	seenAgo := func(d time.Duration) map[string]time.Time { return map[string]time.Time{img: t0.Add(-d)} }

	tests := []struct {
		name      string
		mode      imagesv1alpha1.Mode
		c         containerObs
		minAge    time.Duration
		firstSeen map[string]time.Time
		overrides map[string]string
		// gone: digests the registry said it no longer has.
		gone []string
		want string
		// due is how long until a waiting Follow falls due, if one waits.
		due time.Duration
	}{
		{name: "Observe never writes", mode: imagesv1alpha1.ModeObserve, c: tagOnly(dg("a")), want: "[]"},
		{name: "Pin pins a tag", mode: imagesv1alpha1.ModePin, c: tagOnly(dg("a")), want: fmt.Sprintf("[Deployment/web app %s -> %s@%s (Pin)]", img, img, dg("a"))},
		{name: "Pin holds a pinned image when the tag moves", mode: imagesv1alpha1.ModePin, c: pinnedTo(dg("a"), dg("b")), firstSeen: seenAgo(time.Hour), want: "[]"},
		{name: "Follow moves a pinned image after minAge", mode: imagesv1alpha1.ModeFollow, c: pinnedTo(dg("a"), dg("b")), minAge: time.Minute, firstSeen: seenAgo(time.Minute),
			want: fmt.Sprintf("[Deployment/web app %s@%s -> %s@%s (Follow)]", img, dg("a"), img, dg("b"))},
		{name: "Follow waits for minAge", mode: imagesv1alpha1.ModeFollow, c: pinnedTo(dg("a"), dg("b")), minAge: time.Minute, firstSeen: seenAgo(59 * time.Second), want: "[]", due: time.Second},
		{name: "Follow without history waits", mode: imagesv1alpha1.ModeFollow, c: pinnedTo(dg("a"), dg("b")), want: "[]"},
		{name: "Follow does nothing when in step", mode: imagesv1alpha1.ModeFollow, c: pinnedTo(dg("a"), dg("a")), firstSeen: seenAgo(time.Hour), want: "[]"},
		{name: "a stale digest is never written", mode: imagesv1alpha1.ModeFollow, c: failing(dg("a")), firstSeen: seenAgo(time.Hour), want: "[]"},
		{name: "nor pinned from", mode: imagesv1alpha1.ModePin, c: failing(""), want: "[]"},
		// Issue 19 item 5: an answer given while this tick's was on its way
		// is reported, never written (the check after its answer writes).
		{name: "a Behind answer is not pinned from", mode: imagesv1alpha1.ModePin, c: func() containerObs { c := tagOnly(dg("a")); c.result.Behind = true; return c }(), want: "[]"},
		{name: "nor followed", mode: imagesv1alpha1.ModeFollow, c: func() containerObs { c := pinnedTo(dg("b"), dg("a")); c.result.Behind = true; return c }(), firstSeen: seenAgo(time.Hour), want: "[]"},
		{name: "override rolls back", mode: imagesv1alpha1.ModeFollow, c: pinnedTo(dg("b"), dg("b")), overrides: map[string]string{img: dg("a")},
			want: fmt.Sprintf("[Deployment/web app %s@%s -> %s@%s (Override)]", img, dg("b"), img, dg("a"))},
		// Issue 20 item 3: an override to a digest the registry no longer
		// has is not written; the workload runs what it runs (and is not
		// pinned to the tag's digest instead).
		{name: "an override to a collected digest is not written", mode: imagesv1alpha1.ModeFollow, c: pinnedTo(dg("b"), dg("b")), overrides: map[string]string{img: dg("a")},
			gone: []string{dg("a")}, want: "[]"},
		{name: "nor pinned around", mode: imagesv1alpha1.ModePin, c: tagOnly(dg("b")), overrides: map[string]string{img: dg("a")}, gone: []string{dg("a")}, want: "[]"},
		{name: "an override to a present digest still rolls back", mode: imagesv1alpha1.ModeFollow, c: pinnedTo(dg("b"), dg("b")), overrides: map[string]string{img: dg("a")},
			gone: []string{dg("c")}, want: fmt.Sprintf("[Deployment/web app %s@%s -> %s@%s (Override)]", img, dg("b"), img, dg("a"))},
		{name: "override already in place", mode: imagesv1alpha1.ModePin, c: pinnedTo(dg("a"), dg("b")), overrides: map[string]string{img: dg("a")}, want: "[]"},
		{name: "digest-only reference is left alone", mode: imagesv1alpha1.ModePin, c: containerObs{kind: imagesv1alpha1.KindDeployment, workload: "web", place: place{container: "app"}, image: "reg.io/app", pinned: dg("a")}, want: "[]"},
		{name: "an override that is not a sha256 digest is never written", mode: imagesv1alpha1.ModePin, c: tagOnly(dg("a")), overrides: map[string]string{img: "sha256:abc"}, want: "[]"},
		{name: "an image that is not a valid reference is never written", mode: imagesv1alpha1.ModePin, c: func() containerObs { c := tagOnly(dg("a")); c.image = "reg.io/App:v1"; return c }(), want: "[]"},
		{name: "a registry port and an untagged image are kept as written", mode: imagesv1alpha1.ModePin, c: func() containerObs { c := tagOnly(dg("a")); c.image = "localhost:5000/team/app"; return c }(),
			want: fmt.Sprintf("[Deployment/web app localhost:5000/team/app -> localhost:5000/team/app:latest@%s (Pin)]", dg("a"))},
		// Issue 13 item 4: an untagged image is pinned with the tag it
		// implies, and Follow keeps following that tag.
		{name: "an untagged image keeps its tag to follow", mode: imagesv1alpha1.ModeFollow, c: func() containerObs {
			c := pinnedTo(dg("a"), dg("b"))
			c.image = selection.ImageKey("reg.io/app")
			return c
		}(), firstSeen: map[string]time.Time{"reg.io/app:latest": t0.Add(-time.Hour)},
			want: fmt.Sprintf("[Deployment/web app reg.io/app:latest@%s -> reg.io/app:latest@%s (Follow)]", dg("a"), dg("b"))},
		{name: "a Job is reported, not written", mode: imagesv1alpha1.ModePin, c: func() containerObs { c := tagOnly(dg("a")); c.kind = imagesv1alpha1.KindJob; return c }(), want: "[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obs := obsOf(tt.c)
			obs.available = availability{}
			for _, d := range tt.gone {
				obs.available[digestOf{img, d}] = registry.Availability{CheckedAt: t0}
			}
			plan, followDue := planWrites(planInput{
				mode: tt.mode, minAge: tt.minAge, overrides: tt.overrides, now: t0,
				obs: obs, firstSeen: tt.firstSeen,
			})
			var got []string
			for _, w := range plan {
				for _, iw := range w.writes {
					got = append(got, fmt.Sprintf("%s/%s %s %s -> %s (%s)", w.kind, w.name, iw.container, iw.from, iw.to, iw.reason))
				}
			}
			if fmt.Sprint(got) != tt.want {
				t.Errorf("plan = %v\nwant   %s", got, tt.want)
			}
			var due time.Duration
			if !followDue.IsZero() {
				due = followDue.Sub(t0)
			}
			if due != tt.due {
				t.Errorf("a waiting Follow falls due in %s, want %s", due, tt.due)
			}
		})
	}
}

func TestOwnsAnImage(t *testing.T) {
	raw := []byte(`{"f:spec":{"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"app\"}":{".":{},"f:image":{},"f:name":{}}}}}}}`)
	if !ownsAnImage(raw, []imageWrite{{place: place{container: "app"}}}) {
		t.Error("the manager that set app's image was not found")
	}
	if ownsAnImage(raw, []imageWrite{{place: place{container: "proxy"}}}) {
		t.Error("a manager of another container's image was named")
	}
	if ownsAnImage([]byte(`{"f:metadata":{"f:labels":{}}}`), []imageWrite{{place: place{container: "app"}}}) {
		t.Error("a manager that owns no image was named")
	}
}

// Issue 13 item 3: a write tests the image where the check read it, so a
// workload changed since is never overwritten, and a write leaves imagepin
// owning no field of the workload.
func TestWriteTestsWhatItReadAndOwnsNothing(t *testing.T) {
	ns := namespace(t)
	d := deployment(ns, "web", withLabels("app", "web"), withImage("app", "reg.io/app:v2"))
	create(t, d)
	r := &ImagePinReconciler{Client: k8s, APIReader: k8s}
	w := workloadWrite{kind: imagesv1alpha1.KindDeployment, name: "web", uid: d.UID, writes: []imageWrite{{
		place: place{container: "app", specPointer: "/spec/template/spec", index: 0}, stored: "reg.io/app:v1", to: "reg.io/app:v1@" + dg("a"),
	}}}
	// The check read :v1; someone released :v2 since.
	if _, err := r.writeImages(context.Background(), ns, w); err == nil {
		t.Fatal("a write over a changed image went through")
	}
	if r.stillAsRead(context.Background(), ns, w) {
		t.Fatal("stillAsRead says the changed workload is as read")
	}
	var got appsv1.Deployment
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(d), &got); err != nil {
		t.Fatal(err)
	}
	if img := got.Spec.Template.Spec.Containers[0].Image; img != "reg.io/app:v2" {
		t.Fatalf("image %s, want the release kept", img)
	}

	w.writes[0].stored, w.writes[0].to = "reg.io/app:v2", "reg.io/app:v2@"+dg("b")
	if !r.stillAsRead(context.Background(), ns, w) {
		t.Fatal("stillAsRead says the unchanged workload changed")
	}
	if _, err := r.writeImages(context.Background(), ns, w); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(d), &got); err != nil {
		t.Fatal(err)
	}
	if img := got.Spec.Template.Spec.Containers[0].Image; img != "reg.io/app:v2@"+dg("b") {
		t.Fatalf("image %s, want it pinned", img)
	}
	for _, e := range got.ManagedFields {
		if e.Manager == FieldManager {
			t.Fatalf("imagepin still owns %s", e.FieldsV1)
		}
	}
}
