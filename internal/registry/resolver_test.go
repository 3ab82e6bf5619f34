package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"
)

// testRegistry is go-containerregistry's in-process registry behind
// httptest, wrapped by a handler that counts manifest requests by method
// and can be told to misbehave.
type testRegistry struct {
	t    testing.TB
	srv  *httptest.Server
	host string

	mu       sync.Mutex
	requests map[string]int // "HEAD manifests", "GET manifests", "GET ping"
	// intercept, if set, may answer a request instead of the registry.
	intercept func(w http.ResponseWriter, r *http.Request) bool
}

func newTestRegistry(t testing.TB) *testRegistry {
	t.Helper()
	tr := &testRegistry{t: t, requests: map[string]int{}}
	inner := ggcrregistry.New(ggcrregistry.Logger(nullLogger()))
	tr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.mu.Lock()
		tr.requests[r.Method+" "+kindOf(r.URL.Path)]++
		intercept := tr.intercept
		tr.mu.Unlock()
		if intercept != nil && intercept(w, r) {
			return
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(tr.srv.Close)
	tr.host = strings.TrimPrefix(tr.srv.URL, "http://")
	return tr
}

func kindOf(path string) string {
	switch {
	case path == "/v2/" || path == "/v2":
		return "ping"
	case strings.Contains(path, "/manifests/"):
		return "manifests"
	case strings.Contains(path, "/blobs/"):
		return "blobs"
	}
	return "other"
}

func (tr *testRegistry) count(key string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.requests[key]
}

func (tr *testRegistry) setIntercept(f func(w http.ResponseWriter, r *http.Request) bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.intercept = f
}

// push writes a random image under repo:tag and returns its digest. The
// test's own writes are not counted: they go around the counting handler
// only in name, so the counts are reset after.
func (tr *testRegistry) push(repoTag string) string {
	tr.t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		tr.t.Fatal(err)
	}
	return tr.write(repoTag, img)
}

func (tr *testRegistry) write(repoTag string, img v1.Image) string {
	tr.t.Helper()
	ref, err := name.NewTag(tr.host+"/"+repoTag, name.Insecure)
	if err != nil {
		tr.t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		tr.t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		tr.t.Fatal(err)
	}
	tr.resetCounts()
	return d.String()
}

// pushIndex writes a two-platform index and returns its digest and its
// children's digests.
func (tr *testRegistry) pushIndex(repoTag string) (string, []string) {
	tr.t.Helper()
	idx, err := random.Index(128, 1, 2)
	if err != nil {
		tr.t.Fatal(err)
	}
	idx = mutate.IndexMediaType(idx, "application/vnd.oci.image.index.v1+json")
	ref, err := name.NewTag(tr.host+"/"+repoTag, name.Insecure)
	if err != nil {
		tr.t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		tr.t.Fatal(err)
	}
	d, _ := idx.Digest()
	m, _ := idx.IndexManifest()
	var children []string
	for _, c := range m.Manifests {
		children = append(children, c.Digest.String())
	}
	tr.resetCounts()
	return d.String(), children
}

func (tr *testRegistry) resetCounts() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.requests = map[string]int{}
}

func (tr *testRegistry) image(repoTag string) string { return tr.host + "/" + repoTag }

type fixture struct {
	reg      *testRegistry
	clock    *clocktesting.FakeClock
	metrics  *Metrics
	resolver *Resolver
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{reg: newTestRegistry(t), clock: clocktesting.NewFakeClock(time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)), metrics: NewMetrics(nil)}
	o := Options{
		Clock: f.clock, Metrics: f.metrics, MaxStale: time.Hour, Timeout: 5 * time.Second,
		InsecureRegistries: []string{f.reg.host}, QPS: 1000, Burst: 1000,
	}
	r, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	f.resolver = r
	return f
}

func (f *fixture) resolve(t *testing.T, image string, ttl time.Duration) (Result, error) {
	t.Helper()
	return f.resolver.Resolve(context.Background(), Request{Image: image, TTL: ttl})
}

func (f *fixture) mustResolve(t *testing.T, image string, ttl time.Duration) Result {
	t.Helper()
	res, err := f.resolve(t, image, ttl)
	if err != nil {
		t.Fatalf("resolve %s: %v", image, err)
	}
	return res
}

