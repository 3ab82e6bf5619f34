package controllers

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/workload"
)

// setInvalidSpec says the spec of this generation cannot be honoured. What
// was seen before stays in status: it is still the last thing known.
func setInvalidSpec(status *imagesv1alpha1.ImagePinStatus, generation int64, err error) {
	status.ObservedGeneration = generation
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type:               imagesv1alpha1.ConditionReady,
		Status:             metav1.ConditionFalse,
		Reason:             imagesv1alpha1.ReasonInvalidSpec,
		Message:            "the spec cannot be honoured: " + err.Error(),
		ObservedGeneration: generation,
	})
}

// setSuspended says the ImagePin is suspended; what was seen before stays.
func setSuspended(status *imagesv1alpha1.ImagePinStatus, generation int64) {
	status.ObservedGeneration = generation
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type:               imagesv1alpha1.ConditionReady,
		Status:             metav1.ConditionFalse,
		Reason:             imagesv1alpha1.ReasonSuspended,
		Message:            "spec.suspend is true: no registry requests and no writes until it is false; status shows the last check",
		ObservedGeneration: generation,
	})
}

// setSelected records a successful check of generation at now.
func setSelected(status *imagesv1alpha1.ImagePinStatus, generation int64, now time.Time, summary imagesv1alpha1.Summary) {
	status.ObservedGeneration = generation
	t := metav1.NewTime(now)
	status.LastCheckTime = &t
	status.Summary = summary
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type:               imagesv1alpha1.ConditionReady,
		Status:             metav1.ConditionTrue,
		Reason:             imagesv1alpha1.ReasonWorkloadsSelected,
		Message:            selectedMessage(summary),
		ObservedGeneration: generation,
	})
}

func selectedMessage(s imagesv1alpha1.Summary) string {
	return fmt.Sprintf("selected %d %s naming %d %s (%d pinned to a digest); tags are not resolved by this version",
		s.Workloads, plural(int(s.Workloads), "workload"), s.Images, plural(int(s.Images), "image"), s.Pinned)
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// summarize counts the selected workloads, the distinct image references
// (digest removed) their selected containers name, and how many of those
// containers name a digest.
func summarize(workloads []workload.Workload, sel *selection.Selection) imagesv1alpha1.Summary {
	images := map[string]struct{}{}
	var pinned int32
	for _, w := range workloads {
		for _, c := range containersOf(w.Template) {
			if !sel.SelectsImage(c.Image) {
				continue
			}
			images[selection.StripDigest(c.Image)] = struct{}{}
			if strings.Contains(c.Image, "@") {
				pinned++
			}
		}
	}
	return imagesv1alpha1.Summary{
		Workloads: int32(len(workloads)),
		Images:    int32(len(images)),
		Pinned:    pinned,
	}
}

// containersOf lists init containers and containers of a pod spec.
func containersOf(spec *corev1.PodSpec) []corev1.Container {
	out := make([]corev1.Container, 0, len(spec.InitContainers)+len(spec.Containers))
	out = append(out, spec.InitContainers...)
	return append(out, spec.Containers...)
}
