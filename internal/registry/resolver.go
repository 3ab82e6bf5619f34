package registry

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"
)

// Defaults of Options, and of the manager's flags.
const (
	DefaultQPS      = 10
	DefaultBurst    = 20
	DefaultTimeout  = 10 * time.Second
	DefaultMaxStale = 24 * time.Hour
)

// Every sweepEvery fetches, or sweepInterval, cache entries nobody asked
// about for idleAfter are dropped, so tags and credentials that went away
// (a pull secret deleted or edited) do not pile up; so are transports
// unused for pullerIdleAfter.
const (
	sweepEvery      = 256
	sweepInterval   = 10 * time.Minute
	idleAfter       = 48 * time.Hour
	pullerIdleAfter = time.Hour
)

// Options configure a Resolver.
type Options struct {
	// QPS and Burst are the request budget of each registry host.
	QPS   float64
	Burst int
	// Timeout is the deadline of one resolution, HEAD and retries included.
	Timeout time.Duration
	// MaxStale is how long after its last confirmation a digest is still
	// served, with the error, when its registry fails; 0 never serves one.
	MaxStale time.Duration
	// InsecureRegistries are hosts ("host" or "host:port") reached over
	// plain HTTP or TLS without verification. No other registry is ever
	// spoken to over plain HTTP, whatever its address (private, *.local,
	// loopback): go-containerregistry's fallback to HTTP is refused.
	InsecureRegistries []string
	// CAFile adds PEM certificates to the system roots for verifying
	// registries (SSL_CERT_FILE is honoured as well).
	CAFile string
	// AllowedRegistries, if not empty, are the only registries contacted
	// (entries "host", "host:port", "*.domain", "*.domain:port"; see
	// AllowedRegistriesUsage). An image of any other registry fails with a
	// *NotAllowedError before any request. The list is of registries, as
	// image references name them: the token service an allowed registry's
	// challenge names (auth.docker.io for Docker Hub) is part of talking to
	// that registry, and is not checked against it.
	AllowedRegistries []string
	// UserAgent is sent with every request.
	UserAgent string
	// Clock drives TTLs, staleness and Retry-After; tests inject a fake.
	Clock clock.Clock
	// Metrics, if nil, are created unregistered.
	Metrics *Metrics
}

// Request asks what a tag points to.
type Request struct {
	// Image is the reference as a workload names it. A digest on it is
	// ignored: the tag is resolved. A reference without a tag means :latest.
	Image string
	// Keychain supplies credentials; nil is anonymous. Every credential it
	// has for the registry is tried in turn while the registry refuses
	// them (401, 403), then anonymous access. The cache and the transports
	// know a credential of Keychains or CLIKeychain by where it comes from,
	// not by its token; one of any other keychain by its whole value.
	Keychain authn.Keychain
	// TTL is how long a resolution is reused: the ImagePin's interval.
	TTL time.Duration
	// FreshSince, if set, reuses a resolution only if it was made at or
	// after this time, instead of by age: the controller passes the start
	// of the current tick of the ImagePin's interval, so that every lookup
	// of one check (however long the registry budget makes it) and of
	// every ImagePin on that tick shares one resolution.
	FreshSince time.Time
	// Interval, with FreshSince, is the ImagePin's interval: when requests
	// to the registry were still waiting for its budget at FreshSince (a
	// round that began in the previous tick outlasted it), an answer
	// since FreshSince - Interval serves too, so that a tag the round
	// asked for just before the tick is not asked again just after it.
	// Each tag is then asked once per interval, however long the rounds.
	Interval time.Duration
	// Timeout, if shorter than the resolver's, bounds this caller's wait;
	// the resolution itself goes on and fills the cache.
	Timeout time.Duration
	// AnswerBy, if set, is when a caller that holds an earlier good answer
	// stops waiting for a fresh one (real time): the registry budget can
	// make a round of many tags last seconds, and a check that waited for
	// all of them would report a tag seen early in the round only at the
	// round's end. Past AnswerBy, Resolve returns the last good answer
	// marked Behind, and the resolution goes on; Pending is closed when it
	// ends, and a Resolve then answers from it.
	AnswerBy time.Time
}

