package receiver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/imagepin/imagepin/internal/registry"
)

// PathPrefix is where the endpoints are served: PathPrefix + endpoint
// (+ "/" + token for the endpoints authenticated by URL).
const PathPrefix = "/hooks/"

// Defaults of Options.
const (
	DefaultMaxBodyBytes = 1 << 20
	DefaultMinGap       = time.Second
	DefaultSenderQPS    = 20
	DefaultSenderBurst  = 100
	DefaultHintQPS      = 10
	DefaultHintBurst    = 100
)

// maxSenders bounds the per-sender budgets kept; past it, senders idle
// for a minute are forgotten, and if none is, new senders share one.
const maxSenders = 4096

// Hinter is the shared resolver: Hint makes its cached answers for a tag
// unfresh; Knows says whether any caller (the webhook included) asked
// about it.
type Hinter interface {
	Hint(registry.TagRef)
	Knows(registry.TagRef) bool
}

// Checker is the ImagePin controller: Names says whether an ImagePin names
// a tag, Recheck has those ImagePins checked now and says how many were
// queued and how many found the queue full.
type Checker interface {
	Names(registry.TagRef) bool
	Recheck(registry.TagRef) (queued, full int)
}

// Signatures is the signature verifier: a push of a digest's signature
// (cosign's "sha256-<hex>.sig" tag, or the "sha256-<hex>" referrers tag)
// makes its cached word that the digest did not verify unfresh.
type Signatures interface {
	Signed(repository, digest string)
}

// Options configure a Receiver.
type Options struct {
	Hinter  Hinter
	Checker Checker
	// Signatures, if set, hears of pushed signatures: the ImagePins
	// naming a tag of the repository are then checked at once, so a
	// digest signed after its push is rolled out in a second, not at the
	// next tick.
	Signatures Signatures
	// SecretDir holds one file per endpoint (named as the endpoint) with
	// its token or HMAC key; an endpoint without one is not served.
	SecretDir string
	// MaxBodyBytes bounds a body; larger ones are answered 413.
	MaxBodyBytes int64
	// MinGap is the least time between two hints of one tag, and when a
	// hint is confirmed.
	MinGap time.Duration
	// HintQPS and HintBurst bound the hints of all tags together; past
	// them a push is dropped and polling sees it.
	HintQPS   float64
	HintBurst int
	// SenderQPS and SenderBurst are each sender's (remote address's)
	// budget of authentic requests; past it, 429.
	SenderQPS   float64
	SenderBurst int
	// Leading, if set, says whether this manager is the leader; others
	// answer 503 so that the registry retries (and the Service finds the
	// leader), since only the leader's controller runs.
	Leading func() bool
	Clock   clock.WithDelayedExecution
	// Metrics, if nil, are created unregistered.
	Metrics *Metrics
}

// Receiver serves the push endpoints.
type Receiver struct {
	opts     Options
	metrics  *Metrics
	secrets  *secrets
	coalesce *coalescer

	mu      sync.Mutex
	senders map[string]*sender
	shared  *rate.Limiter
}

type sender struct {
	limit *rate.Limiter
	seen  time.Time
}

