package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/utils/clock"
)

// RateLimitedError says a registry asked imagepin to wait (HTTP 429), and
// until when no request is sent to it.
type RateLimitedError struct {
	Host  string
	Until time.Time
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("registry %s is rate limiting imagepin: no requests until %s", e.Host, e.Until.UTC().Format(time.RFC3339))
}

// Without Retry-After, a 429 stops requests to the registry for
// defaultBackoff, doubling with each 429 in a row up to maxBackoff. A
// Retry-After is honoured up to maxRetryAfter.
const (
	defaultBackoff = 10 * time.Second
	maxBackoff     = 5 * time.Minute
	maxRetryAfter  = time.Hour
)

// politeTransport is the RoundTripper under every registry request: it
// keeps each registry host to its request budget, sends nothing to a host
// that answered 429 until it said to come back, records metrics, and
// guards what comes back (bounded bodies, verified manifest digests).
type politeTransport struct {
	secure, insecure http.RoundTripper
	insecureHosts    map[string]bool
	qps              rate.Limit
	burst            int
	clock            clock.PassiveClock
	metrics          *Metrics

	mu    sync.Mutex
	hosts map[string]*hostState
	pings map[string]*pingAnswer // by scheme://host
	// pinging: a ping in flight per scheme://host; the others wait for
	// its answer instead of sending their own.
	pinging map[string]chan struct{}
}

// pingAnswer is a registry's answer to the unauthenticated "GET /v2/"
// that go-containerregistry sends before the first request of each
// repository: the same for every repository and every credential of a
// host (which auth scheme, which token service), so it is asked once per
// host per pingTTL, not once per repository.
type pingAnswer struct {
	status int
	header http.Header
	at     time.Time
}

// pingTTL is how long a host's ping answer is reused.
const pingTTL = 10 * time.Minute

type hostState struct {
	limiter      *rate.Limiter
	blockedUntil time.Time
	tooMany      int // 429s in a row
	// queued: the last spans of time during which requests to the host
	// waited for the budget, oldest first (t.mu).
	queued []span
}

// span is a stretch of time during which requests waited for a host's
// budget: from the request that first had to wait until the last of
// those waiting was due.
type span struct{ from, to time.Time }

// keptSpans bounds the spans kept per host; only recent ones are asked
// about (queuedAt: the start of the caller's tick).
const keptSpans = 16

// noteWait records that a request made at now is due at due.
func (st *hostState) noteWait(now, due time.Time) {
	if !due.After(now) {
		return
	}
	if n := len(st.queued); n > 0 && now.Before(st.queued[n-1].to) {
		if due.After(st.queued[n-1].to) {
			st.queued[n-1].to = due
		}
		return
	}
	if len(st.queued) == keptSpans {
		st.queued = append(st.queued[:0], st.queued[1:]...)
	}
	st.queued = append(st.queued, span{from: now, to: due})
}

// queueGrace extends a span past its last request's turn: the checks a
// round's answers serve end a little after its last request is sent, and
// a tick that falls in between still falls within the round.
const queueGrace = 2 * time.Second

// queuedAt reports whether requests to host were waiting for its budget
// at t (real time), or had been until just before: a round of requests
// begun before t was still being worked through.
func (t *politeTransport) queuedAt(host string, at time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.hosts[host]
	if st == nil {
		return false
	}
	for _, s := range st.queued {
		if !at.Before(s.from) && at.Before(s.to.Add(queueGrace)) {
			return true
		}
	}
	return false
}

func (t *politeTransport) state(host string) *hostState {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.hosts[host]
	if !ok {
		st = &hostState{limiter: rate.NewLimiter(t.qps, t.burst)}
		t.hosts[host] = st
	}
	return st
}

// PlainHTTPError says a request would have gone over plain HTTP to a host
// not named in --insecure-registry: go-containerregistry falls back to
// HTTP for private addresses, *.local and loopback, which would send
// credentials in cleartext and let anyone on the path choose the digest.
// Nothing is sent.
type PlainHTTPError struct {
	Host string
}

func (e *PlainHTTPError) Error() string {
	return fmt.Sprintf("plain HTTP to %s refused: it is not named in --insecure-registry", e.Host)
}

