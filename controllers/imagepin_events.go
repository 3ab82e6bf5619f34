package controllers

import (
	"fmt"
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
		switch {
		case img.Error != "" && (!seen || p.Error == ""):
			out = append(out, transition{corev1.EventTypeWarning, EventResolutionFailed, img.Error})
		case img.Error == "" && seen && p.Error != "":
			out = append(out, transition{corev1.EventTypeNormal, EventResolutionRecovered, img.Image + " resolves again to " + string(img.Digest)})
		}
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