// New returns a Receiver.
func New(o Options) (*Receiver, error) {
	if o.Hinter == nil || o.Checker == nil {
		return nil, errors.New("receiver: a Hinter and a Checker are needed")
	}
	if o.SecretDir == "" {
		return nil, errors.New("receiver: a secret directory is needed (--receiver-secret-dir)")
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.MinGap <= 0 {
		o.MinGap = DefaultMinGap
	}
	if o.SenderQPS <= 0 {
		o.SenderQPS = DefaultSenderQPS
	}
	if o.SenderBurst <= 0 {
		o.SenderBurst = DefaultSenderBurst
	}
	if o.HintQPS <= 0 {
		o.HintQPS = DefaultHintQPS
	}
	if o.HintBurst <= 0 {
		o.HintBurst = DefaultHintBurst
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	// The answers an alert watches, from zero: a first 401 after a start
	// is an increase.
	for ep := range authOf {
		for _, code := range []int{http.StatusAccepted, http.StatusBadRequest, http.StatusUnauthorized} {
			o.Metrics.Requests.WithLabelValues(ep, strconv.Itoa(code))
		}
	}
	rc := &Receiver{
		opts:    o,
		metrics: o.Metrics,
		secrets: &secrets{dir: o.SecretDir, clock: o.Clock},
		senders: map[string]*sender{},
		shared:  rate.NewLimiter(rate.Limit(o.SenderQPS), o.SenderBurst),
	}
	rc.coalesce = &coalescer{
		gap: o.MinGap, clock: o.Clock, apply: rc.hint, gates: map[registry.TagRef]*gate{},
		budget:  rate.NewLimiter(rate.Limit(o.HintQPS), o.HintBurst),
		dropped: rc.metrics.HintsDropped.Inc,
	}
	return rc, nil
}

// hint makes the resolver ask again, then has the ImagePins check: in
// that order, so that their checks do not find the old answer fresh.
func (rc *Receiver) hint(t registry.TagRef) {
	rc.opts.Hinter.Hint(t)
	rc.recheck(t)
}

// recheck has the ImagePins naming t checked now, and counts them.
func (rc *Receiver) recheck(t registry.TagRef) {
	queued, full := rc.opts.Checker.Recheck(t)
	rc.metrics.Rechecks.WithLabelValues("queued").Add(float64(queued))
	rc.metrics.Rechecks.WithLabelValues("queue_full").Add(float64(full))
}

// ServeHTTP answers one notification.
func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	endpoint, token, ok := route(r.URL.Path)
	if !ok {
		rc.answer(w, "unknown", http.StatusNotFound, "no such endpoint; see README, Push events")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		rc.answer(w, endpoint, http.StatusMethodNotAllowed, "POST only")
		return
	}
	if rc.opts.Leading != nil && !rc.opts.Leading() {
		// A new connection may reach the leader behind a Service; this
		// one would come back here.
		w.Header().Set("Connection", "close")
		w.Header().Set("Retry-After", "5")
		rc.answer(w, endpoint, http.StatusServiceUnavailable, "not the leader; retry")
		return
	}
	secret := rc.secrets.of(endpoint)
	if len(secret) == 0 {
		rc.answer(w, endpoint, http.StatusNotFound, "endpoint not configured: no secret for it in --receiver-secret-dir")
		return
	}
	method := authOf[endpoint]
	// A token that needs no body is checked before the body is read.
	if method == authHeader || method == authPath {
		if !authentic(method, secret, r, token, nil) {
			rc.answer(w, endpoint, http.StatusUnauthorized, "not authentic")
			return
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, rc.opts.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			rc.answer(w, endpoint, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", rc.opts.MaxBodyBytes))
			return
		}
		rc.answer(w, endpoint, http.StatusBadRequest, "cannot read the body")
		return
	}
	if (method == authGitHub || method == authGeneric) && !authentic(method, secret, r, token, body) {
		rc.answer(w, endpoint, http.StatusUnauthorized, "not authentic")
		return
	}
	// Only authentic requests spend a sender's budget: requests without
	// the secret (behind an Ingress, all from one address) cannot crowd
	// out the registries'.
	if !rc.allow(r.RemoteAddr) {
		w.Header().Set("Retry-After", "1")
		rc.answer(w, endpoint, http.StatusTooManyRequests, "too many notifications from this sender")
		return
	}
	pushes, err := parsers[endpoint](body, r.Header)
	if err != nil {
		rc.answer(w, endpoint, http.StatusBadRequest, err.Error())
		return
	}
	counts := map[string]int{}
	for _, p := range pushes {
		counts[rc.offer(endpoint, p)]++
	}
	rc.answer(w, endpoint, http.StatusAccepted, fmt.Sprintf("%d pushes: %d hinted, %d deferred, %d coalesced, %d dropped, %d unused",
		len(pushes), counts[resultHinted], counts[resultDeferred], counts[resultCoalesced], counts[resultDropped], counts[resultUnused]))
}

// offer passes a push on, unless nothing uses its tag.
func (rc *Receiver) offer(endpoint string, p Push) string {
	result := resultUnused
	if digest, ok := signatureTag(p.Tag); ok {
		result = rc.signed(p.Repository, digest)
	} else if t, err := registry.ParseTagRef(p.Repository, p.Tag); err == nil && rc.used(t) {
		result = rc.coalesce.offer(t)
	}
	rc.metrics.Pushes.WithLabelValues(endpoint, result).Inc()
	return result
}

// signatureTag reads the digest a signature tag is for: cosign's legacy
// "sha256-<hex>.sig", or the OCI referrers tag "sha256-<hex>".
func signatureTag(tag string) (string, bool) {
	hex, ok := strings.CutPrefix(tag, "sha256-")
	if !ok {
		return "", false
	}
	hex = strings.TrimSuffix(hex, ".sig")
	if len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", false
	}
	return "sha256:" + hex, true
}

// signed passes on a pushed signature: the verifier forgets that the
// digest did not verify, and the ImagePins naming a tag of the repository
// check now. It spends the hint budget like a tag's push; the tags' cached
// digests stay fresh (a signature moves no tag).
func (rc *Receiver) signed(repository, digest string) string {
	repo, err := registry.ParseTagRef(repository, "")
	if err != nil || rc.opts.Signatures == nil || !rc.opts.Checker.Names(repo) {
		return resultUnused
	}
	if !rc.coalesce.budget.AllowN(rc.coalesce.clock.Now(), 1) {
		rc.coalesce.dropped()
		return resultDropped
	}
	rc.opts.Signatures.Signed(repo.Repository, digest)
	rc.recheck(repo)
	return resultHinted
}

// used: an ImagePin names the tag, or a caller (the webhook) asked about it.
func (rc *Receiver) used(t registry.TagRef) bool {
	return rc.opts.Checker.Names(t) || rc.opts.Hinter.Knows(t)
}

func (rc *Receiver) answer(w http.ResponseWriter, endpoint string, code int, msg string) {
	rc.metrics.Requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}

// route splits "/hooks/<endpoint>[/<token>]".
func route(path string) (endpoint, token string, ok bool) {
	rest, found := strings.CutPrefix(path, PathPrefix)
	if !found {
		return "", "", false
	}
	endpoint, token, _ = strings.Cut(rest, "/")
	if _, known := authOf[endpoint]; !known {
		return "", "", false
	}
	if (token != "") != (authOf[endpoint] == authPath) || strings.Contains(token, "/") {
		return "", "", false
	}
	return endpoint, token, true
}

// allow spends one request of the sender's budget.
func (rc *Receiver) allow(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	now := rc.opts.Clock.Now()
	s := rc.senders[host]
	if s == nil {
		if len(rc.senders) >= maxSenders {
			for h, o := range rc.senders {
				if now.Sub(o.seen) > time.Minute {
					delete(rc.senders, h)
				}
			}
		}
		if len(rc.senders) >= maxSenders {
			return rc.shared.AllowN(now, 1)
		}
		s = &sender{limit: rate.NewLimiter(rate.Limit(rc.opts.SenderQPS), rc.opts.SenderBurst)}
		rc.senders[host] = s
	}
	s.seen = now
	return s.limit.AllowN(now, 1)
}

// Server serves a Receiver on Addr: over TLS with CertDir's tls.crt and
// tls.key (reloaded when they change), or plain HTTP when CertDir is empty
// (TLS ended by an ingress in front). It is a manager Runnable that runs
// on every replica: a standby answers 503 (Options.Leading).
type Server struct {
	Receiver *Receiver
	Addr     string
	CertDir  string
}

// NeedLeaderElection is false: standbys answer too, so a Service in front
// never sends a registry to a closed port.
func (Server) NeedLeaderElection() bool { return false }

// Start serves until ctx ends.
func (s Server) Start(ctx context.Context) error {
	addr, certDir := s.Addr, s.CertDir
	srv := &http.Server{
		Addr:              addr,
		Handler:           s.Receiver,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	if certDir != "" {
		cw, err := certwatcher.New(filepath.Join(certDir, "tls.crt"), filepath.Join(certDir, "tls.key"))
		if err != nil {
			return fmt.Errorf("receiver certificate: %w", err)
		}
		go func() { _ = cw.Start(ctx) }()
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: cw.GetCertificate}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("receiver: listen on %s: %w", addr, err)
	}
	log.FromContext(ctx).Info("serving push notifications", "address", ln.Addr().String(), "tls", certDir != "")
	errc := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdown)
	case err := <-errc:
		return err
	}
}