func TestConcurrentResolutionsOfOneTagSendOneHEAD(t *testing.T) {
	f := newFixture(t)
	want := f.reg.push("team/app:v1")

	var wg sync.WaitGroup
	var wrong atomic.Int32
	for range 100 {
		wg.Go(func() {
			res, err := f.resolver.Resolve(context.Background(), Request{Image: f.reg.image("team/app:v1"), TTL: time.Minute})
			if err != nil || res.Digest != want {
				wrong.Add(1)
			}
		})
	}
	wg.Wait()
	if n := wrong.Load(); n > 0 {
		t.Fatalf("%d of 100 resolutions did not return %s", n, want)
	}
	if got := f.reg.count("HEAD manifests"); got != 1 {
		t.Errorf("HEAD manifests = %d, want exactly 1", got)
	}
	if got := f.reg.count("GET manifests"); got != 0 {
		t.Errorf("GET manifests = %d, want 0", got)
	}
	if got := f.reg.count("GET ping"); got > 1 {
		t.Errorf("pings = %d, want at most 1 (the transport is reused)", got)
	}
	hits := testutil.ToFloat64(f.metrics.CacheResults.WithLabelValues(resultHit))
	coalesced := testutil.ToFloat64(f.metrics.CacheResults.WithLabelValues(resultCoalesced))
	miss := testutil.ToFloat64(f.metrics.CacheResults.WithLabelValues(resultMiss))
	if miss != 1 || hits+coalesced != 99 {
		t.Errorf("cache results: miss %v, hit %v, coalesced %v; want 1 miss and 99 hits or coalesced", miss, hits, coalesced)
	}
}

func TestRepushedTagIsSeenAfterTheTTL(t *testing.T) {
	f := newFixture(t)
	first := f.reg.push("team/app:v1")
	if got := f.mustResolve(t, f.reg.image("team/app:v1"), time.Minute).Digest; got != first {
		t.Fatalf("digest = %s, want %s", got, first)
	}
	second := f.reg.push("team/app:v1")

	f.clock.Step(59 * time.Second)
	if got := f.mustResolve(t, f.reg.image("team/app:v1"), time.Minute).Digest; got != first {
		t.Fatalf("within the TTL the cached digest %s is served, got %s", first, got)
	}
	if got := f.reg.count("HEAD manifests"); got != 0 {
		t.Fatalf("HEADs within the TTL = %d, want 0", got)
	}

	f.clock.Step(time.Second)
	res := f.mustResolve(t, f.reg.image("team/app:v1"), time.Minute)
	if res.Digest != second {
		t.Fatalf("after the TTL digest = %s, want the re-pushed %s", res.Digest, second)
	}
	if !res.ResolvedAt.Equal(f.clock.Now()) {
		t.Errorf("resolvedAt = %s, want %s", res.ResolvedAt, f.clock.Now())
	}
	if got := f.reg.count("HEAD manifests"); got != 1 {
		t.Errorf("HEADs after the TTL = %d, want 1", got)
	}
}

func TestDigestOnTheReferenceIsIgnored(t *testing.T) {
	f := newFixture(t)
	want := f.reg.push("team/web:v2")
	old := "sha256:" + strings.Repeat("0", 64)
	if got := f.mustResolve(t, f.reg.image("team/web:v2@"+old), time.Minute).Digest; got != want {
		t.Fatalf("digest = %s, want the tag's %s", got, want)
	}
}

