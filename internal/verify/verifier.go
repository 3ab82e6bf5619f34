package verify

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
)

// Source is the way to a registry: the resolver's WithRepository.
type Source interface {
	WithRepository(ctx context.Context, image string, kc authn.Keychain, do func(context.Context, name.Repository, *remote.Puller) error) error
}

// Result is what verification says of one digest.
type Result struct {
	Verified bool
	Reason   imagesv1alpha1.VerificationReason
	Message  string
	// CheckedAt is when the signatures were read.
	CheckedAt time.Time
}

// Status is r as an ImagePin's status says it.
func (r Result) Status() *imagesv1alpha1.Verification {
	return &imagesv1alpha1.Verification{Verified: r.Verified, Reason: r.Reason, Message: Truncate(r.Message, 512)}
}

// DefaultTimeout bounds one verification: its manifests, referrers and
// blobs together.
const DefaultTimeout = 30 * time.Second

// maxEntries bounds the cache; the oldest answers go first.
const maxEntries = 10000

// Request asks whether a digest verifies.
type Request struct {
	// Image names the repository, as a workload does (tag and digest
	// ignored).
	Image string
	// Digest is the digest to verify.
	Digest string
	// Keychain supplies the credentials to read signatures with: the
	// workload's, as for its resolution.
	Keychain authn.Keychain
	// Policy says whose signatures count.
	Policy *Policy
	// FreshSince: an answer that a digest does not verify is reused only
	// if its signatures were read at or after it (a signature may be
	// added since); the controller passes its tick's start. A verified
	// answer is reused for good: the digest's content and the signature
	// that covers it do not change, and a changed key set is another
	// Policy.
	FreshSince time.Time
}

// Verifier verifies digests and remembers the answers. It is safe for
// concurrent use; one is shared by the controllers and the webhook.
type Verifier struct {
	// Timeout bounds one verification's registry requests; New sets
	// DefaultTimeout.
	Timeout time.Duration

	source  Source
	clock   clock.PassiveClock
	metrics *Metrics
	group   singleflight.Group

	mu    sync.Mutex
	cache map[string]Result
	// signed counts Signed calls. A verification under way at one may
	// have read the signatures before that push: its answer that the
	// digest does not verify is not remembered, and callers after the
	// push do not join it.
	signed uint64
}

// New returns a Verifier reading through source; metrics may be nil.
func New(source Source, clk clock.PassiveClock, metrics *Metrics) *Verifier {
	if clk == nil {
		clk = clock.RealClock{}
	}
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	return &Verifier{Timeout: DefaultTimeout, source: source, clock: clk, metrics: metrics, cache: map[string]Result{}}
}

// Cached returns the remembered answer for req, if it may serve: the
// webhook's way to answer without a request.
func (v *Verifier) Cached(req Request) (Result, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.cache[cacheKey(req)]
	if !ok || (!r.Verified && r.CheckedAt.Before(req.FreshSince)) {
		return Result{}, false
	}
	return r, true
}

// Verify says whether req.Digest carries a signature req.Policy trusts.
// A registry failure is an answer too, Reason Error, Verified false (fail
// closed), and is not remembered. Concurrent calls for one digest and
// policy share the requests.
func (v *Verifier) Verify(ctx context.Context, req Request) Result {
	if r, ok := v.Cached(req); ok {
		v.metrics.Results.WithLabelValues(resultCached).Inc()
		return r
	}
	key := cacheKey(req)
	v.mu.Lock()
	signed := v.signed
	v.mu.Unlock()
	ch := v.group.DoChan(fmt.Sprintf("%s#%d", key, signed), func() (any, error) {
		// A flight that ended between this caller's look at the cache
		// and its joining has left its answer there: no second read.
		if r, ok := v.Cached(req); ok {
			v.metrics.Results.WithLabelValues(resultCached).Inc()
			return r, nil
		}
		// The answer serves every caller: it is not cut short by the
		// first one's deadline.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.Timeout)
		defer cancel()
		r := v.check(cctx, req)
		v.metrics.Results.WithLabelValues(metricResult(r)).Inc()
		if r.Reason != imagesv1alpha1.VerificationError {
			v.remember(key, r, signed)
		}
		return r, nil
	})
	select {
	case out := <-ch:
		return out.Val.(Result)
	case <-ctx.Done():
		return Result{Reason: imagesv1alpha1.VerificationError, CheckedAt: v.clock.Now(),
			Message: fmt.Sprintf("signatures of %s not read in time: %v", req.Digest, ctx.Err())}
	}
}

// Metric results of imagepin_verification_total.
const (
	resultCached = "cached"
)