// Result is what a tag points to.
type Result struct {
	// Digest is what a kubelet would pull: the index digest of a
	// multi-arch image.
	Digest string
	// Platforms are the digests of an index's platform manifests, once
	// learnt (LearnPlatforms); empty for a single-platform image, and for
	// an index whose platforms nobody needed yet.
	Platforms []string
	// ResolvedAt is when the registry last confirmed Digest.
	ResolvedAt time.Time
	// Stale is true when Digest is the last good answer, served because
	// the registry failed; Resolve then also returns the error.
	Stale bool
	// Behind is true when Digest is the last good answer, served because
	// the fresh one was not there by Request.AnswerBy; Pending is closed
	// when the resolution under way ends.
	Behind  bool
	Pending <-chan struct{}
}

// Resolver resolves tags to digests. It is safe for concurrent use, and one
// is shared by everything in a process.
type Resolver struct {
	opts      Options
	clock     clock.Clock
	metrics   *Metrics
	transport http.RoundTripper
	insecure  map[string]bool
	allowed   allowList

	learning  singleflight.Group // LearnPlatforms, by digest
	checking  singleflight.Group // Available, by digest, credentials and tick
	keeping   singleflight.Group // Keep and Unkeep, by digest and credentials
	keepLocks keepLocks          // Keep and Unkeep, by tag

	mu          sync.Mutex
	fetches     int
	lastSweep   time.Time
	cache       map[string]*entry
	calls       map[string]*call // resolutions in flight, by cache key
	pullers     map[string]*pullerEntry
	platforms   map[string][]string
	indexes     map[string]bool // indexes whose platforms are not read yet
	learnFailed map[string]learnFailure
	hints       map[TagRef]time.Time   // hints.go
	known       map[TagRef]int         // cache entries per tag and per repository
	avail       map[string]*availEntry // Available's answers (availability.go)
	availFailed map[string]time.Time   // when Available last failed, by key
	kept        map[string]keepDone    // how Keep and Unkeep last came out (keep.go)
}

// entry is the cache's memory of one tag under one list of credentials.
type entry struct {
	digest     string
	resolvedAt time.Time // last success
	checkedAt  time.Time // when the last attempt began
	err        error     // of the last attempt
}

// call is a resolution in flight, which callers join instead of asking
// the registry again.
type call struct {
	// started is when the answer was asked for: when the call began, then
	// when its turn in the host's budget came (sent). Once sent, callers
	// fresh since later than started do not join. Guarded by Resolver.mu.
	started time.Time
	sent    bool
	// why the cache and the calls in flight did not serve (a debug log).
	why  why
	done chan struct{}
	res  Result
	err  error
}

