package drift

import (
	"fmt"
	"strings"
	"testing"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

func d(c string) string { return "sha256:" + strings.Repeat(c, 64) }

var (
	digestA, digestB, digestC = d("a"), d("b"), d("c")
	index, amd64, arm64       = d("1"), d("2"), d("3")
)

func platforms(digest string) []string {
	if digest == index {
		return []string{amd64, arm64}
	}
	return nil
}

func TestDigestOfImageID(t *testing.T) {
	tests := []struct {
		imageID string
		want    string
	}{
		{"docker-pullable://registry.example.com/team/app@" + digestA, digestA},
		{"registry.example.com/team/app@" + digestA, digestA},
		{"localhost:5000/team/app@" + digestA, digestA},
		{"  registry.example.com/team/app@" + digestA + " ", digestA},
		// A config digest (containerd without a repository digest): not a
		// manifest digest, so not compared with one.
		{digestA, ""},
		{"  " + digestA + " ", ""},
		{"docker://" + digestA, ""},
		{"", ""},
		{"registry.example.com/team/app:v1", ""},
		{"sha256:xyz", ""},
		{"repo@sha512:" + strings.Repeat("a", 128), ""},
		{"repo@" + strings.ToUpper(digestA), ""},
	}
	for _, tt := range tests {
		t.Run(tt.imageID, func(t *testing.T) {
			got, ok := DigestOfImageID(tt.imageID)
			if got != tt.want || ok != (tt.want != "") {
				t.Errorf("DigestOfImageID(%q) = %q, %v; want %q", tt.imageID, got, ok, tt.want)
			}
		})
	}
}

func TestDigestOfImage(t *testing.T) {
	for image, want := range map[string]string{
		"reg.io/app:v1@" + digestA:         digestA,
		"reg.io/app@" + digestA:            digestA,
		"localhost:5000/app:v1@" + digestA: digestA,
		"reg.io/app:v1":                    "",
		"reg.io/app:v1@sha256:short":       "",
	} {
		if got := DigestOfImage(image); got != want {
			t.Errorf("DigestOfImage(%q) = %q, want %q", image, got, want)
		}
	}
}

func TestReasons(t *testing.T) {
	tests := []struct {
		name string
		in   Input
		want string
	}{
		{name: "tag only, pods run what the tag means", in: Input{Resolved: digestA, Running: []string{digestA}}, want: "[Unpinned]"},
		{name: "tag only, no pods yet", in: Input{Resolved: digestA}, want: "[Unpinned]"},
		{name: "tag only, tag re-pushed", in: Input{Resolved: digestB, Running: []string{digestA}}, want: "[Unpinned TagMoved]"},
		{name: "tag only, replicas split after a re-push", in: Input{Resolved: digestB, Running: []string{digestA, digestB}}, want: "[Unpinned TagMoved MixedReplicas]"},
		{name: "pinned and in step", in: Input{Pinned: digestA, Resolved: digestA, Running: []string{digestA}}, want: "[]"},
		{name: "pinned, tag moved since", in: Input{Pinned: digestA, Resolved: digestB, Running: []string{digestA}}, want: "[TagMoved]"},
		{name: "pinned, rollout under way", in: Input{Pinned: digestB, Resolved: digestB, Running: []string{digestA, digestB}}, want: "[MixedReplicas RolloutPending]"},
		{name: "pinned, nothing rolled out yet", in: Input{Pinned: digestB, Resolved: digestB, Running: []string{digestA}}, want: "[RolloutPending]"},
		{name: "three digests at once", in: Input{Pinned: digestC, Resolved: digestC, Running: []string{digestA, digestB, digestC}}, want: "[MixedReplicas RolloutPending]"},
		{name: "unresolvable, never resolved", in: Input{ResolveFailed: true, Running: []string{digestA}}, want: "[Unpinned Unresolvable]"},
		{name: "unresolvable, stale digest still compared", in: Input{Pinned: digestA, Resolved: digestB, ResolveFailed: true, Running: []string{digestA}}, want: "[TagMoved Unresolvable]"},
		{name: "multi-arch: pods run a platform of the pinned index", in: Input{Pinned: index, Resolved: index, Running: []string{amd64}, Platforms: platforms}, want: "[]"},
		{name: "multi-arch: two platforms of one index are one image", in: Input{Pinned: index, Resolved: index, Running: []string{amd64, arm64}, Platforms: platforms}, want: "[]"},
		{name: "multi-arch tag only: platform of the resolved index", in: Input{Resolved: index, Running: []string{arm64, amd64}, Platforms: platforms}, want: "[Unpinned]"},
		{name: "multi-arch: pods on a platform, tag moved to a plain image", in: Input{Pinned: index, Resolved: digestA, Running: []string{amd64}, Platforms: platforms}, want: "[TagMoved]"},
		{name: "multi-arch without platform knowledge is compared plainly", in: Input{Pinned: index, Resolved: index, Running: []string{amd64}}, want: "[RolloutPending]"},
		// Issue 20: a digest the registry no longer has (garbage collected).
		{name: "pods run a collected digest", in: Input{Pinned: digestA, Resolved: digestB, Running: []string{digestA}, Gone: []string{digestA}}, want: "[TagMoved DigestGone]"},
		{name: "in step and present", in: Input{Pinned: digestA, Resolved: digestA, Running: []string{digestA}}, want: "[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fmt.Sprint(Reasons(tt.in)); got != tt.want {
				t.Errorf("Reasons(%+v) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestDrifted(t *testing.T) {
	if Drifted([]imagesv1alpha1.DriftReason{imagesv1alpha1.DriftUnpinned}) {
		t.Error("Unpinned alone counted as drifted")
	}
	if Drifted(nil) {
		t.Error("no reasons counted as drifted")
	}
	if !Drifted([]imagesv1alpha1.DriftReason{imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftTagMoved}) {
		t.Error("TagMoved not counted as drifted")
	}
}

func TestStripDigest(t *testing.T) {
	d := "sha256:" + strings.Repeat("0", 64)
	for in, want := range map[string]string{
		"reg.io/app:v1@" + d:         "reg.io/app:v1",
		"reg.io/app@" + d:            "reg.io/app",
		"localhost:5000/app:v1":      "localhost:5000/app:v1",
		"localhost:5000/app:v1@" + d: "localhost:5000/app:v1",
	} {
		if got := StripDigest(in); got != want {
			t.Errorf("StripDigest(%q) = %q, want %q", in, got, want)
		}
	}
}