func metricResult(r Result) string { return strings.ToLower(string(r.Reason)) }

func (v *Verifier) remember(key string, r Result, signed uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !r.Verified && v.signed != signed {
		return
	}
	if _, ok := v.cache[key]; !ok && len(v.cache) >= maxEntries {
		var oldest string
		var at time.Time
		for k, e := range v.cache {
			if oldest == "" || e.CheckedAt.Before(at) {
				oldest, at = k, e.CheckedAt
			}
		}
		delete(v.cache, oldest)
	}
	v.cache[key] = r
}

// cacheKey: a digest's signatures live in its repository, so the answer
// is per repository (named as push events name it), digest and policy.
func cacheKey(req Request) string {
	repo := req.Image
	if t, err := registry.TagRefOf(req.Image); err == nil {
		repo = t.Repository
	}
	id := ""
	if req.Policy != nil {
		id = req.Policy.ID
	}
	return repo + "@" + req.Digest + "|" + id
}

// Signed is told that a signature of digest was pushed to repository (as
// registry.TagRef names it): every remembered answer that the digest did
// not verify is dropped, whatever the policy, so the next check reads the
// signatures again. A verified answer stays: a new signature does not
// unsign a digest.
func (v *Verifier) Signed(repository, digest string) {
	prefix := repository + "@" + digest + "|"
	v.mu.Lock()
	defer v.mu.Unlock()
	v.signed++
	for k, r := range v.cache {
		if !r.Verified && strings.HasPrefix(k, prefix) {
			delete(v.cache, k)
		}
	}
}

// check reads the signatures and verifies them, without the cache.
func (v *Verifier) check(ctx context.Context, req Request) Result {
	now := v.clock.Now()
	if req.Policy == nil {
		return Result{Reason: imagesv1alpha1.VerificationError, CheckedAt: now, Message: "no verification policy"}
	}
	var f *found
	err := v.source.WithRepository(ctx, req.Image, req.Keychain, func(ctx context.Context, repo name.Repository, p *remote.Puller) error {
		var err error
		f, err = read(ctx, repo, p, req.Digest, req.Policy)
		return err
	})
	if err != nil {
		return Result{Reason: imagesv1alpha1.VerificationError, CheckedAt: now,
			Message: fmt.Sprintf("signatures of %s could not be read, so it counts as unverified: %s", req.Digest, oneLine(err.Error()))}
	}
	r := judge(f, req.Digest)
	r.CheckedAt = now
	return r
}

// judge decides from the signatures read: one trusted signature verifies
// the digest; otherwise the most telling reason why not.
func judge(f *found, digest string) Result {
	if f.none() {
		return Result{Reason: imagesv1alpha1.VerificationUnsigned,
			Message: "no signature: neither a cosign .sig tag nor a Sigstore bundle referrer for " + digest}
	}
	var invalid, untrusted []string
	for _, o := range f.outcomes {
		if o.verified {
			return Result{Verified: true, Reason: imagesv1alpha1.VerificationVerified, Message: "signed by " + o.by}
		}
		invalid, untrusted = collect(o, invalid, untrusted)
	}
	invalid = append(invalid, f.malformed...)
	if len(untrusted) > 0 {
		return Result{Reason: imagesv1alpha1.VerificationUntrusted, Message: summarize(untrusted, invalid)}
	}
	return Result{Reason: imagesv1alpha1.VerificationInvalid, Message: summarize(invalid, nil)}
}

func collect(o outcome, invalid, untrusted []string) ([]string, []string) {
	if o.untrust != "" {
		untrusted = append(untrusted, o.untrust)
	}
	if o.invalid != "" {
		invalid = append(invalid, o.invalid)
	}
	return invalid, untrusted
}

func summarize(first, then []string) string {
	all := append(append([]string{}, first...), then...)
	if len(all) > 3 {
		all = append(all[:3], fmt.Sprintf("and %d more", len(all)-3))
	}
	return strings.Join(all, "; ")
}

// Truncate keeps s within n bytes, cut on a character boundary, "..."
// saying so.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// Metrics of verification.
type Metrics struct {
	// Results counts verifications by result: verified, unsigned,
	// untrusted, invalid, error (the registry failed), cached (answered
	// from memory, no request).
	Results *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg, if not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{Results: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "imagepin_verification_total",
		Help: "Signature verifications of digests, by result: verified, unsigned, untrusted, invalid, error (registry failure: fail closed), cached (answered from memory).",
	}, []string{"result"})}
	for _, r := range []string{"verified", "unsigned", "untrusted", "invalid", "error", resultCached} {
		m.Results.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.Results)
	}
	return m
}