// New returns a Resolver.
func New(o Options) (*Resolver, error) {
	if o.QPS <= 0 {
		o.QPS = DefaultQPS
	}
	if o.Burst <= 0 {
		o.Burst = DefaultBurst
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.UserAgent == "" {
		o.UserAgent = "imagepin"
	}
	allowed, err := newAllowList(o.AllowedRegistries)
	if err != nil {
		return nil, err
	}
	secure, insecure, err := baseTransports(o.CAFile)
	if err != nil {
		return nil, err
	}
	hosts := map[string]bool{}
	for _, h := range o.InsecureRegistries {
		hosts[strings.TrimSpace(h)] = true
	}
	return &Resolver{
		opts:     o,
		clock:    o.Clock,
		metrics:  o.Metrics,
		insecure: hosts,
		allowed:  allowed,
		transport: &politeTransport{
			secure: secure, insecure: insecure, insecureHosts: hosts,
			qps: rate.Limit(o.QPS), burst: o.Burst,
			clock: o.Clock, metrics: o.Metrics,
			hosts: map[string]*hostState{},
		},
		lastSweep:   o.Clock.Now(),
		cache:       map[string]*entry{},
		calls:       map[string]*call{},
		pullers:     map[string]*pullerEntry{},
		platforms:   map[string][]string{},
		indexes:     map[string]bool{},
		learnFailed: map[string]learnFailure{},
		hints:       map[TagRef]time.Time{},
		known:       map[TagRef]int{},
		avail:       map[string]*availEntry{},
		availFailed: map[string]time.Time{},
		kept:        map[string]keepDone{},
	}, nil
}

// Key names what a Resolve of req asks the registry for (one tag with one
// set of credentials: Resolve shares one request among callers of the
// same key) and the registry host it asks: a caller planning many
// resolutions asks each key once. It sends nothing; an error is the one
// Resolve would return before asking.
func (r *Resolver) Key(ctx context.Context, req Request) (key, host string, err error) {
	tag, _, key, err := r.prepare(ctx, req)
	if err != nil {
		return "", "", err
	}
	return key, tag.RegistryStr(), nil
}

// Burst is the number of requests the resolver sends to one registry host
// at once before its budget paces them (Options.Burst).
func (r *Resolver) Burst() int { return r.opts.Burst }

// prepare reads req's tag and credentials, and the cache key they make;
// an image of a registry that is not allowed is refused.
func (r *Resolver) prepare(ctx context.Context, req Request) (name.Tag, []credential, string, error) {
	tag, err := r.parseTag(req.Image)
	if err != nil {
		return name.Tag{}, nil, "", err
	}
	if err := r.allowed.check(tag.RegistryStr()); err != nil {
		return name.Tag{}, nil, "", fmt.Errorf("resolve %s: %w", tag, err)
	}
	creds, err := credentialsOf(ctx, req.Keychain, tag.Context())
	if err != nil {
		return name.Tag{}, nil, "", fmt.Errorf("credentials for %s: %w", tag.Context().RegistryStr(), err)
	}
	return tag, creds, cacheKey(tag, creds), nil
}

// Resolve returns what req.Image's tag points to. With a fresh cache entry
// it sends nothing; concurrent callers for one tag and credential share one
// request. When the registry fails, the error says why, and if a digest was
// confirmed within MaxStale it is returned too, marked Stale. An image of a
// registry outside AllowedRegistries fails at once, and nothing is sent.
func (r *Resolver) Resolve(ctx context.Context, req Request) (Result, error) {
	tag, creds, key, err := r.prepare(ctx, req)
	if err != nil {
		return Result{}, err
	}

	asked := req.FreshSince
	c, hit, leader := r.lookup(key, tag.RegistryStr(), &req)
	if hit != nil {
		r.metrics.CacheResults.WithLabelValues(resultHit).Inc()
		return hit.res, hit.err
	}
	if leader {
		if l := logr.FromContextOrDiscard(ctx).V(1); l.Enabled() {
			l.Info("asking the registry", "image", tag.String(), "credentials", credentialNames(creds), "why", c.why.String(), "freshSince", asked, "servedSince", req.FreshSince)
		}
		go func() {
			c.res, c.err = r.fetch(tag, creds, key, c)
			r.mu.Lock()
			if r.calls[key] == c {
				delete(r.calls, key)
			}
			r.mu.Unlock()
			close(c.done)
		}()
	}
	wait := r.opts.Timeout
	if req.Timeout > 0 && req.Timeout < wait {
		wait = req.Timeout
	}
	// A caller's deadline is real time, whatever clock drives the cache.
	timer := time.NewTimer(wait)
	defer timer.Stop()
	// Past AnswerBy, a caller holding a last good answer is given it
	// (Behind) instead of waiting on.
	var giveUp <-chan time.Time
	var prev Result
	if !req.AnswerBy.IsZero() {
		var ok bool
		if prev, _, ok = r.lastAnswer(key, req); ok {
			by := time.NewTimer(time.Until(req.AnswerBy))
			defer by.Stop()
			giveUp = by.C
		}
	}
	select {
	case <-c.done:
		r.countResult(leader, c.res, c.err)
		return c.res, c.err
	case <-giveUp:
		select {
		case <-c.done: // both were ready: the answer
			r.countResult(leader, c.res, c.err)
			return c.res, c.err
		default:
		}
		if res, fresh, ok := r.lastAnswer(key, req); ok && fresh {
			// Answered in the instant before done closed.
			r.countResult(leader, res, nil)
			return res, nil
		}
		r.metrics.CacheResults.WithLabelValues(resultBehind).Inc()
		if leader {
			// How the resolution ends is counted when it does.
			go func() {
				<-c.done
				r.countResult(true, c.res, c.err)
			}()
		}
		prev.Behind, prev.Pending = true, c.done
		return prev, nil
	case <-ctx.Done():
		return r.staleOnly(key), fmt.Errorf("resolve %s: %w", tag, ctx.Err())
	case <-timer.C:
		return r.staleOnly(key), &WaitError{msg: fmt.Sprintf("resolve %s: no answer from registry %s within %s", tag, tag.RegistryStr(), wait)}
	}
}

// lookup answers from a fresh cache entry (hit), or joins a resolution in
// flight that is fresh enough for req, or starts one (leader). One lock
// covers all three, so no answer falls between the cache and the calls.
func (r *Resolver) lookup(key, host string, req *Request) (c *call, hit *call, leader bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Nothing asked for before a push event's hint is fresh.
	hinted := r.hintedLocked(tagRefOfKey(key))
	e := r.cache[key]
	serves := func() bool { return e != nil && r.fresh(e.checkedAt, *req) && !e.checkedAt.Before(hinted) }
	// Not fresh for the caller's tick, it still serves when the round that
	// asked for it outlasted the tick (Request.Interval).
	if serves() || (r.roundOutlastedTick(host, req) && serves()) {
		return nil, &call{res: r.resultOf(e), err: e.err}, false
	}
	// A resolution that began before the caller's tick is not its answer:
	// a new one starts, and becomes the one later callers join.
	// One still waiting for its turn in the host's budget is: its answer
	// will be asked for after the caller's tick began, and after any hint.
	if c := r.calls[key]; c != nil && (!c.sent || ((req.FreshSince.IsZero() || !c.started.Before(req.FreshSince)) && !c.started.Before(hinted))) {
		return c, nil, false
	}
	c = &call{started: r.clock.Now(), done: make(chan struct{})}
	switch old := r.calls[key]; {
	case old != nil && old.started.Before(hinted):
		c.why = why{what: whyHintedCall, at: old.started}
	case old != nil:
		c.why = why{what: whyEarlyCall, at: old.started}
	case e == nil:
		c.why = why{what: whyNoAnswer}
	case e.checkedAt.Before(hinted):
		c.why = why{what: whyHinted, at: e.checkedAt}
	default:
		c.why = why{what: whyEarly, at: e.checkedAt}
	}
	r.calls[key] = c
	return c, nil, true
}

// why says, for a debug log, why a resolution went to the registry.
type why struct {
	what int
	// at: when the answer or the call that did not serve was asked for.
	at time.Time
}

const (
	whyNoAnswer = iota
	whyEarly
	whyHinted
	whyEarlyCall
	whyHintedCall
)

func (w why) String() string {
	at := w.at.Format(time.RFC3339Nano)
	switch w.what {
	case whyEarly:
		return "the last answer was asked for at " + at + ", before the caller's window"
	case whyHinted:
		return "a push event came after the last answer was asked for at " + at
	case whyEarlyCall:
		return "the request in flight was asked for at " + at + ", before the caller's window"
	case whyHintedCall:
		return "a push event came after the request in flight was asked for at " + at
	}
	return "no answer yet"
}

// roundOutlastedTick moves req's FreshSince back by its Interval when
// requests to host were waiting for its budget as that tick began, and
// says whether it did.
func (r *Resolver) roundOutlastedTick(host string, req *Request) bool {
	if req.FreshSince.IsZero() || req.Interval <= 0 {
		return false
	}
	pt, ok := r.transport.(*politeTransport)
	if !ok || !pt.queuedAt(host, req.FreshSince) {
		return false
	}
	req.FreshSince = req.FreshSince.Add(-req.Interval)
	return true
}

// fresh says whether an answer asked for at checked may serve req.
func (r *Resolver) fresh(checked time.Time, req Request) bool {
	if !req.FreshSince.IsZero() {
		return !checked.Before(req.FreshSince)
	}
	return r.clock.Since(checked) < req.TTL
}

func (r *Resolver) countResult(leader bool, res Result, err error) {
	switch {
	case !leader:
		r.metrics.CacheResults.WithLabelValues(resultCoalesced).Inc()
	case err != nil && res.Stale:
		r.metrics.CacheResults.WithLabelValues(resultStale).Inc()
	case err != nil:
		r.metrics.CacheResults.WithLabelValues(resultError).Inc()
	default:
		r.metrics.CacheResults.WithLabelValues(resultMiss).Inc()
	}
}

// parseTag reads the tag of an image reference, dropping a digest.
func (r *Resolver) parseTag(image string) (name.Tag, error) {
	ref := image
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	var opts []name.Option
	if r.isInsecure(registryHost(ref)) {
		opts = append(opts, name.Insecure)
	}
	tag, err := name.NewTag(ref, opts...)
	if err != nil {
		return name.Tag{}, fmt.Errorf("%q is not an image reference with a tag: %w", image, err)
	}
	return tag, nil
}

func (r *Resolver) isInsecure(host string) bool {
	return host != "" && (r.insecure[host] || r.insecure[hostname(host)])
}

// registryHost returns the registry part of a reference as written, or ""
// when it names none (Docker Hub).
func registryHost(ref string) string {
	i := strings.IndexByte(ref, '/')
	if i < 0 {
		return ""
	}
	first := ref[:i]
	if strings.ContainsAny(first, ".:") || first == "localhost" {
		return first
	}
	return ""
}

// hostname drops a port from host.
func hostname(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		return host[:i]
	}
	return host
}

