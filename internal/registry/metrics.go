package registry

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Cache results, the values of the result label of
// imagepin_registry_cache_results_total.
const (
	resultHit       = "hit"
	resultMiss      = "miss"
	resultCoalesced = "coalesced"
	resultStale     = "stale"
	resultError     = "error"
	// resultBehind: the last good answer, given while a fresh one was
	// still on its way past the caller's AnswerBy.
	resultBehind = "behind"
)

// Metrics are the resolver's Prometheus metrics. README.md documents each.
type Metrics struct {
	Requests           *prometheus.CounterVec
	RequestDuration    *prometheus.HistogramVec
	ManifestGets       *prometheus.CounterVec
	CacheResults       *prometheus.CounterVec
	RateLimitRemaining *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them with reg, if not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imagepin_registry_requests_total",
			Help: "HTTP requests sent to registries, by registry host, method and status code (\"error\" when no response came).",
		}, []string{"registry", "method", "code"}),
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "imagepin_registry_request_duration_seconds",
			Help:    "Latency of HTTP requests to registries, by registry host and method.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"registry", "method"}),
		ManifestGets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imagepin_registry_manifest_gets_total",
			Help: "Manifest GETs (which Docker Hub counts as pulls), by registry host and why: \"index\" to list a multi-arch index's platforms, once, when a pod or a spec names a digest other than the tag's (the controller only), \"fallback\" where HEAD was not answered properly.",
		}, []string{"registry", "reason"}),
		CacheResults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imagepin_registry_cache_results_total",
			Help: "Tag resolutions by how they were answered: hit, miss, coalesced (joined a request in flight), stale (last good digest served with an error), error, behind (last good digest given to a check while the fresh answer waited for the registry budget).",
		}, []string{"result"}),
		RateLimitRemaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imagepin_registry_ratelimit_remaining",
			Help: "The last ratelimit-remaining a registry sent, by registry host.",
		}, []string{"registry"}),
	}
	if reg != nil {
		reg.MustRegister(m.Requests, m.RequestDuration, m.ManifestGets, m.CacheResults, m.RateLimitRemaining)
	}
	return m
}