// Issue 19: a tag naming a multi-arch index resolves to the index digest
// with a HEAD alone: no GET (Docker Hub counts manifest GETs as pulls),
// however often. Its platforms are learnt only when a caller asks
// (LearnPlatforms, the controller when a pod runs another digest): one
// GET, once, and no HEAD, since the tag's HEAD said it is an index.
func TestMultiArchIndexGivesIndexDigestAndPlatforms(t *testing.T) {
	f := newFixture(t)
	index, children := f.reg.pushIndex("team/multi:v1")

	res := f.mustResolve(t, f.reg.image("team/multi:v1"), time.Minute)
	if res.Digest != index {
		t.Fatalf("digest = %s, want the index digest %s", res.Digest, index)
	}
	if len(res.Platforms) != 0 {
		t.Fatalf("platforms = %v learnt without being asked for", res.Platforms)
	}
	for range 3 {
		f.clock.Step(time.Minute)
		f.mustResolve(t, f.reg.image("team/multi:v1"), time.Minute)
	}
	if got := f.reg.count("GET manifests"); got != 0 {
		t.Fatalf("GETs to resolve an index = %d, want none", got)
	}
	if got := f.reg.count("HEAD manifests"); got != 4 {
		t.Errorf("HEADs = %d, want one per TTL (4)", got)
	}

	got, err := f.resolver.LearnPlatforms(context.Background(), f.reg.image("team/multi:v1"), index, nil)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(children) {
		t.Fatalf("LearnPlatforms = %v, %v; want %v", got, err, children)
	}
	if gets, heads := f.reg.count("GET manifests"), f.reg.count("HEAD manifests"); gets != 1 || heads != 4 {
		t.Errorf("learning the platforms of a known index sent %d GETs and %d more HEADs, want 1 and 0", gets, heads-4)
	}
	f.clock.Step(time.Minute)
	if res := f.mustResolve(t, f.reg.image("team/multi:v1"), time.Minute); fmt.Sprint(res.Platforms) != fmt.Sprint(children) {
		t.Fatalf("platforms after learning = %v, want %v", res.Platforms, children)
	}
	if _, err := f.resolver.LearnPlatforms(context.Background(), f.reg.image("team/multi:v1"), index, nil); err != nil || f.reg.count("GET manifests") != 1 {
		t.Errorf("platforms learnt twice: %d GETs, %v", f.reg.count("GET manifests"), err)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	f := newFixture(t)
	want := f.reg.push("team/app:v1")
	f.reg.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodHead {
			w.Header().Set("Retry-After", "2")
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		}
		return false
	})
	_, err := f.resolve(t, f.reg.image("team/app:v1"), 0)
	if err == nil || !strings.Contains(err.Error(), "rate limiting") {
		t.Fatalf("want a rate-limiting error, got %v", err)
	}
	if got := f.reg.count("HEAD manifests"); got != 1 {
		t.Fatalf("HEADs = %d, want 1 (429 is not retried at once)", got)
	}
	f.reg.setIntercept(nil)

	// Within the 2 s the registry asked for, nothing is sent.
	for _, step := range []time.Duration{0, 500 * time.Millisecond, 1400 * time.Millisecond} {
		f.clock.Step(step)
		_, err := f.resolve(t, f.reg.image("team/app:v1"), 0)
		var rl *RateLimitedError
		if !errors.As(err, &rl) {
			t.Fatalf("at +%s: want RateLimitedError, got %v", step, err)
		}
		if got := f.reg.count("HEAD manifests"); got != 1 {
			t.Fatalf("at +%s: a request was sent while the registry asked to wait (HEADs = %d)", step, got)
		}
	}

	f.clock.Step(100 * time.Millisecond) // 2 s after the 429
	if got := f.mustResolve(t, f.reg.image("team/app:v1"), 0).Digest; got != want {
		t.Fatalf("digest = %s, want %s", got, want)
	}
	if got := f.reg.count("HEAD manifests"); got != 2 {
		t.Fatalf("HEADs = %d, want 2", got)
	}
}

func TestRetryAfterDefaultsAndDates(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		header string
		inARow int
		want   time.Duration
	}{
		{name: "seconds", header: "7", inARow: 1, want: 7 * time.Second},
		{name: "http date", header: now.Add(90 * time.Second).Format(http.TimeFormat), inARow: 1, want: 90 * time.Second},
		{name: "date in the past", header: now.Add(-time.Minute).Format(http.TimeFormat), inARow: 1, want: 0},
		{name: "long waits honoured", header: "1800", inARow: 1, want: 30 * time.Minute},
		{name: "capped", header: "86400", inARow: 1, want: maxRetryAfter},
		{name: "absent, first", inARow: 1, want: defaultBackoff},
		{name: "absent, third in a row", inARow: 3, want: 4 * defaultBackoff},
		{name: "absent, many in a row", inARow: 30, want: maxBackoff},
		{name: "garbage", header: "soon", inARow: 1, want: defaultBackoff},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.header != "" {
				h.Set("Retry-After", tt.header)
			}
			if got := retryAfter(h, now, tt.inARow); got != tt.want {
				t.Errorf("retryAfter(%q, %d) = %s, want %s", tt.header, tt.inARow, got, tt.want)
			}
		})
	}
}