// lastAnswer returns the cached answer for key if its last attempt
// succeeded, no push event came since it was asked for, and it is young
// enough to serve as a stale answer would (MaxStale): what a caller past
// its AnswerBy is given. fresh says whether it also serves req.
func (r *Resolver) lastAnswer(key string, req Request) (res Result, fresh, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.cache[key]
	if e == nil || e.digest == "" || e.err != nil || !r.servable(e) || e.checkedAt.Before(r.hintedLocked(tagRefOfKey(key))) {
		return Result{}, false, false
	}
	return r.resultOf(e), r.fresh(e.checkedAt, req), true
}

// staleOnly returns the last good answer for key, if still servable.
func (r *Resolver) staleOnly(key string) Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.cache[key]; e != nil && e.digest != "" && r.servable(e) {
		res := r.resultOf(e)
		res.Stale = true
		return res
	}
	return Result{}
}

// resultOf turns an entry into a Result; r.mu is held.
func (r *Resolver) resultOf(e *entry) Result {
	if e.err != nil && (e.digest == "" || !r.servable(e)) {
		return Result{}
	}
	return Result{
		Digest:     e.digest,
		Platforms:  r.platforms[e.digest],
		ResolvedAt: e.resolvedAt,
		Stale:      e.err != nil,
	}
}

func (r *Resolver) servable(e *entry) bool {
	return r.opts.MaxStale > 0 && r.clock.Since(e.resolvedAt) <= r.opts.MaxStale
}
