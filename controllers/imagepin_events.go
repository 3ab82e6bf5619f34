package controllers

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Event reasons, emitted only on transitions.
const (
	EventDriftFound          = "DriftFound"
	EventDriftResolved       = "DriftResolved"
	EventTagMoved            = "TagMoved"
	EventResolutionFailed    = "ResolutionFailed"
	EventResolutionRecovered = "ResolutionRecovered"
	EventDigestGone          = "DigestGone"
	// EventKeepTagsPushed and EventKeepTagsDeleted follow what retention
	// (spec.retention.protect) did to the registry.
	EventKeepTagsPushed  = "KeepTagsPushed"
	EventKeepTagsDeleted = "KeepTagsDeleted"
	// EventKeepTagsLeft: a deleted ImagePin's keep tags that could not be
	// deleted in time, left in the registry.
	EventKeepTagsLeft = "KeepTagsLeft"
)

// emitTransitions compares the status before and after a check and emits
// an event for each change an SRE wants to hear about; a steady state emits
// nothing.
func (r *ImagePinReconciler) emitTransitions(pin *imagesv1alpha1.ImagePin, before, after *imagesv1alpha1.ImagePinStatus) {
	if r.Recorder == nil {
		return
	}
	for _, e := range transitions(before, after) {
		r.Recorder.Eventf(pin, nil, e.kind, e.reason, "Check", "%s", truncateNote(e.note))
	}
}

type transition struct{ kind, reason, note string }

// transitions is the pure part of emitTransitions.
func transitions(before, after *imagesv1alpha1.ImagePinStatus) []transition {
	var out []transition
	// Digests found gone: one event, as events of one reason on one
	// object are merged into a series whatever their notes say.
	var gone []string
	prev := map[string]imagesv1alpha1.ImageStatus{}
	for _, img := range before.Images {
		prev[img.Image] = img
	}
	for _, img := range after.Images {
		p, seen := prev[img.Image]
		if seen && p.Digest != "" && img.Digest != "" && p.Digest != img.Digest {
			out = append(out, transition{corev1.EventTypeNormal, EventTagMoved,
				fmt.Sprintf("%s moved from %s to %s", img.Image, p.Digest, img.Digest)})
		}
		wasGone := map[imagesv1alpha1.Digest]bool{}
		for _, h := range p.History {
			wasGone[h.Digest] = h.Available != nil && !*h.Available
		}
		for _, h := range img.History {
			if h.Available != nil && !*h.Available && !wasGone[h.Digest] {
				gone = append(gone, fmt.Sprintf("the registry no longer has %s@%s (garbage collected): a rollback override to it is not written", img.Image, h.Digest))
			}
		}
		gone = append(gone, newlyGone(p, img)...)
		switch {
		case img.Error != "" && (!seen || p.Error == ""):
			out = append(out, transition{corev1.EventTypeWarning, EventResolutionFailed, img.Error})
		case img.Error == "" && seen && p.Error != "":
			out = append(out, transition{corev1.EventTypeNormal, EventResolutionRecovered, img.Image + " resolves again to " + string(img.Digest)})
		}
	}
	if len(gone) > 0 {
		out = append(out, transition{corev1.EventTypeWarning, EventDigestGone, strings.Join(gone, "; ")})
	}
	wasDrifted := meta.IsStatusConditionTrue(before.Conditions, imagesv1alpha1.ConditionDrifted)
	if c := meta.FindStatusCondition(after.Conditions, imagesv1alpha1.ConditionDrifted); c != nil {
		switch {
		case c.Status == metav1.ConditionTrue && !wasDrifted:
			out = append(out, transition{corev1.EventTypeWarning, EventDriftFound, c.Message})
		case c.Status == metav1.ConditionFalse && wasDrifted:
			out = append(out, transition{corev1.EventTypeNormal, EventDriftResolved, c.Message})
		}
	}
	return out
}

// maxNote is the length of an events.k8s.io note the API server accepts.
const maxNote = 1024

func truncateNote(s string) string {
	if len(s) <= maxNote {
		return s
	}
	cut := maxNote - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// newlyGone says of each workload container of img that shows DigestGone,
// and did not in p, what it needs.
func newlyGone(p, img imagesv1alpha1.ImageStatus) []string {
	type slotKey struct{ ns, kind, name, template, container string }
	key := func(w imagesv1alpha1.WorkloadImage) slotKey {
		return slotKey{w.Namespace, string(w.Kind), w.Name, w.Template, w.Container}
	}
	was := map[slotKey]bool{}
	for _, w := range p.Workloads {
		was[key(w)] = slices.Contains(w.Drift, imagesv1alpha1.DriftDigestGone)
	}
	var out []string
	for _, w := range img.Workloads {
		if !slices.Contains(w.Drift, imagesv1alpha1.DriftDigestGone) || was[key(w)] {
			continue
		}
		where := fmt.Sprintf("%s %s/%s", w.Kind, w.Name, slot(w.Template, w.Container, w.Volume))
		if w.Namespace != "" {
			where = w.Namespace + ": " + where
		}
		out = append(out, fmt.Sprintf("%s runs or pins a digest of %s the registry no longer has (%s): its pods run on, but a new pod will fail to pull it",
			where, img.Image, strings.Join(digestsOf(w), ", ")))
	}
	return out
}

// digestsOf lists the digests w pins and runs.
func digestsOf(w imagesv1alpha1.WorkloadImage) []string {
	var out []string
	if w.PinnedDigest != "" {
		out = append(out, string(w.PinnedDigest))
	}
	for _, r := range w.Running {
		if !slices.Contains(out, string(r.Digest)) {
			out = append(out, string(r.Digest))
		}
	}
	return out
}
