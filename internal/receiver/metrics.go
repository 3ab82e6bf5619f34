package receiver

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the receiver's; README.md documents each.
type Metrics struct {
	Requests     *prometheus.CounterVec
	Pushes       *prometheus.CounterVec
	HintsDropped prometheus.Counter
	Rechecks     *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg, if not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imagepin_receiver_requests_total",
			Help: "Push notifications received, by endpoint and HTTP status answered (202 taken, 400 malformed, 401 not authentic, 404 endpoint not configured, 405, 413 too large, 429 authentic sender over its budget, 503 not the leader).",
		}, []string{"endpoint", "code"}),
		Pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imagepin_receiver_pushes_total",
			Help: "Tags named by authentic push notifications, by endpoint and what became of them (hinted, deferred, coalesced, dropped, unused).",
		}, []string{"endpoint", "result"}),
		HintsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imagepin_receiver_hints_dropped_total",
			Help: "Hints (at once, deferred or confirmations) dropped over the hint budget of all tags; polling sees those tags.",
		}),
		Rechecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imagepin_receiver_rechecks_total",
			Help: "ImagePins a push notification asked to check: queued, or queue_full (dropped; polling sees the tag).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.Requests, m.Pushes, m.HintsDropped, m.Rechecks)
	}
	return m
}