func TestRegistryDownServesTheLastGoodDigest(t *testing.T) {
	f := newFixture(t)
	want := f.reg.push("team/app:v1")
	f.mustResolve(t, f.reg.image("team/app:v1"), time.Minute)

	f.reg.setIntercept(func(w http.ResponseWriter, _ *http.Request) bool {
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	f.clock.Step(time.Minute)
	res, err := f.resolve(t, f.reg.image("team/app:v1"), time.Minute)
	if err == nil {
		t.Fatal("want the registry's error with the stale digest")
	}
	if !res.Stale || res.Digest != want {
		t.Fatalf("result = %+v, want the last good digest %s marked stale", res, want)
	}
	if !strings.Contains(err.Error(), "503") && !strings.Contains(err.Error(), "Service Unavailable") {
		t.Errorf("error does not say what the registry answered: %v", err)
	}
	heads := f.reg.count("HEAD manifests")

	// The failure is remembered for the TTL: callers do not hammer a
	// registry that is down.
	res, err = f.resolve(t, f.reg.image("team/app:v1"), time.Minute)
	if err == nil || !res.Stale || res.Digest != want {
		t.Fatalf("second call: result %+v, error %v; want the stale digest and the error", res, err)
	}
	if got := f.reg.count("HEAD manifests"); got != heads {
		t.Fatalf("HEADs within the TTL after a failure: %d -> %d, want none", heads, got)
	}

	// Past the maximum staleness, no digest is served.
	f.clock.Step(2 * time.Hour)
	res, err = f.resolve(t, f.reg.image("team/app:v1"), time.Minute)
	if err == nil || res.Digest != "" {
		t.Fatalf("past MaxStale: result %+v, error %v; want no digest and the error", res, err)
	}
	if got := testutil.ToFloat64(f.metrics.CacheResults.WithLabelValues(resultStale)); got != 1 {
		t.Errorf("stale results counted = %v, want 1", got)
	}
}

func TestMissingTagSaysNotFound(t *testing.T) {
	f := newFixture(t)
	f.reg.push("team/app:v1")
	_, err := f.resolve(t, f.reg.image("team/app:nope"), time.Minute)
	if err == nil || !strings.Contains(err.Error(), `tag "nope" not found in `+f.reg.host+"/team/app") {
		t.Fatalf("want a clear not-found error, got %v", err)
	}
}

func TestBadReferenceIsRefused(t *testing.T) {
	f := newFixture(t)
	_, err := f.resolve(t, "UPPER/case:v1", time.Minute)
	if err == nil || !strings.Contains(err.Error(), `"UPPER/case:v1" is not an image reference`) {
		t.Fatalf("want a clear error, got %v", err)
	}
}

func TestHeadNotAnsweredFallsBackToGET(t *testing.T) {
	f := newFixture(t)
	want := f.reg.push("team/app:v1")
	f.reg.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodHead {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return true
		}
		return false
	})
	if got := f.mustResolve(t, f.reg.image("team/app:v1"), time.Minute).Digest; got != want {
		t.Fatalf("digest = %s, want %s", got, want)
	}
	if got := f.reg.count("GET manifests"); got != 1 {
		t.Errorf("GETs = %d, want 1", got)
	}
	if got := testutil.ToFloat64(f.metrics.ManifestGets.WithLabelValues(f.reg.host, "fallback")); got != 1 {
		t.Errorf("fallback GETs counted = %v, want 1", got)
	}
}

// staticKeychain offers one username and password to every registry.
type staticKeychain struct{ user, pass string }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.FromConfig(authn.AuthConfig{Username: k.user, Password: k.pass}), nil
}

