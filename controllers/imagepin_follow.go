package controllers

import (
	"time"

	"k8s.io/apimachinery/pkg/types"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// What Follow waits on: when each image's current digest was first seen.

func minAgeOf(pin *imagesv1alpha1.ImagePin) time.Duration {
	if pin.Spec.Follow != nil && pin.Spec.Follow.MinAge != nil {
		return pin.Spec.Follow.MinAge.Duration
	}
	return 0
}

type seenImages struct {
	uid    types.UID
	images map[string]seenDigest
}

type seenDigest struct {
	digest string
	since  time.Time
}

// firstSeen returns, per image, when its current digest was first seen:
// from the status history, which survives a restart, and for images left
// out of status (past its bounds) from the manager's memory, so that
// Follow keeps moving every image however many an ImagePin selects.
func (r *ImagePinReconciler) firstSeen(pin *imagesv1alpha1.ImagePin, status *imagesv1alpha1.ImagePinStatus, obs observation, now time.Time) map[string]time.Time {
	// The status's word counts only for the digest the tag resolves to
	// now: a ClusterImagePin plans from the status of its last check,
	// whose newest history entry may be the digest the tag just left.
	resolved := map[string]string{}
	for _, c := range obs.containers {
		if c.hasTag && c.err == nil && c.result.Digest != "" {
			resolved[c.image] = c.result.Digest
		}
	}
	out := map[string]time.Time{}
	for img, rec := range firstSeenOf(status) {
		if resolved[img] == rec.digest {
			out[img] = rec.since
		}
	}
	r.seenMu.Lock()
	defer r.seenMu.Unlock()
	if r.seen == nil {
		r.seen = map[types.NamespacedName]seenImages{}
	}
	key := types.NamespacedName{Namespace: pin.Namespace, Name: pin.Name}
	var prev map[string]seenDigest
	if s := r.seen[key]; s.uid == pin.UID {
		prev = s.images // else an earlier ImagePin of that name
	}
	next := map[string]seenDigest{}
	for _, c := range obs.containers {
		d := c.result.Digest
		if !c.hasTag || c.err != nil || d == "" {
			// A failed resolution says nothing new: keep what was seen,
			// so a registry blip does not start minAge over.
			if rec, ok := prev[c.image]; ok && c.hasTag {
				if _, seen := next[c.image]; !seen {
					next[c.image] = rec
				}
			}
			continue
		}
		if _, ok := next[c.image]; ok {
			continue
		}
		rec := prev[c.image]
		if rec.digest != d {
			rec = seenDigest{digest: d, since: now}
		}
		next[c.image] = rec
		// Status keeps whole seconds: the memory's instant within that
		// second is the precise one, so minAge is not cut short by up
		// to a second.
		if st, ok := out[c.image]; !ok || (!rec.since.Before(st) && rec.since.Sub(st) < time.Second) {
			out[c.image] = rec.since
		}
	}
	r.seen[key] = seenImages{uid: pin.UID, images: next}
	return out
}

// forgetSeen drops the memory of an ImagePin that is gone.
func (r *ImagePinReconciler) forgetSeen(key types.NamespacedName) {
	r.seenMu.Lock()
	defer r.seenMu.Unlock()
	delete(r.seen, key)
}

// firstSeenOf returns, per image, its current digest and when it was
// first seen: the newest entry of its history.
func firstSeenOf(status *imagesv1alpha1.ImagePinStatus) map[string]seenDigest {
	out := map[string]seenDigest{}
	for _, img := range status.Images {
		if len(img.History) > 0 && img.History[0].Digest == img.Digest {
			out[img.Image] = seenDigest{digest: string(img.Digest), since: img.History[0].FirstSeen.Time}
		}
	}
	return out
}
