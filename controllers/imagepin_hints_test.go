package controllers

import (
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

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

	x.set(web, []registry.TagRef{ref("registry.example.com/team/app:v2")})
	if got := x.pinsOf(ref("registry.example.com/team/app:v1")); len(got) != 0 {
		t.Errorf("a tag the ImagePin no longer names still finds %v", got)
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