func (t *politeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	host := req.URL.Host
	insecure := t.insecureHosts[host] || t.insecureHosts[req.URL.Hostname()]
	if req.URL.Scheme == "http" && !insecure {
		return nil, &PlainHTTPError{Host: host}
	}
	ping := isPing(req)
	if ping {
		if resp := t.cachedPing(req); resp != nil {
			return resp, nil
		}
		wait, done := t.pingTurn(req.URL.Scheme + "://" + host)
		if done != nil {
			defer done()
		} else {
			select {
			case <-wait:
			case <-req.Context().Done():
				return nil, req.Context().Err()
			}
			if resp := t.cachedPing(req); resp != nil {
				return resp, nil
			}
		}
		if insecure && req.URL.Scheme == "https" && t.answersOverHTTP(host) {
			// An --insecure-registry host that answered the ping over
			// plain HTTP only: go-containerregistry tries HTTPS first
			// for each repository; it fails here, without a request.
			return nil, fmt.Errorf("registry %s answers over plain HTTP (ping within %s), not HTTPS", host, pingTTL)
		}
	}
	st := t.state(host)

	if err := t.checkBlocked(host, st); err != nil {
		return nil, err
	}
	if tn, _ := req.Context().Value(turnKey{}).(*turn); tn == nil || tn.host != host || !tn.unused.CompareAndSwap(true, false) {
		if err := t.wait(req.Context(), st); err != nil {
			return nil, fmt.Errorf("registry %s: waiting for the request budget (--registry-qps): %w", host, err)
		}
	}
	// A 429 may have come back while this request waited for its turn.
	if err := t.checkBlocked(host, st); err != nil {
		return nil, err
	}

	rt := t.secure
	if insecure {
		rt = t.insecure
	}
	start := time.Now()
	resp, err := rt.RoundTrip(req)
	t.metrics.RequestDuration.WithLabelValues(host, req.Method).Observe(time.Since(start).Seconds())
	if err != nil {
		t.metrics.Requests.WithLabelValues(host, req.Method, "error").Inc()
		return nil, err
	}
	t.metrics.Requests.WithLabelValues(host, req.Method, strconv.Itoa(resp.StatusCode)).Inc()
	if n, ok := rateLimitRemaining(resp.Header); ok {
		t.metrics.RateLimitRemaining.WithLabelValues(host).Set(float64(n))
	}

	t.mu.Lock()
	if resp.StatusCode == http.StatusTooManyRequests {
		st.tooMany++
		st.blockedUntil = t.clock.Now().Add(retryAfter(resp.Header, t.clock.Now(), st.tooMany))
	} else {
		st.tooMany = 0
	}
	if ping && (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized) {
		if t.pings == nil {
			t.pings = map[string]*pingAnswer{}
		}
		t.pings[req.URL.Scheme+"://"+host] = &pingAnswer{status: resp.StatusCode, header: resp.Header.Clone(), at: t.clock.Now()}
	}
	t.mu.Unlock()
	return guard(host, req, resp)
}

// turn is a place in a host's budget taken before a resolution's
// deadline began (takeTurn): the resolution's first request to that host
// uses it instead of waiting again.
type turn struct {
	host   string
	unused atomic.Bool
}

type turnKey struct{}

// takeTurn waits, without a deadline, for a place in host's budget, and
// returns ctx carrying it. A resolution takes its turn before its
// deadline starts: a round of more tags than the budget sends at once
// queues them, and a queued resolution must not fail for the time it
// spent in the queue (--registry-timeout bounds the exchange, not the
// wait for the budget).
func (t *politeTransport) takeTurn(ctx context.Context, host string) context.Context {
	st := t.state(host)
	if t.checkBlocked(host, st) != nil {
		return ctx // the host said to come back later: the request fails at once
	}
	if err := t.wait(context.WithoutCancel(ctx), st); err != nil {
		return ctx // the request waits for its turn itself
	}
	tn := &turn{host: host}
	tn.unused.Store(true)
	return context.WithValue(ctx, turnKey{}, tn)
}

