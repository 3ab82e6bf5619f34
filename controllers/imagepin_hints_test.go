package controllers

import (
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
)

func TestTagIndexFindsTheImagePinsNamingATag(t *testing.T) {
	ref := func(image string) registry.TagRef {
		r, err := registry.TagRefOf(image)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	web := types.NamespacedName{Namespace: "prod", Name: "web"}
	batch := types.NamespacedName{Namespace: "batch", Name: "jobs"}
	var x tagIndex
	x.set(web, []registry.TagRef{ref("nginx"), ref("registry.example.com/team/app:v1")})
	x.set(batch, []registry.TagRef{ref("docker.io/library/nginx:latest")})

	tests := []struct {
		name string
		tag  registry.TagRef
		want []types.NamespacedName
	}{
		{"one tag, two spellings, two ImagePins", ref("index.docker.io/library/nginx:latest"), []types.NamespacedName{batch, web}},
		{"a tag one ImagePin names", ref("registry.example.com/team/app:v1"), []types.NamespacedName{web}},
		{"another tag of the repository", ref("registry.example.com/team/app:v2"), nil},
		{"the repository", registry.TagRef{Repository: "registry.example.com/team/app"}, []types.NamespacedName{web}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := x.pinsOf(tt.tag)
			slices.SortFunc(got, cmpNames)
			if !slices.Equal(got, tt.want) {
				t.Errorf("pinsOf(%s) = %v, want %v", tt.tag, got, tt.want)
			}
		})
	}

	// A check that finds the same tags again leaves the index as it is.
	held := x.byPin[web]
	x.set(web, []registry.TagRef{ref("nginx"), ref("registry.example.com/team/app:v1")})
	if x.byPin[web] != held {
		t.Error("the same tags again replaced the ImagePin's record")
	}
	if got := x.pinsOf(registry.TagRef{Repository: "registry.example.com/team/app"}); !slices.Equal(got, []types.NamespacedName{web}) {
		t.Errorf("after the same tags again: %v, want [%s] once", got, web)
	}

	x.set(web, []registry.TagRef{ref("registry.example.com/team/app:v2")})
	if got := x.pinsOf(ref("registry.example.com/team/app:v1")); len(got) != 0 {
		t.Errorf("a tag the ImagePin no longer names still finds %v", got)
	}
	// The other ImagePin under the tag they shared stays.
	if got := x.pinsOf(ref("nginx")); !slices.Equal(got, []types.NamespacedName{batch}) {
		t.Errorf("nginx after web left it: %v, want [%s]", got, batch)
	}
	x.forget(batch)
	x.forget(web)
	if len(x.pins) != 0 || len(x.byPin) != 0 {
		t.Errorf("forgotten ImagePins leave %d tags and %d ImagePins", len(x.pins), len(x.byPin))
	}
}

func cmpNames(a, b types.NamespacedName) int {
	if a.String() < b.String() {
		return -1
	}
	if a.String() > b.String() {
		return 1
	}
	return 0
}

func TestNextCheckIsTheTickOrAFollowFallingDue(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 30, 0, time.UTC)
	tests := []struct {
		name      string
		interval  time.Duration
		followDue time.Time
		want      time.Duration
	}{
		{"no Follow waits", 10 * time.Minute, time.Time{}, 9*time.Minute + 30*time.Second + tickSlack},
		{"a Follow falls due before the tick", 10 * time.Minute, now.Add(3 * time.Second), 3*time.Second + tickSlack},
		{"a Follow falls due after the tick", time.Minute, now.Add(2 * time.Minute), 30*time.Second + tickSlack},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextCheck(now, tt.interval, tt.followDue); got != tt.want {
				t.Errorf("nextCheck = %s, want %s", got, tt.want)
			}
		})
	}
}

// A ClusterImagePin plans from the status of its last check: when the tag
// has just moved, that status's newest history entry is the digest it
// left, and Follow must not take its age for the new digest's.
func TestFirstSeenIgnoresTheStatusOfAnotherDigest(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	const img = "reg.io/app:v1"
	old, moved := "sha256:"+strings.Repeat("a", 64), "sha256:"+strings.Repeat("b", 64)
	status := &imagesv1alpha1.ImagePinStatus{Images: []imagesv1alpha1.ImageStatus{{
		Image: img, Digest: imagesv1alpha1.Digest(old),
		History: []imagesv1alpha1.DigestRecord{{Digest: imagesv1alpha1.Digest(old), FirstSeen: metav1.NewTime(now.Add(-48 * time.Hour))}},
	}}}
	obs := observation{containers: []containerObs{{image: img, hasTag: true, result: registry.Result{Digest: moved}}}}
	pin := &imagesv1alpha1.ImagePin{}
	pin.Namespace, pin.Name, pin.UID = "team", "ClusterImagePin/platform", "u1"
	r := &ImagePinReconciler{}
	if got := r.firstSeen(pin, status, obs, now)[img]; !got.Equal(now) {
		t.Fatalf("the moved digest is first seen at %s, want now (%s): the status's 48h belong to the digest the tag left", got, now)
	}
	obs.containers[0].result.Digest = old
	if got := r.firstSeen(pin, status, obs, now)[img]; !got.Equal(now.Add(-48 * time.Hour)) {
		t.Fatalf("the unmoved digest is first seen at %s, want the status's %s", got, now.Add(-48*time.Hour))
	}
}