func TestCacheIsKeyedByCredential(t *testing.T) {
	f := newFixture(t)
	f.reg.push("team/app:v1")
	resolveAs := func(kc authn.Keychain) {
		t.Helper()
		if _, err := f.resolver.Resolve(context.Background(), Request{Image: f.reg.image("team/app:v1"), Keychain: kc, TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	resolveAs(staticKeychain{"alice", "a"})
	resolveAs(staticKeychain{"alice", "a"}) // same credential, another keychain value
	if got := f.reg.count("HEAD manifests"); got != 1 {
		t.Fatalf("HEADs for one credential = %d, want 1", got)
	}
	resolveAs(staticKeychain{"bob", "b"})
	resolveAs(nil)
	if got := f.reg.count("HEAD manifests"); got != 3 {
		t.Fatalf("HEADs for three credentials = %d, want 3: an answer seen with one credential is not served to another", got)
	}
}

func TestCallerTimeoutReturnsEarlyAndTheAnswerStillFillsTheCache(t *testing.T) {
	f := newFixture(t)
	want := f.reg.push("team/app:v1")
	release := make(chan struct{})
	f.reg.setIntercept(func(_ http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodHead {
			<-release
		}
		return false
	})
	start := time.Now()
	_, err := f.resolver.Resolve(context.Background(), Request{Image: f.reg.image("team/app:v1"), TTL: time.Minute, Timeout: 100 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "no answer from") {
		t.Fatalf("want a timeout error, got %v", err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("a 100ms caller timeout waited %s", waited)
	}
	close(release)
	// The resolution in flight completes and later callers share it.
	if got := f.mustResolve(t, f.reg.image("team/app:v1"), time.Minute).Digest; got != want {
		t.Fatalf("digest = %s, want %s", got, want)
	}
	if got := f.reg.count("HEAD manifests"); got != 1 {
		t.Errorf("HEADs = %d, want 1", got)
	}
}

func TestRateLimitRemainingIsRecorded(t *testing.T) {
	f := newFixture(t)
	f.reg.push("team/app:v1")
	f.reg.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodHead {
			w.Header().Set("RateLimit-Remaining", "76;w=21600")
		}
		return false
	})
	f.mustResolve(t, f.reg.image("team/app:v1"), time.Minute)
	if got := testutil.ToFloat64(f.metrics.RateLimitRemaining.WithLabelValues(f.reg.host)); got != 76 {
		t.Fatalf("ratelimit remaining = %v, want 76", got)
	}
}

func nullLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// FreshSince reuses a resolution made at or after that instant, however
// old it has grown since (a check stretched by the registry budget), and
// none made before it (the previous tick's).
func TestFreshSinceReusesOnlyResolutionsMadeSinceThen(t *testing.T) {
	f := newFixture(t)
	first := f.reg.push("team/app:v1")
	tick := f.clock.Now()
	resolve := func(since time.Time) string {
		t.Helper()
		res, err := f.resolver.Resolve(context.Background(), Request{Image: f.reg.image("team/app:v1"), FreshSince: since})
		if err != nil {
			t.Fatal(err)
		}
		return res.Digest
	}
	if got := resolve(tick); got != first {
		t.Fatalf("digest = %s, want %s", got, first)
	}
	second := f.reg.push("team/app:v1")
	f.clock.Step(8 * time.Second)
	if got := resolve(tick); got != first {
		t.Fatalf("a resolution made since the tick is reused however old: got %s, want %s", got, first)
	}
	if got := f.reg.count("HEAD manifests"); got != 0 { // counted since the push
		t.Fatalf("HEADs later in the tick = %d, want 0", got)
	}
	f.clock.Step(2 * time.Second)
	if got := resolve(tick.Add(10 * time.Second)); got != second {
		t.Fatalf("the next tick resolves again: got %s, want %s", got, second)
	}
	if got := f.reg.count("HEAD manifests"); got != 1 {
		t.Errorf("HEADs on the next tick = %d, want 1", got)
	}
}

// Issue 19: the fetch that sweeps idle entries keeps its own answer. The
// sweep ran after the fetch had made a new entry and before it stamped
// it, so it dropped that entry as the oldest of all: every 256th tag of a
// cold start (and one tag in 256 fetches in steady state) was asked again
// by its next caller within the same tick.
func TestTheFetchThatSweepsKeepsItsAnswer(t *testing.T) {
	f := newFixture(t)
	image := f.reg.image("swept/app:v1")
	want := f.reg.push("swept/app:v1")
	before := f.reg.count("HEAD manifests")
	f.clock.Step(sweepInterval) // the next fetch sweeps
	req := Request{Image: image, FreshSince: f.clock.Now()}
	for i := range 2 {
		got, err := f.resolver.Resolve(context.Background(), req)
		if err != nil || got.Digest != want {
			t.Fatalf("resolution %d: %+v, %v; want %s", i+1, got, err, want)
		}
	}
	if n := f.reg.count("HEAD manifests") - before; n != 1 {
		t.Fatalf("%d HEADs for one tag in one tick, want 1: the sweeping fetch's answer was dropped", n)
	}
}
