package controllers

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Issue 13 item 1: a release (a new tag) is new intent, never a revert; only
// the same tag set back over what imagepin wrote counts, and those counts
// decay.
func TestConflictDecision(t *testing.T) {
	const (
		repo    = "reg.io/app"
		backoff = time.Hour
	)
	pinned := func(tag, d string) string { return repo + ":" + tag + "@" + dg(d) }
	type step struct {
		after   time.Duration // since the previous step
		current string        // the image the workload names now
		want    conflictDecision
		wrote   string // what imagepin then writes, when it writes
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{name: "releases by set image are each pinned", steps: []step{
			{current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Minute, current: repo + ":v2", want: writeIt, wrote: pinned("v2", "b")},
			{after: time.Minute, current: repo + ":v3", want: writeIt, wrote: pinned("v3", "c")},
			{after: time.Minute, current: repo + ":v4", want: writeIt, wrote: pinned("v4", "d")},
			{after: time.Minute, current: repo + ":v5", want: writeIt, wrote: pinned("v5", "e")},
		}},
		{name: "the same tag set back three times blocks", steps: []step{
			{current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Minute, current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Minute, current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Minute, current: repo + ":v1", want: nowBlocked},
			{after: time.Minute, current: repo + ":v1", want: stayBlocked},
		}},
		{name: "another digest of the same tag set back is a revert too", steps: []step{
			{current: repo + ":v1", want: writeIt, wrote: pinned("v1", "b")},
			{after: time.Minute, current: pinned("v1", "a"), want: writeIt, wrote: pinned("v1", "b")},
			{after: time.Minute, current: pinned("v1", "a"), want: writeIt, wrote: pinned("v1", "b")},
			{after: time.Minute, current: pinned("v1", "a"), want: nowBlocked},
		}},
		{name: "a release between reverts starts the container again", steps: []step{
			{current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Minute, current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Minute, current: repo + ":v2", want: writeIt, wrote: pinned("v2", "b")},
			{after: time.Minute, current: repo + ":v3", want: writeIt, wrote: pinned("v3", "c")},
		}},
		{name: "reverts older than the backoff are forgotten", steps: []step{
			{current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Minute, current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Minute, current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: 2 * time.Hour, current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
		}},
		{name: "a block ends after the backoff; one revert then blocks for twice as long", steps: []step{
			{current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Second, current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Second, current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Second, current: repo + ":v1", want: nowBlocked},
			{after: 59 * time.Minute, current: repo + ":v1", want: stayBlocked},
			{after: 2 * time.Minute, current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Minute, current: repo + ":v1", want: nowBlocked},
			{after: 119 * time.Minute, current: repo + ":v1", want: stayBlocked},
			{after: 2 * time.Minute, current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			// It sticks for a whole backoff: the next reverts count from
			// zero again.
			{after: 61 * time.Minute, current: pinned("v1", "a"), want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Minute, current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Minute, current: repo + ":v1", want: writeIt, wrote: pinned("v1", "a")},
			{after: time.Minute, current: repo + ":v1", want: nowBlocked},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &conflictState{lastWritten: map[string]string{}}
			now := t0
			for i, s := range tt.steps {
				now = now.Add(s.after)
				got := st.decide(map[string]string{"app": s.current}, now, backoff)
				if got != s.want {
					t.Fatalf("step %d (%s): decision %d, want %d", i, s.current, got, s.want)
				}
				if got == writeIt {
					st.lastWritten["app"] = s.wrote
				}
			}
		})
	}
}

// Issue 13 item 2: conflict state is keyed by UIDs. A workload deleted and
// created again (a new UID) starts afresh, as does an ImagePin deleted and
// created again; a spec change starts afresh too.
func TestConflictStateIsKeyedByUID(t *testing.T) {
	r := &ImagePinReconciler{}
	pin := &imagesv1alpha1.ImagePin{}
	pin.Namespace, pin.Name, pin.UID, pin.Generation = "ns", "web", "pin-1", 1

	states := r.conflictsOf(pin, map[types.UID]bool{"w-1": true})
	states["w-1"] = &conflictState{wroteGeneration: 5, blockedUntil: t0.Add(time.Hour)}

	if got := r.conflictsOf(pin, map[types.UID]bool{"w-2": true}); len(got) != 0 {
		t.Fatalf("a recreated workload (new UID) inherited state: %v", got)
	}
	states = r.conflictsOf(pin, map[types.UID]bool{"w-1": true})
	states["w-1"] = &conflictState{wroteGeneration: 5}
	again := *pin
	again.UID = "pin-2"
	if got := r.conflictsOf(&again, map[types.UID]bool{"w-1": true}); len(got) != 0 {
		t.Fatalf("a recreated ImagePin (new UID) inherited state: %v", got)
	}
	if len(r.conflicts) != 1 {
		t.Fatalf("the state of the deleted ImagePin was kept: %d entries", len(r.conflicts))
	}
	again.Generation = 2
	r.conflictsOf(&again, map[types.UID]bool{"w-1": true})["w-1"] = &conflictState{}
	again.Generation = 3
	if got := r.conflictsOf(&again, map[types.UID]bool{"w-1": true}); len(got) != 0 {
		t.Fatalf("a spec change kept the state: %v", got)
	}
	r.forgetConflicts(types.NamespacedName{Namespace: "ns", Name: "web"})
	if len(r.conflicts) != 0 {
		t.Fatalf("a deleted ImagePin's state was kept")
	}
}

// Issue 13 item 1: a tool applies its whole manifest, so a release of one
// container sets the others back to their tags in the same change: that is
// a release, never a revert, and it ends a block. An untagged image set
// back over its pinned ":latest" is a revert.
func TestConflictDecisionWholeManifests(t *testing.T) {
	const backoff = time.Hour
	app := func(tag string) string { return "reg.io/app:" + tag }
	proxy, proxyPinned := "reg.io/proxy:v1", "reg.io/proxy:v1@"+dg("p")
	st := &conflictState{lastWritten: map[string]string{}}
	now := t0
	write := func(tag string) {
		t.Helper()
		now = now.Add(time.Minute)
		if got := st.decide(map[string]string{"app": app(tag), "proxy": proxy}, now, backoff); got != writeIt {
			t.Fatalf("release %s with the proxy set back: decision %d, want a write", tag, got)
		}
		st.lastWritten["app"], st.lastWritten["proxy"] = app(tag)+"@"+dg("a"), proxyPinned
	}
	for _, tag := range []string{"v1", "v2", "v3", "v4", "v5"} {
		write(tag)
	}

	// Blocked by reverts of the same tags, then a release unblocks.
	for range maxReverts - 1 {
		now = now.Add(time.Minute)
		if got := st.decide(map[string]string{"app": app("v5"), "proxy": proxy}, now, backoff); got != writeIt {
			t.Fatalf("revert: decision %d, want a write", got)
		}
	}
	now = now.Add(time.Minute)
	if got := st.decide(map[string]string{"app": app("v5"), "proxy": proxy}, now, backoff); got != nowBlocked {
		t.Fatalf("third revert: decision %d, want blocked", got)
	}
	now = now.Add(time.Minute)
	if got := st.decide(map[string]string{"app": app("v6"), "proxy": proxy}, now, backoff); got != writeIt {
		t.Fatalf("a release while blocked: decision %d, want a write", got)
	}

	untagged := &conflictState{lastWritten: map[string]string{"app": "reg.io/app:latest@" + dg("a")}}
	reverts := 0
	for i := range maxReverts {
		switch untagged.decide(map[string]string{"app": "reg.io/app"}, t0.Add(time.Duration(i)*time.Minute), backoff) {
		case writeIt:
			untagged.lastWritten["app"] = "reg.io/app:latest@" + dg("a")
		case nowBlocked:
			reverts = i + 1
		}
	}
	if reverts != maxReverts {
		t.Fatal("an untagged image set back over its pinned :latest was not counted as a revert")
	}
}
