package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/imagepin/imagepin/internal/registry/faulttest"
)

// faultFixture is go-containerregistry's in-process registry behind a
// fault-injecting proxy; the resolver talks to the proxy only.
type faultFixture struct {
	reg      *testRegistry
	proxy    *faulttest.Proxy
	clock    *clocktesting.FakeClock
	metrics  *Metrics
	resolver *Resolver
	image    string // proxy/team/app:v1
	good     string // its digest
	manifest []byte // its manifest
}

const faultTTL = time.Minute

func newFaultFixture(t *testing.T, timeout time.Duration) *faultFixture {
	t.Helper()
	f := &faultFixture{
		reg:     newTestRegistry(t),
		clock:   clocktesting.NewFakeClock(time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)),
		metrics: NewMetrics(nil),
	}
	f.proxy = faulttest.New(t, faulttest.Options{Upstream: f.reg.srv.URL})
	r, err := New(Options{
		Clock: f.clock, Metrics: f.metrics, MaxStale: time.Hour, Timeout: timeout,
		InsecureRegistries: []string{f.proxy.Host}, QPS: 1000, Burst: 1000,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.resolver = r
	f.good = f.reg.push("team/app:v1")
	f.image = f.proxy.Host + "/team/app:v1"
	ref, err := name.NewDigest(f.reg.image("team/app@"+f.good), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(ref)
	if err != nil {
		t.Fatal(err)
	}
	f.manifest = desc.Manifest
	return f
}

// confirm resolves the good digest once, fresh, then steps past the TTL
// and resets the counts: the next resolution asks the registry again.
func (f *faultFixture) confirm(t *testing.T) {
	t.Helper()
	res, err := f.resolver.Resolve(context.Background(), Request{Image: f.image, TTL: faultTTL})
	if err != nil || res.Digest != f.good || res.Stale {
		t.Fatalf("before the fault: result %+v, error %v; want %s, fresh", res, err, f.good)
	}
	f.clock.Step(faultTTL)
	f.proxy.Reset()
}

func (f *faultFixture) resolve() (Result, error) {
	return f.resolver.Resolve(context.Background(), Request{Image: f.image, TTL: faultTTL})
}

// wantStale checks a failed resolution: a clear error naming the registry
// and containing each of want, and the last good digest, marked stale.
func (f *faultFixture) wantStale(t *testing.T, res Result, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; result %+v", res)
	}
	msg := err.Error()
	t.Logf("error: %s", msg)
	for _, w := range append([]string{f.proxy.Host}, want...) {
		if !strings.Contains(msg, w) {
			t.Errorf("error does not say %q: %s", w, msg)
		}
	}
	if res.Digest != f.good || !res.Stale {
		t.Fatalf("result %+v, want the last good digest %s marked stale", res, f.good)
	}
}

// hold resolves n more times within the TTL: the failure is remembered,
// nothing is sent, and the answer does not change.
func (f *faultFixture) hold(t *testing.T, n int) {
	t.Helper()
	before := f.proxy.Count("", "")
	for range n {
		res, err := f.resolve()
		if err == nil || res.Digest != f.good || !res.Stale {
			t.Fatalf("within the TTL: result %+v, error %v; want the stale digest and the error", res, err)
		}
	}
	if got := f.proxy.Count("", ""); got != before {
		t.Fatalf("%d requests within the TTL of a failure, want none", got-before)
	}
}

func sha256Of(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func TestFaultConnectionRefused(t *testing.T) {
	f := newFaultFixture(t, 2*time.Second)
	f.confirm(t)
	f.proxy.Set(faulttest.Faults{Refuse: true})

	res, err := f.resolve()
	f.wantStale(t, res, err, "is unreachable", "connection refused")
	f.hold(t, 20)
	if got := testutil.ToFloat64(f.metrics.Requests.WithLabelValues(f.proxy.Host, http.MethodHead, "error")); got < 1 || got > 3 {
		t.Errorf("HEADs that met a refused connection = %v, want 1 to 3 (retries bounded)", got)
	}

	f.proxy.Set(faulttest.Faults{})
	f.clock.Step(faultTTL)
	if res, err := f.resolve(); err != nil || res.Stale || res.Digest != f.good {
		t.Fatalf("back up: result %+v, error %v; want %s, fresh", res, err, f.good)
	}
}

func TestFaultConnectionClosedWithoutAnswer(t *testing.T) {
	f := newFaultFixture(t, 5*time.Second)
	f.confirm(t)
	f.proxy.Set(faulttest.Faults{Hangup: true})

	res, err := f.resolve()
	f.wantStale(t, res, err, "closed the connection without an answer")
	// go-containerregistry tries 3 times; net/http may retry each once
	// on a new connection when a kept-alive one was closed.
	if got := f.proxy.Count(http.MethodHead, "/manifests/"); got < 1 || got > 6 {
		t.Errorf("HEADs = %d, want 1 to 6", got)
	}
	f.hold(t, 20)
}

func TestFaultSlowerThanTheDeadline(t *testing.T) {
	f := newFaultFixture(t, 300*time.Millisecond)
	f.confirm(t)
	f.proxy.Set(faulttest.Faults{Delay: time.Minute})

	start := time.Now()
	res, err := f.resolve()
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("a 300ms deadline took %s", took)
	}
	f.wantStale(t, res, err, "no answer from registry", "within 300ms")
	// The resolution the caller gave up on ends at the same deadline; its
	// failure is then what callers see for the TTL.
	eventually(t, func() bool {
		_, err := f.resolve()
		return err != nil && strings.Contains(err.Error(), "--registry-timeout")
	})
	f.hold(t, 20)
	if got := f.proxy.Count(http.MethodHead, "/manifests/"); got != 1 {
		t.Errorf("HEADs = %d, want 1: a deadline is not retried", got)
	}
}

func TestFault429WithRetryAfter(t *testing.T) {
	f := newFaultFixture(t, 2*time.Second)
	f.confirm(t)
	f.proxy.Set(faulttest.Faults{Status: http.StatusTooManyRequests, RetryAfter: "30"})

	// TTL 1s: callers ask every second, the registry is asked once.
	for i := range 30 {
		res, err := f.resolver.Resolve(context.Background(), Request{Image: f.image, TTL: time.Second})
		f.wantStale(t, res, err, "rate limiting imagepin")
		f.clock.Step(time.Second)
		if i == 0 && !strings.Contains(err.Error(), "429") {
			t.Errorf("the first error does not say what the registry answered: %v", err)
		}
	}
	if got := f.proxy.Count("", ""); got != 1 {
		t.Fatalf("requests in the 30 s the registry asked for = %d, want 1", got)
	}
	f.proxy.Set(faulttest.Faults{})
	if res, err := f.resolver.Resolve(context.Background(), Request{Image: f.image, TTL: time.Second}); err != nil || res.Digest != f.good || res.Stale {
		t.Fatalf("after Retry-After: result %+v, error %v", res, err)
	}
}

func TestFault429WithoutRetryAfterBacksOff(t *testing.T) {
	f := newFaultFixture(t, 2*time.Second)
	f.confirm(t)
	f.proxy.Set(faulttest.Faults{Status: http.StatusTooManyRequests})

	// 10 s, then 20 s, then 40 s: requests at 0, 10 and 30 s in a minute
	// of callers asking every second.
	for range 60 {
		res, err := f.resolver.Resolve(context.Background(), Request{Image: f.image, TTL: time.Second})
		f.wantStale(t, res, err, "rate limiting imagepin")
		f.clock.Step(time.Second)
	}
	if got := f.proxy.Count("", ""); got != 3 {
		t.Fatalf("requests in a minute of 429s without Retry-After = %d, want 3 (backing off 10 s, 20 s, 40 s)", got)
	}
}

func TestFaultFlapping5xx(t *testing.T) {
	f := newFaultFixture(t, 5*time.Second)
	f.confirm(t)
	f.proxy.Set(faulttest.Faults{FlapStatus: http.StatusServiceUnavailable})

	// Every other request fails: a retry gets through, the digest is fresh.
	for range 5 {
		res, err := f.resolve()
		if err != nil || res.Digest != f.good || res.Stale {
			t.Fatalf("flapping: result %+v, error %v; want %s, fresh", res, err, f.good)
		}
		f.clock.Step(faultTTL)
	}
	if got := f.proxy.Count(http.MethodHead, "/manifests/"); got > 10 {
		t.Errorf("HEADs for 5 resolutions = %d, want at most 2 each", got)
	}

	// Failing every time: three tries, then the error and the last digest.
	f.proxy.Reset()
	f.proxy.Set(faulttest.Faults{Status: http.StatusServiceUnavailable})
	res, err := f.resolve()
	f.wantStale(t, res, err, "failed (503 Service Unavailable)")
	f.hold(t, 20)
	if got := f.proxy.Count(http.MethodHead, "/manifests/"); got < 1 || got > 3 {
		t.Errorf("HEADs = %d, want 1 to 3", got)
	}
}

func TestFaultHeadWithoutDigestIsResolvedByHashingTheManifest(t *testing.T) {
	f := newFaultFixture(t, 2*time.Second)
	f.confirm(t)
	f.proxy.Set(faulttest.Faults{OmitHeadDigest: true})
	for range 3 {
		res, err := f.resolve()
		if err != nil || res.Digest != f.good || res.Stale {
			t.Fatalf("result %+v, error %v; want %s from the manifest", res, err, f.good)
		}
		f.clock.Step(faultTTL)
	}
	if h, g := f.proxy.Count(http.MethodHead, "/manifests/"), f.proxy.Count(http.MethodGet, "/manifests/"); h != 3 || g != 3 {
		t.Errorf("HEADs %d and GETs %d for 3 resolutions, want one of each per TTL", h, g)
	}
}

// A manifest whose content does not hash to the digest the GET's header
// advertises is rejected, never hashed into a digest of its own.
func TestFaultManifestNotMatchingItsDigestIsRejected(t *testing.T) {
	f := newFaultFixture(t, 2*time.Second)
	corrupt := sha256Of(append(append([]byte{}, f.manifest...), '\n'))
	f.confirm(t)
	f.proxy.Set(faulttest.Faults{OmitHeadDigest: true, CorruptManifest: true})

	res, err := f.resolve()
	f.wantStale(t, res, err, "whose content ("+corrupt+") does not match "+f.good, "Docker-Content-Digest", "not trusted")
	if strings.Contains(res.Digest, corrupt) {
		t.Fatalf("the corrupt manifest's digest was returned")
	}
	f.hold(t, 20)
	if g := f.proxy.Count(http.MethodGet, "/manifests/"); g != 1 {
		t.Errorf("GETs = %d, want 1", g)
	}

	// Without any previous answer: no digest at all.
	f.reg.push("team/new:v1")
	f.proxy.Reset()
	res, err = f.resolver.Resolve(context.Background(), Request{Image: f.proxy.Host + "/team/new:v1", TTL: faultTTL})
	if err == nil || res.Digest != "" {
		t.Fatalf("a new tag with a corrupt manifest: result %+v, error %v; want no digest and an error", res, err)
	}
}

func TestFaultMalformedHeadDigestIsNotTrusted(t *testing.T) {
	other := sha256Of([]byte("some other manifest"))
	for _, bad := range []string{
		"sha256:abc",
		"sha256:" + strings.Repeat("z", 64),
		"sha256:" + strings.ToUpper(strings.Repeat("ab", 32)),
		"sha512:" + strings.Repeat("ab", 64),
		"md5:d41d8cd98f00b204e9800998ecf8427e",
		"SHA256:" + strings.Repeat("ab", 32),
		"sha256:" + strings.Repeat("ab", 32) + "c",
		"sha256:" + strings.Repeat("ab", 32) + ",sha256:" + strings.Repeat("cd", 32),
		"garbage",
	} {
		t.Run(bad, func(t *testing.T) {
			f := newFaultFixture(t, 2*time.Second)
			f.confirm(t)

			// The manifest is fetched and hashed instead; its own header
			// (good, absent or malformed as well) is checked.
			for _, get := range []faulttest.Faults{
				{HeadDigest: bad},
				{HeadDigest: bad, OmitGetDigest: true},
				{HeadDigest: bad, GetDigest: bad},
			} {
				f.proxy.Set(get)
				res, err := f.resolve()
				if err != nil || res.Digest != f.good || res.Stale {
					t.Fatalf("%+v: result %+v, error %v; want %s from the manifest", get, res, err, f.good)
				}
				f.clock.Step(faultTTL)
			}
			if h, g := f.proxy.Count(http.MethodHead, "/manifests/"), f.proxy.Count(http.MethodGet, "/manifests/"); h != 3 || g != 3 {
				t.Errorf("HEADs %d and GETs %d for 3 resolutions, want one of each per TTL", h, g)
			}

			// The GET's header disagrees with the content: neither is used.
			f.proxy.Set(faulttest.Faults{HeadDigest: bad, GetDigest: other})
			res, err := f.resolve()
			f.wantStale(t, res, err, "malformed Docker-Content-Digest", "does not match "+other)
		})
	}
}

// Learning an index's platforms GETs it by digest; content that does not
// hash to that digest is not believed, and the digest of the HEAD stands.
func TestFaultCorruptIndexGivesNoPlatforms(t *testing.T) {
	f := newFaultFixture(t, 2*time.Second)
	index, _ := f.reg.pushIndex("team/multi:v1")
	f.proxy.Set(faulttest.Faults{CorruptManifest: true})
	image := f.proxy.Host + "/team/multi:v1"
	res, err := f.resolver.Resolve(context.Background(), Request{Image: image, TTL: faultTTL})
	if err != nil || res.Digest != index {
		t.Fatalf("result %+v, error %v; want the index digest %s", res, err, index)
	}
	if got, err := f.resolver.LearnPlatforms(context.Background(), image, index, nil); err == nil || len(got) != 0 {
		t.Fatalf("LearnPlatforms of a corrupt index = %v, %v; want an error and none", got, err)
	}
	if p := f.resolver.Platforms(index); len(p) != 0 {
		t.Fatalf("platforms %v learned from a corrupt index", p)
	}
	res, err = f.resolver.Resolve(context.Background(), Request{Image: image, TTL: faultTTL})
	if err != nil || res.Digest != index {
		t.Fatalf("after: result %+v, error %v; want the index digest %s still", res, err, index)
	}
}

func TestFaultHugeResponseIsNotRead(t *testing.T) {
	for _, declared := range []bool{false, true} {
		name := "streamed"
		if declared {
			name = "declared"
		}
		t.Run(name, func(t *testing.T) {
			f := newFaultFixture(t, 10*time.Second)
			f.confirm(t)
			// HEAD has no digest, so the manifest is fetched: 100 MiB of it,
			// exactly go-containerregistry's own limit.
			f.proxy.Set(faulttest.Faults{OmitHeadDigest: true, HugeManifest: 100 << 20, HugeDeclared: declared})

			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			res, err := f.resolve()
			took := time.Since(start)
			runtime.ReadMemStats(&after)

			f.wantStale(t, res, err, "more than", "MiB", "not read")
			if sent := f.proxy.BodyBytes(); sent > 32<<20 {
				t.Errorf("the proxy sent %d MiB before the resolver stopped reading, want well under 100", sent>>20)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 48<<20 {
				t.Errorf("resolving allocated %d MiB, want far less than the 100 MiB offered", alloc>>20)
			}
			if took > 5*time.Second {
				t.Errorf("took %s", took)
			}
			if g := f.proxy.Count(http.MethodGet, "/manifests/"); g != 1 {
				t.Errorf("GETs = %d, want 1 (a too-large answer is not retried)", g)
			}
			f.hold(t, 20)
		})
	}
}

func eventually(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