// wait takes the request's turn in the host's budget, as rate.Limiter's
// Wait does, and records how long the queue was (queuedAt).
func (t *politeTransport) wait(ctx context.Context, st *hostState) error {
	now := time.Now()
	r := st.limiter.ReserveN(now, 1)
	if !r.OK() {
		return fmt.Errorf("a request exceeds the burst of %d", t.burst)
	}
	delay := r.DelayFrom(now)
	if delay == 0 {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok && dl.Before(now.Add(delay)) {
		r.CancelAt(now)
		return fmt.Errorf("its turn in %s would come after the deadline", delay.Round(time.Millisecond))
	}
	t.mu.Lock()
	st.noteWait(now, now.Add(delay))
	t.mu.Unlock()
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		r.Cancel()
		return ctx.Err()
	}
}

// pingTurn makes the caller the one that pings key (done, not nil, ends
// its turn), or returns wait, closed when the ping in flight ends.
func (t *politeTransport) pingTurn(key string) (wait <-chan struct{}, done func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ch, ok := t.pinging[key]; ok {
		return ch, nil
	}
	if t.pinging == nil {
		t.pinging = map[string]chan struct{}{}
	}
	ch := make(chan struct{})
	t.pinging[key] = ch
	return ch, func() {
		t.mu.Lock()
		delete(t.pinging, key)
		t.mu.Unlock()
		close(ch)
	}
}

// answersOverHTTP: host's plain-HTTP ping answer is fresh and it has no
// HTTPS one.
func (t *politeTransport) answersOverHTTP(host string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	h, s := t.pings["http://"+host], t.pings["https://"+host]
	return h != nil && t.clock.Since(h.at) < pingTTL && (s == nil || t.clock.Since(s.at) >= pingTTL)
}

// isPing: go-containerregistry's unauthenticated probe of a registry.
func isPing(req *http.Request) bool {
	return req.Method == http.MethodGet && req.URL.Path == "/v2/" && req.Header.Get("Authorization") == ""
}

// cachedPing answers a ping from the host's last answer, if recent: no
// request, no budget spent.
func (t *politeTransport) cachedPing(req *http.Request) *http.Response {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.pings[req.URL.Scheme+"://"+req.URL.Host]
	if a == nil || t.clock.Since(a.at) >= pingTTL {
		return nil
	}
	return &http.Response{
		Status: fmt.Sprintf("%d %s", a.status, http.StatusText(a.status)), StatusCode: a.status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: a.header.Clone(), Body: http.NoBody, ContentLength: 0, Request: req,
	}
}

func (t *politeTransport) checkBlocked(host string, st *hostState) error {
	t.mu.Lock()
	until := st.blockedUntil
	t.mu.Unlock()
	if t.clock.Now().Before(until) {
		return &RateLimitedError{Host: host, Until: until}
	}
	return nil
}

// retryAfter reads Retry-After (seconds or an HTTP date); without one it
// backs off exponentially with the number of 429s in a row.
func retryAfter(h http.Header, now time.Time, inARow int) time.Duration {
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
			return min(time.Duration(secs)*time.Second, maxRetryAfter)
		}
		if at, err := http.ParseTime(v); err == nil {
			return min(max(at.Sub(now), 0), maxRetryAfter)
		}
	}
	d := defaultBackoff
	for i := 1; i < inARow && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, maxBackoff)
}

// rateLimitRemaining reads the remaining requests a registry reports, as
// Docker Hub does: "ratelimit-remaining: 76;w=21600".
func rateLimitRemaining(h http.Header) (int, bool) {
	v := h.Get("RateLimit-Remaining")
	if v == "" {
		return 0, false
	}
	if i := strings.IndexByte(v, ';'); i >= 0 {
		v = v[:i]
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	return n, err == nil
}

// baseTransports returns the transport for verified TLS (system roots, plus
// caFile if given) and the one for --insecure-registry hosts.
func baseTransports(caFile string) (secure, insecure *http.Transport, err error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, nil, fmt.Errorf("read registry CA file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("registry CA file %s holds no PEM certificate", caFile)
		}
	}
	secure = newHTTPTransport()
	secure.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	insecure = newHTTPTransport()
	insecure.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // only for hosts named by --insecure-registry
	return secure, insecure, nil
}

func newHTTPTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 16
	t.ResponseHeaderTimeout = 30 * time.Second
	return t
}
