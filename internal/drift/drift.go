package drift

import (
	"regexp"
	"slices"
	"strings"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

var digestRE = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)

// IsDigest reports whether s is a sha256 digest.
func IsDigest(s string) bool { return digestRE.MatchString(s) }

// DigestOfImageID reads the manifest digest from a container status's
// imageID, in the forms runtimes write: "docker-pullable://repo@sha256:…"
// (dockershim, cri-dockerd) and "repo@sha256:…" (containerd, CRI-O). A
// bare "sha256:…" is what containerd reports for an image it has no
// repository digest of (one imported or loaded onto the node), and
// "docker://sha256:…" is Docker's local image ID: both are the digest of
// the image's config, not of a manifest, so they yield nothing rather
// than a digest that never matches and reads as drift.
func DigestOfImageID(imageID string) (string, bool) {
	id := strings.TrimSpace(imageID)
	if strings.HasPrefix(id, "docker://") {
		return "", false
	}
	id = strings.TrimPrefix(id, "docker-pullable://")
	i := strings.LastIndexByte(id, '@')
	if i < 0 {
		return "", false
	}
	if d := id[i+1:]; IsDigest(d) {
		return d, true
	}
	return "", false
}

// StripDigest removes an "@sha256:…" suffix from an image reference: the
// inverse of pinning it.
func StripDigest(image string) string {
	if i := strings.IndexByte(image, '@'); i >= 0 {
		return image[:i]
	}
	return image
}

// DigestOfImage returns the digest an image reference names, if any.
func DigestOfImage(image string) string {
	if i := strings.LastIndexByte(image, '@'); i >= 0 && IsDigest(image[i+1:]) {
		return image[i+1:]
	}
	return ""
}

// Platforms returns the platform manifest digests of an index digest, or
// nothing when the digest is not a known index.
type Platforms func(digest string) []string

// Same reports whether two digests name the same image: equal, or one a
// platform manifest of the other (an index).
func Same(a, b string, platforms Platforms) bool {
	if a == b {
		return true
	}
	if platforms == nil {
		return false
	}
	return slices.Contains(platforms(a), b) || slices.Contains(platforms(b), a)
}

// Input is what is known of one workload container.
type Input struct {
	// Pinned is the digest the workload spec names; empty for a tag only.
	Pinned string
	// Resolved is what the tag points to now (or last did, when
	// ResolveFailed); empty when never resolved.
	Resolved string
	// ResolveFailed is true when the last resolution failed.
	ResolveFailed bool
	// Running are the digests the workload's pods run, one entry per
	// distinct digest.
	Running []string
	// Platforms knows the children of indexes.
	Platforms Platforms
	// Unverified is true when spec.verify is set and the resolved or the
	// pinned digest did not verify.
	Unverified bool
	// Gone are the digests, among Pinned and Running, the registry said it
	// no longer has.
	Gone []string
}

// Reasons returns the drift reasons of a container, in the API's order.
func Reasons(in Input) []imagesv1alpha1.DriftReason {
	var out []imagesv1alpha1.DriftReason
	for _, check := range []struct {
		reason imagesv1alpha1.DriftReason
		holds  func(Input) bool
	}{
		{imagesv1alpha1.DriftUnpinned, unpinned},
		{imagesv1alpha1.DriftTagMoved, tagMoved},
		{imagesv1alpha1.DriftMixedReplicas, mixedReplicas},
		{imagesv1alpha1.DriftRolloutPending, rolloutPending},
		{imagesv1alpha1.DriftUnresolvable, unresolvable},
		{imagesv1alpha1.DriftUnverified, func(in Input) bool { return in.Unverified }},
		{imagesv1alpha1.DriftDigestGone, func(in Input) bool { return len(in.Gone) > 0 }},
	} {
		if check.holds(in) {
			out = append(out, check.reason)
		}
	}
	return out
}

func unpinned(in Input) bool { return in.Pinned == "" }

// tagMoved: the tag resolves to a digest other than the pinned one or, for
// a tag-only spec, other than one the pods run.
func tagMoved(in Input) bool {
	if in.Resolved == "" {
		return false
	}
	if in.Pinned != "" {
		return !Same(in.Resolved, in.Pinned, in.Platforms)
	}
	for _, d := range in.Running {
		if !Same(in.Resolved, d, in.Platforms) {
			return true
		}
	}
	return false
}

// mixedReplicas: the pods run more than one image, counting platform
// manifests of one index as that index.
func mixedReplicas(in Input) bool {
	var distinct []string
	for _, d := range in.Running {
		known := false
		for _, e := range distinct {
			if Same(d, e, in.Platforms) || sameIndex(d, e, in) {
				known = true
				break
			}
		}
		if !known {
			distinct = append(distinct, d)
		}
	}
	return len(distinct) > 1
}

// sameIndex reports whether two platform digests belong to the pinned or
// resolved index (a multi-arch Deployment spread over amd64 and arm64 nodes
// runs two platform digests of one image).
func sameIndex(a, b string, in Input) bool {
	for _, idx := range []string{in.Pinned, in.Resolved} {
		if idx != "" && Same(idx, a, in.Platforms) && Same(idx, b, in.Platforms) {
			return true
		}
	}
	return false
}

// rolloutPending: pods run a digest other than the pinned one.
func rolloutPending(in Input) bool {
	if in.Pinned == "" {
		return false
	}
	for _, d := range in.Running {
		if !Same(in.Pinned, d, in.Platforms) {
			return true
		}
	}
	return false
}

func unresolvable(in Input) bool { return in.ResolveFailed }

// Drifted reports whether any reason says the container runs something
// other than what its tag or pin means. Unpinned alone is a risk, not yet a
// difference, and is counted apart (summary.pinned).
func Drifted(reasons []imagesv1alpha1.DriftReason) bool {
	for _, r := range reasons {
		if r != imagesv1alpha1.DriftUnpinned {
			return true
		}
	}
	return false
}
