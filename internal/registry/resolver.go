package registry

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
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

// maxPlatformEntries bounds the cache of index children; a digest's
// children never change, so entries are dropped only to bound memory.
const maxPlatformEntries = 10000

// Every sweepEvery fetches, cache entries nobody asked about for idleAfter
// are dropped, so tags and credentials that went away (a rotated cloud
// token changes the credential's identity) do not pile up.
const (
	sweepEvery = 256
	idleAfter  = 48 * time.Hour
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
	// plain HTTP or TLS without verification.
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
	// Keychain supplies credentials; nil is anonymous.
	Keychain authn.Keychain
	// TTL is how long a resolution is reused: the ImagePin's interval.
	TTL time.Duration
	// FreshSince, if set, reuses a resolution only if it was made at or
	// after this time, instead of by age: the controller passes the start
	// of the current tick of the ImagePin's interval, so that every lookup
	// of one check (however long the registry budget makes it) and of
	// every ImagePin on that tick shares one resolution.
	FreshSince time.Time
	// Timeout, if shorter than the resolver's, bounds this caller's wait;
	// the resolution itself goes on and fills the cache.
	Timeout time.Duration
}

// Result is what a tag points to.
type Result struct {
	// Digest is what a kubelet would pull: the index digest of a
	// multi-arch image.
	Digest string
	// Platforms are the digests of an index's platform manifests; empty
	// for a single-platform image.
	Platforms []string
	// ResolvedAt is when the registry last confirmed Digest.
	ResolvedAt time.Time
	// Stale is true when Digest is the last good answer, served because
	// the registry failed; Resolve then also returns the error.
	Stale bool
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

	group singleflight.Group

	mu        sync.Mutex
	fetches   int
	cache     map[string]*entry
	pullers   map[string]*remote.Puller
	platforms map[string][]string
}

// entry is the cache's memory of one tag under one credential.
type entry struct {
	digest     string
	resolvedAt time.Time // last success
	checkedAt  time.Time // when the last attempt began
	err        error     // of the last attempt
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
		cache:     map[string]*entry{},
		pullers:   map[string]*remote.Puller{},
		platforms: map[string][]string{},
	}, nil
}

// Resolve returns what req.Image's tag points to. With a fresh cache entry
// it sends nothing; concurrent callers for one tag and credential share one
// request. When the registry fails, the error says why, and if a digest was
// confirmed within MaxStale it is returned too, marked Stale. An image of a
// registry outside AllowedRegistries fails at once, and nothing is sent.
func (r *Resolver) Resolve(ctx context.Context, req Request) (Result, error) {
	tag, err := r.parseTag(req.Image)
	if err != nil {
		return Result{}, err
	}
	if err := r.allowed.check(tag.RegistryStr()); err != nil {
		return Result{}, fmt.Errorf("resolve %s: %w", tag, err)
	}
	auth, id, secrets, err := credentialFor(ctx, req.Keychain, tag.Context())
	if err != nil {
		return Result{}, fmt.Errorf("credentials for %s: %w", tag.Context().RegistryStr(), err)
	}
	key := tag.Context().Name() + ":" + tag.TagStr() + "|" + id

	if res, ok, err := r.fromCache(key, req); ok {
		r.metrics.CacheResults.WithLabelValues(resultHit).Inc()
		return res, err
	}

	ran, hit := false, false
	ch := r.group.DoChan(key, func() (any, error) {
		ran = true
		// A fetch may have finished between the cache check above and
		// joining the group: look again, so it is not repeated.
		if res, ok, err := r.fromCache(key, req); ok {
			hit = true
			return res, err
		}
		return r.fetch(tag, auth, id, key, secrets)
	})
	wait := r.opts.Timeout
	if req.Timeout > 0 && req.Timeout < wait {
		wait = req.Timeout
	}
	// A caller's deadline is real time, whatever clock drives the cache.
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case out := <-ch:
		res := out.Val.(Result)
		r.countResult(ran, hit, res, out.Err)
		return res, out.Err
	case <-ctx.Done():
		return r.staleOnly(key), fmt.Errorf("resolve %s: %w", tag, ctx.Err())
	case <-timer.C:
		return r.staleOnly(key), fmt.Errorf("resolve %s: no answer from registry %s within %s", tag, tag.RegistryStr(), wait)
	}
}

func (r *Resolver) countResult(ran, hit bool, res Result, err error) {
	switch {
	case hit:
		r.metrics.CacheResults.WithLabelValues(resultHit).Inc()
	case !ran:
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
	if host := registryHost(ref); r.insecure[host] || r.insecure[hostname(host)] {
		opts = append(opts, name.Insecure)
	}
	tag, err := name.NewTag(ref, opts...)
	if err != nil {
		return name.Tag{}, fmt.Errorf("%q is not an image reference with a tag: %w", image, err)
	}
	return tag, nil
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
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		return host[:i]
	}
	return host
}

