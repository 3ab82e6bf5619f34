package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// driftedContainers is imagepin_drifted_containers: per ImagePin and drift
// reason, how many selected workload containers show it.
var driftedContainers = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "imagepin_drifted_containers",
	Help: "Selected workload containers with a drift reason, by namespace, ImagePin and reason (Unpinned included).",
}, []string{"namespace", "imagepin", "reason"})

// workloadWrites is imagepin_workload_writes_total.
var workloadWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "imagepin_workload_writes_total",
	Help: "Container images imagepin wrote into workloads, by namespace, ImagePin, workload kind and reason (Pin, Follow, Override).",
}, []string{"namespace", "imagepin", "kind", "reason"})

// conflictWorkloads is imagepin_conflict_workloads: per ImagePin, the
// workloads imagepin stopped writing because another actor keeps setting
// their image back (the Conflict condition).
var conflictWorkloads = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "imagepin_conflict_workloads",
	Help: "Workloads imagepin has stopped writing because another actor keeps setting their image back, by namespace and ImagePin (the Conflict condition).",
}, []string{"namespace", "imagepin"})

// digestsUnavailable is imagepin_digests_unavailable: per ImagePin, the
// distinct digests it needs (running, pinned, overridden or in history)
// that the registry no longer has.
var digestsUnavailable = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "imagepin_digests_unavailable",
	Help: "Digests an ImagePin needs (running, pinned, overridden or in status history) that the registry no longer has (HEAD by digest answered 404), by namespace and ImagePin.",
}, []string{"namespace", "imagepin"})

func init() {
	ctrlmetrics.Registry.MustRegister(driftedContainers, workloadWrites, conflictWorkloads, digestsUnavailable)
}

// recordUnavailable sets the unavailable-digests gauge of one ImagePin.
func recordUnavailable(namespace, name string, a availability) {
	digestsUnavailable.WithLabelValues(namespace, name).Set(float64(a.unavailable()))
}

// recordConflicts sets the conflict gauge of one ImagePin.
func recordConflicts(namespace, name string, blocked []string) {
	conflictWorkloads.WithLabelValues(namespace, name).Set(float64(len(blocked)))
}

var allDriftReasons = []imagesv1alpha1.DriftReason{
	imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftTagMoved, imagesv1alpha1.DriftMixedReplicas,
	imagesv1alpha1.DriftRolloutPending, imagesv1alpha1.DriftUnresolvable, imagesv1alpha1.DriftUnverified, imagesv1alpha1.DriftDigestGone,
}

// recordMetrics sets the drift gauge of one ImagePin from its status (the
// containers left out of status are not counted by reason).
func recordMetrics(pin *imagesv1alpha1.ImagePin, status *imagesv1alpha1.ImagePinStatus) {
	counts := map[imagesv1alpha1.DriftReason]int{}
	for _, img := range status.Images {
		for _, w := range img.Workloads {
			for _, r := range w.Drift {
				counts[r]++
			}
		}
	}
	for _, r := range allDriftReasons {
		driftedContainers.WithLabelValues(pin.Namespace, pin.Name, string(r)).Set(float64(counts[r]))
	}
}

// forgetMetrics drops the series of a deleted ImagePin.
func forgetMetrics(namespace, name string) {
	driftedContainers.DeletePartialMatch(prometheus.Labels{"namespace": namespace, "imagepin": name})
	conflictWorkloads.DeletePartialMatch(prometheus.Labels{"namespace": namespace, "imagepin": name})
	digestsUnavailable.DeletePartialMatch(prometheus.Labels{"namespace": namespace, "imagepin": name})
}