// fromCache answers from a fresh entry: a success, or a failure still
// within its TTL (a failing registry is asked once per TTL, not per caller).
func (r *Resolver) fromCache(key string, req Request) (res Result, ok bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.cache[key]
	if e == nil {
		return Result{}, false, nil
	}
	if !req.FreshSince.IsZero() {
		if e.checkedAt.Before(req.FreshSince) {
			return Result{}, false, nil
		}
	} else if r.clock.Since(e.checkedAt) >= req.TTL {
		return Result{}, false, nil
	}
	return r.resultOf(e), true, e.err
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

// fetch asks the registry; it runs once per key at a time. Its deadline is
// the resolver's, not a caller's, so that a caller giving up early does not
// waste the request for the others.
func (r *Resolver) fetch(tag name.Tag, auth authn.Authenticator, id, key string, secrets []string) (Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.opts.Timeout)
	defer cancel()

	// An answer counts from when it was asked for: one asked before a
	// tick began (FreshSince) must not pass for that tick's.
	started := r.clock.Now()
	digest, err := r.resolveDigest(ctx, tag, auth, id)
	now := r.clock.Now()

	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.cache[key]
	if e == nil {
		e = &entry{}
		r.cache[key] = e
	}
	e.checkedAt = started
	r.fetches++
	if r.fetches%sweepEvery == 0 {
		r.sweepLocked(now)
	}
	if err != nil {
		e.err = redact(explain(tag, err, r.opts.Timeout), secrets)
		return r.resultOf(e), e.err
	}
	e.digest, e.resolvedAt, e.err = digest, now, nil
	return r.resultOf(e), nil
}

// sweepLocked drops idle cache entries; r.mu is held. An entry whose
// digest may still be served stale is kept.
func (r *Resolver) sweepLocked(now time.Time) {
	for k, e := range r.cache {
		if now.Sub(e.checkedAt) > max(idleAfter, r.opts.MaxStale) {
			delete(r.cache, k)
		}
	}
}

// resolveDigest HEADs the tag and, for an index seen for the first time,
// GETs it once by digest to learn its platforms.
func (r *Resolver) resolveDigest(ctx context.Context, tag name.Tag, auth authn.Authenticator, id string) (string, error) {
	p, err := r.puller(tag.Context().Registry, auth, id)
	if err != nil {
		return "", err
	}
	desc, err := p.Head(ctx, tag)
	if err != nil && headNotAnswered(err) {
		// The registry does not answer HEAD properly: GET the manifest
		// instead; its digest is computed from the body (and the body
		// checked against the digest header, if the GET has a valid one).
		r.metrics.ManifestGets.WithLabelValues(tag.RegistryStr(), "fallback").Inc()
		d, gerr := p.Get(ctx, tag)
		if gerr != nil {
			return "", &fallbackError{head: err, get: gerr}
		}
		desc, err = &d.Descriptor, nil
	}
	if err != nil {
		return "", err
	}
	digest := desc.Digest.String()
	if !validDigest.MatchString(digest) {
		// Never handed on, so never written into a workload.
		return "", fmt.Errorf("registry %s gave %q for the tag, not a sha256 digest; not used", tag.RegistryStr(), digest)
	}
	if desc.MediaType.IsIndex() && !r.knowsPlatforms(digest) {
		// The digest is known; its platforms are a bonus learned once. If
		// the GET fails (a pull limit, say), it is tried again next time.
		_ = r.learnPlatforms(ctx, p, tag.Context().Digest(digest))
	}
	return digest, nil
}

// Platforms returns the platform manifest digests of an index the resolver
// has seen, or nothing for any other digest. It sends no request.
func (r *Resolver) Platforms(digest string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.platforms[digest]
}

func (r *Resolver) knowsPlatforms(digest string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.platforms[digest]
	return ok
}

// learnPlatforms GETs an index by digest (the body is verified against it)
// and remembers its children for good: a digest's content never changes.
func (r *Resolver) learnPlatforms(ctx context.Context, p *remote.Puller, ref name.Digest) error {
	r.metrics.ManifestGets.WithLabelValues(ref.RegistryStr(), "index").Inc()
	d, err := p.Get(ctx, ref)
	if err != nil {
		return fmt.Errorf("read index %s: %w", ref.DigestStr(), err)
	}
	idx, err := v1.ParseIndexManifest(strings.NewReader(string(d.Manifest)))
	if err != nil {
		return fmt.Errorf("parse index %s: %w", ref.DigestStr(), err)
	}
	children := make([]string, 0, len(idx.Manifests))
	for _, m := range idx.Manifests {
		children = append(children, m.Digest.String())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.platforms) >= maxPlatformEntries {
		for k := range r.platforms { // drop an arbitrary entry; it is refetched if needed
			delete(r.platforms, k)
			break
		}
	}
	r.platforms[ref.DigestStr()] = children
	return nil
}

// puller returns the authenticated transport for one registry and
// credential, made once and reused, so that a resolution costs one request
// instead of a ping, a token and a HEAD.
func (r *Resolver) puller(reg name.Registry, auth authn.Authenticator, id string) (*remote.Puller, error) {
	key := reg.Name() + "|" + id
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.pullers[key]; ok {
		return p, nil
	}
	p, err := remote.NewPuller(
		remote.WithAuth(auth),
		remote.WithTransport(r.transport),
		remote.WithUserAgent(r.opts.UserAgent),
		// 429 is not retried here: the transport honours Retry-After.
		remote.WithRetryStatusCodes(http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout),
		remote.WithRetryBackoff(remote.Backoff{Duration: 250 * time.Millisecond, Factor: 2, Jitter: 0.5, Steps: 3}),
	)
	if err != nil {
		return nil, err
	}
	r.pullers[key] = p
	return p, nil
}

// headNotAnswered reports whether a HEAD failed in a way a GET can work
// around: the method refused, or a response without a usable digest.
// go-containerregistry reports the latter only as text.
func headNotAnswered(err error) bool {
	var malformed *MalformedDigestError
	if errors.As(err, &malformed) {
		return true
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		return terr.StatusCode == http.StatusMethodNotAllowed || terr.StatusCode == http.StatusNotImplemented
	}
	msg := err.Error()
	return strings.Contains(msg, "did not include Docker-Content-Digest") ||
		strings.Contains(msg, "did not include Content-Type") ||
		strings.Contains(msg, "did not include Content-Length") ||
		strings.Contains(msg, "cannot parse hash") ||
		strings.Contains(msg, "unsupported hash")
}

// fallbackError is a HEAD that was not answered properly and the GET that
// was to replace it failing too. The GET's error comes first for
// errors.As: it says what the registry answers.
type fallbackError struct{ head, get error }

func (e *fallbackError) Error() string {
	return fmt.Sprintf("%s (the manifest was fetched because %s)", describe(e.get), describe(e.head))
}

func (e *fallbackError) Unwrap() []error { return []error{e.get, e.head} }

// describe returns the clearest text of one request's failure: the
// resolver's own errors without the *url.Error around them.
func describe(err error) string {
	var (
		malformed *MalformedDigestError
		mismatch  *DigestMismatchError
		tooLarge  *TooLargeError
		limited   *RateLimitedError
	)
	switch {
	case errors.As(err, &mismatch):
		return mismatch.Error()
	case errors.As(err, &tooLarge):
		return tooLarge.Error()
	case errors.As(err, &malformed):
		return malformed.Error()
	case errors.As(err, &limited):
		return limited.Error()
	}
	return err.Error()
}

// explain turns a registry failure into a sentence for a condition
// message: it names the registry and says what went wrong first, the
// details after.
func explain(tag name.Tag, err error, timeout time.Duration) error {
	reg := tag.RegistryStr()
	// When a GET replaced a HEAD, what the GET met decides the headline.
	cause := err
	var fb *fallbackError
	if errors.As(err, &fb) {
		cause = fb.get
	}
	var (
		rl       *RateLimitedError
		mismatch *DigestMismatchError
		tooLarge *TooLargeError
		bad      *MalformedDigestError
		terr     *transport.Error
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		certErr  *tls.CertificateVerificationError
		opErr    *net.OpError
	)
	switch {
	case errors.As(cause, &rl), errors.As(cause, &mismatch), errors.As(cause, &tooLarge), errors.As(cause, &bad):
		// The resolver's own errors say it all; the *url.Error around
		// them only repeats the URL.
		if fb != nil {
			return fmt.Errorf("resolve %s: %w", tag, fb)
		}
		return fmt.Errorf("resolve %s: %w", tag, &redactedError{msg: describe(err), err: err})
	case errors.As(cause, &terr):
		return explainStatus(tag, terr, err)
	case errors.Is(cause, context.DeadlineExceeded):
		return fmt.Errorf("resolve %s: no answer from registry %s within %s (--registry-timeout): %w", tag, reg, timeout, err)
	case errors.As(cause, &unknown), errors.As(cause, &hostname):
		return fmt.Errorf("resolve %s: the TLS certificate of registry %s is not trusted (add its CA with --registry-ca-file): %w", tag, reg, err)
	case errors.As(cause, &certErr):
		return fmt.Errorf("resolve %s: the TLS certificate of registry %s could not be verified: %w", tag, reg, err)
	case errors.As(cause, &opErr) && opErr.Op == "dial":
		return fmt.Errorf("resolve %s: registry %s is unreachable: %w", tag, reg, err)
	case errors.Is(cause, io.EOF), errors.Is(cause, io.ErrUnexpectedEOF), errors.Is(cause, syscall.ECONNRESET):
		return fmt.Errorf("resolve %s: registry %s closed the connection without an answer: %w", tag, reg, err)
	}
	return fmt.Errorf("resolve %s: registry %s: %w", tag, reg, err)
}

// explainStatus explains an HTTP error status from the registry or its
// token service; err is the whole failure, for the details.
func explainStatus(tag name.Tag, terr *transport.Error, err error) error {
	reg := tag.RegistryStr()
	token := terr.Request != nil && !strings.HasPrefix(terr.Request.URL.Path, "/v2/")
	switch terr.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("resolve %s: authentication failed for registry %s (check the pull secret): %w", tag, reg, err)
	case http.StatusTooManyRequests:
		return fmt.Errorf("resolve %s: registry %s is rate limiting imagepin: %w", tag, reg, err)
	case http.StatusNotFound:
		if !token {
			return fmt.Errorf("resolve %s: tag %q not found in %s: %w", tag, tag.TagStr(), tag.Context().Name(), err)
		}
	}
	for _, d := range terr.Errors {
		if !token && (d.Code == transport.ManifestUnknownErrorCode || d.Code == transport.NameUnknownErrorCode) {
			return fmt.Errorf("resolve %s: tag %q not found in %s: %w", tag, tag.TagStr(), tag.Context().Name(), err)
		}
	}
	status := fmt.Sprintf("%d %s", terr.StatusCode, http.StatusText(terr.StatusCode))
	switch {
	case token:
		return fmt.Errorf("resolve %s: the token service of registry %s failed (%s): %w", tag, reg, status, err)
	case terr.StatusCode >= 500:
		return fmt.Errorf("resolve %s: registry %s failed (%s): %w", tag, reg, status, err)
	}
	return fmt.Errorf("resolve %s: registry %s answered %s: %w", tag, reg, status, err)
}

// redactedError is an error whose text has had credentials taken out. Its
// chain is kept for errors.As; only its text is shown.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redact removes secrets from err's text: a registry or token service may
// echo what it was sent, and the text goes into status, events and logs.
func redact(err error, secrets []string) error {
	msg := err.Error()
	clean := msg
	for _, s := range secrets {
		clean = strings.ReplaceAll(clean, s, "<redacted>")
	}
	if clean == msg {
		return err
	}
	return &redactedError{msg: clean, err: err}
}

// credentialFor resolves the keychain for a repository and names the
// credential with an opaque identity (a hash, never the secret itself), so
// that the cache and the transports of different credentials stay apart.
// It also returns the secrets in the forms they travel in, for redact.
func credentialFor(ctx context.Context, kc authn.Keychain, repo name.Repository) (authn.Authenticator, string, []string, error) {
	if kc == nil {
		return authn.Anonymous, "anonymous", nil, nil
	}
	auth, err := authn.Resolve(ctx, kc, repo)
	if err != nil {
		return nil, "", nil, err
	}
	cfg, err := authn.Authorization(ctx, auth)
	if err != nil {
		return nil, "", nil, err
	}
	if cfg == nil || *cfg == (authn.AuthConfig{}) {
		return authn.Anonymous, "anonymous", nil, nil
	}
	h := sha256.New()
	for _, s := range []string{cfg.Username, cfg.Password, cfg.Auth, cfg.IdentityToken, cfg.RegistryToken} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return authn.FromConfig(*cfg), hex.EncodeToString(h.Sum(nil)[:12]), secretsOf(cfg), nil
}

// secretsOf lists the secrets of a credential as they may come back in a
// registry's words: as given, and as a Basic Authorization carries them.
// Usernames are not secret, and help to tell which credential failed.
func secretsOf(cfg *authn.AuthConfig) []string {
	var out []string
	add := func(s string) {
		if len(s) >= 4 {
			out = append(out, s)
		}
	}
	add(cfg.Password)
	add(cfg.Auth)
	add(cfg.IdentityToken)
	add(cfg.RegistryToken)
	if cfg.Password != "" {
		add(base64.StdEncoding.EncodeToString([]byte(cfg.Username + ":" + cfg.Password)))
	}
	// The longest first, so that a secret inside another is not left
	// half-replaced.
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}
