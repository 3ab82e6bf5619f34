package verify

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
)

// sigTagRequest is the verifier's GET of digest's legacy signature tag.
func sigTagRequest(repo, digest string) string {
	return "GET /v2/" + repo + "/manifests/" + strings.Replace(digest, ":", "-", 1) + ".sig"
}

func count(reqs []string, req string) int {
	n := 0
	for _, r := range reqs {
		if r == req {
			n++
		}
	}
	return n
}

// TestCacheVerified: a verified digest is answered from memory for good,
// whatever FreshSince, the tag or digest the image names and the time;
// another policy (a changed key set) verifies again.
func TestCacheVerified(t *testing.T) {
	f := newFixture(t, false)
	key, other := newKey(t), newKey(t)
	p := keyPolicy(t, key)
	d, _ := f.reg.pushImage("cached")
	f.reg.pushLegacy("cached", d, signedLayer(t, key, simpleSigning(f.reg.host+"/cached", d)))
	f.reg.takeRequests()

	first := f.verify(t, "cached", d, p)
	want(t, first, true, imagesv1alpha1.VerificationVerified)
	if reqs := f.reg.takeRequests(); count(reqs, sigTagRequest("cached", d)) != 1 {
		t.Fatalf("the first verification did not read the signature tag once: %q", reqs)
	}

	f.clock.SetTime(f.clock.Now().Add(48 * time.Hour))
	ctx := context.Background()
	for _, image := range []string{f.reg.image("cached"), f.reg.host + "/cached:2.0", f.reg.host + "/cached@" + d, f.reg.host + "/cached"} {
		r := f.v.Verify(ctx, Request{Image: image, Digest: d, Policy: p, FreshSince: f.clock.Now()})
		if r != first {
			t.Errorf("%s: got %+v, want the first answer %+v", image, r, first)
		}
	}
	if reqs := f.reg.takeRequests(); len(reqs) != 0 {
		t.Errorf("a verified digest was read again: %q", reqs)
	}
	if r, ok := f.v.Cached(Request{Image: f.reg.image("cached"), Digest: d, Policy: p, FreshSince: f.clock.Now()}); !ok || r != first {
		t.Errorf("Cached() = %+v, %v", r, ok)
	}

	// Another key set is another policy ID: read again.
	p2 := keyPolicy(t, other, key)
	if p2.ID == p.ID {
		t.Fatal("two key sets share a policy ID")
	}
	if _, ok := f.v.Cached(Request{Image: f.reg.image("cached"), Digest: d, Policy: p2}); ok {
		t.Error("another policy is answered from the first one's memory")
	}
	want(t, f.verify(t, "cached", d, p2), true, imagesv1alpha1.VerificationVerified, "keys[1]")
	if reqs := f.reg.takeRequests(); count(reqs, sigTagRequest("cached", d)) != 1 {
		t.Errorf("another policy did not read the signatures again: %q", reqs)
	}
	// And a policy that no longer trusts the signer does not verify.
	want(t, f.verify(t, "cached", d, keyPolicy(t, other)), false, imagesv1alpha1.VerificationUntrusted)
}

// TestCacheUnsigned: a digest that does not verify is answered from
// memory only for a request whose FreshSince is not after the answer's
// CheckedAt; a later one reads the signatures again and finds the one
// added since.
func TestCacheUnsigned(t *testing.T) {
	f := newFixture(t, false)
	key := newKey(t)
	p := keyPolicy(t, key)
	d, _ := f.reg.pushImage("later")
	f.reg.takeRequests()
	ctx := context.Background()
	req := func(fresh time.Time) Request {
		return Request{Image: f.reg.image("later"), Digest: d, Policy: p, FreshSince: fresh}
	}

	t0 := f.clock.Now()
	first := f.v.Verify(ctx, req(t0))
	want(t, first, false, imagesv1alpha1.VerificationUnsigned)
	if !first.CheckedAt.Equal(t0) {
		t.Fatalf("CheckedAt %v, want %v", first.CheckedAt, t0)
	}
	if reqs := f.reg.takeRequests(); count(reqs, sigTagRequest("later", d)) != 1 {
		t.Fatalf("not read: %q", reqs)
	}

	// Signed now; the clock moves on.
	f.reg.pushLegacy("later", d, signedLayer(t, key, simpleSigning(f.reg.host+"/later", d)))
	f.clock.SetTime(f.clock.Now().Add(time.Minute))

	for _, fresh := range []time.Time{t0.Add(-time.Minute), t0} {
		if r := f.v.Verify(ctx, req(fresh)); r != first {
			t.Errorf("FreshSince %v: got %+v, want the remembered %+v", fresh, r, first)
		}
	}
	if reqs := f.reg.takeRequests(); len(reqs) != 0 {
		t.Errorf("an answer fresh enough was read again: %q", reqs)
	}
	if _, ok := f.v.Cached(req(t0.Add(time.Second))); ok {
		t.Error("Cached() serves an unverified answer older than FreshSince")
	}

	r := f.v.Verify(ctx, req(f.clock.Now()))
	want(t, r, true, imagesv1alpha1.VerificationVerified)
	if !r.CheckedAt.Equal(f.clock.Now()) {
		t.Errorf("CheckedAt %v, want %v", r.CheckedAt, f.clock.Now())
	}
	if reqs := f.reg.takeRequests(); count(reqs, sigTagRequest("later", d)) != 1 {
		t.Errorf("not read again: %q", reqs)
	}
	// Verified replaces the Unsigned answer, for every FreshSince.
	if got := f.v.Verify(ctx, req(t0)); got != r {
		t.Errorf("got %+v, want %+v", got, r)
	}
}

// TestConcurrentVerifications: callers verifying one digest at once share
// one reading of its signatures.
func TestConcurrentVerifications(t *testing.T) {
	f := newFixture(t, false)
	key := newKey(t)
	p := keyPolicy(t, key)
	d, _ := f.reg.pushImage("busy")
	f.reg.pushLegacy("busy", d, signedLayer(t, key, simpleSigning(f.reg.host+"/busy", d)))
	f.reg.takeRequests()
	var wg sync.WaitGroup
	results := make([]Result, 8)
	for i := range results {
		wg.Go(func() { results[i] = f.verify(t, "busy", d, p) })
	}
	wg.Wait()
	for _, r := range results {
		want(t, r, true, imagesv1alpha1.VerificationVerified)
	}
	if reqs := f.reg.takeRequests(); count(reqs, sigTagRequest("busy", d)) != 1 {
		t.Errorf("%d callers read the signatures %d times: %q", len(results), count(reqs, sigTagRequest("busy", d)), reqs)
	}
}

// TestRegistryFailure: a registry that fails while signatures are read
// gives Reason Error, not verified (fail closed), and the answer is not
// remembered: the next call asks again, and verifies once the registry
// is healthy.
func TestRegistryFailure(t *testing.T) {
	key := newKey(t)
	p := keyPolicy(t, key)

	cases := []struct {
		name      string
		referrers bool // the registry serves the referrers API
		bundle    bool // signed with a bundle, else a legacy .sig
		fail      func(repo, digest, payload string) func(r *http.Request) failure
	}{{
		name: "500 on the payload blob",
		fail: func(repo, _, payload string) func(r *http.Request) failure {
			return func(r *http.Request) failure {
				if r.Method == http.MethodGet && r.URL.Path == "/v2/"+repo+"/blobs/"+payload {
					return status500
				}
				return serve
			}
		},
	}, {
		name: "connection closed on the payload blob",
		fail: func(repo, _, payload string) func(r *http.Request) failure {
			return func(r *http.Request) failure {
				if r.URL.Path == "/v2/"+repo+"/blobs/"+payload {
					return hangUp
				}
				return serve
			}
		},
	}, {
		name: "500 on the signature tag",
		fail: func(repo, digest, _ string) func(r *http.Request) failure {
			return func(r *http.Request) failure {
				if r.Method+" "+r.URL.Path == sigTagRequest(repo, digest) {
					return status500
				}
				return serve
			}
		},
	}, {
		name: "connection closed on the referrers API", referrers: true, bundle: true,
		fail: func(repo, digest, _ string) func(r *http.Request) failure {
			return func(r *http.Request) failure {
				if r.URL.Path == "/v2/"+repo+"/referrers/"+digest {
					return hangUp
				}
				return serve
			}
		},
	}, {
		name: "500 on the referrers API", referrers: true, bundle: true,
		fail: func(repo, digest, _ string) func(r *http.Request) failure {
			return func(r *http.Request) failure {
				if r.URL.Path == "/v2/"+repo+"/referrers/"+digest {
					return status500
				}
				return serve
			}
		},
	}, {
		name: "500 on the referrers fallback tag", bundle: true,
		fail: func(repo, digest, _ string) func(r *http.Request) failure {
			return func(r *http.Request) failure {
				if r.URL.Path == "/v2/"+repo+"/manifests/"+strings.Replace(digest, ":", "-", 1) {
					return status500
				}
				return serve
			}
		},
	}, {
		name: "500 on the bundle blob", referrers: true, bundle: true,
		fail: func(repo, _, payload string) func(r *http.Request) failure {
			return func(r *http.Request) failure {
				if r.URL.Path == "/v2/"+repo+"/blobs/"+payload {
					return status500
				}
				return serve
			}
		},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, c.referrers)
			d, raw := f.reg.pushImage("flaky")
			var payload string
			if c.bundle {
				b := bundleJSON(t, key, inToto(d))
				f.reg.pushBundle("flaky", subjectOf(d, raw), b)
				payload = sha256Digest(b)
			} else {
				payload = f.reg.pushLegacy("flaky", d, signedLayer(t, key, simpleSigning(f.reg.host+"/flaky", d)))[0].Digest.String()
			}
			f.reg.setFail(c.fail("flaky", d, payload))
			f.reg.takeRequests()

			for range 2 {
				r := f.verify(t, "flaky", d, p)
				want(t, r, false, imagesv1alpha1.VerificationError, "could not be read, so it counts as unverified")
				if reqs := f.reg.takeRequests(); len(reqs) == 0 {
					t.Fatal("an Error answer was served from memory")
				}
				if _, ok := f.v.Cached(Request{Image: f.reg.image("flaky"), Digest: d, Policy: p}); ok {
					t.Fatal("an Error answer was remembered")
				}
			}

			f.reg.setFail(nil)
			want(t, f.verify(t, "flaky", d, p), true, imagesv1alpha1.VerificationVerified)
			if got := testutil.ToFloat64(f.metrics.Results.WithLabelValues("error")); got != 2 {
				t.Errorf("error count %v, want 2", got)
			}
			if got := testutil.ToFloat64(f.metrics.Results.WithLabelValues("cached")); got != 0 {
				t.Errorf("cached count %v, want 0", got)
			}
		})
	}
}

// TestCallerDeadline: a caller that gives up gets Error; the verification
// goes on for the others, and fills the cache.
func TestCallerDeadline(t *testing.T) {
	f := newFixture(t, false)
	key := newKey(t)
	p := keyPolicy(t, key)
	d, _ := f.reg.pushImage("slow")
	f.reg.pushLegacy("slow", d, signedLayer(t, key, simpleSigning(f.reg.host+"/slow", d)))

	arrived, release := make(chan struct{}), make(chan struct{})
	var once, releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(free) // before the registry closes, which waits for its handlers
	f.reg.setFail(func(r *http.Request) failure {
		if r.Method+" "+r.URL.Path == sigTagRequest("slow", d) {
			once.Do(func() { close(arrived) })
			<-release
		}
		return serve
	})
	req := Request{Image: f.reg.image("slow"), Digest: d, Policy: p, FreshSince: f.clock.Now()}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Result)
	go func() { done <- f.v.Verify(ctx, req) }()
	<-arrived
	cancel()
	r := <-done
	want(t, r, false, imagesv1alpha1.VerificationError, "not read in time")

	// Another caller joins the verification still under way.
	second := make(chan Result)
	go func() { second <- f.v.Verify(context.Background(), req) }()
	free()
	want(t, <-second, true, imagesv1alpha1.VerificationVerified)
	if _, ok := f.v.Cached(req); !ok {
		t.Error("the verification the first caller gave up on was not remembered")
	}
}

// TestMetrics counts verifications by result in
// imagepin_verification_total, each series present from the start.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixture(t, false)
	f.metrics = NewMetrics(reg)
	f.v = New(f.v.source, f.clock, f.metrics)

	results := []string{"verified", "unsigned", "untrusted", "invalid", "error", resultCached}
	if n, err := testutil.GatherAndCount(reg, "imagepin_verification_total"); err != nil || n != len(results) {
		t.Fatalf("%d series (%v), want %d at zero", n, err, len(results))
	}
	key, other := newKey(t), newKey(t)
	p := keyPolicy(t, key)
	ref := func(repo string) string { return f.reg.host + "/" + repo }

	good, _ := f.reg.pushImage("good")
	f.reg.pushLegacy("good", good, signedLayer(t, key, simpleSigning(ref("good"), good)))
	bare, _ := f.reg.pushImage("bare")
	stranger, _ := f.reg.pushImage("stranger")
	f.reg.pushLegacy("stranger", stranger, signedLayer(t, other, simpleSigning(ref("stranger"), stranger)))
	wrong, _ := f.reg.pushImage("wrong")
	f.reg.pushLegacy("wrong", wrong, signedLayer(t, key, simpleSigning(ref("wrong"), bare)))
	broken, _ := f.reg.pushImage("broken")
	f.reg.setFail(func(r *http.Request) failure {
		if strings.HasPrefix(r.URL.Path, "/v2/broken/") {
			return status500
		}
		return serve
	})

	want(t, f.verify(t, "good", good, p), true, imagesv1alpha1.VerificationVerified)
	want(t, f.verify(t, "good", good, p), true, imagesv1alpha1.VerificationVerified) // cached
	want(t, f.verify(t, "bare", bare, p), false, imagesv1alpha1.VerificationUnsigned)
	want(t, f.verify(t, "bare", bare, p), false, imagesv1alpha1.VerificationUnsigned) // cached: same FreshSince
	want(t, f.verify(t, "stranger", stranger, p), false, imagesv1alpha1.VerificationUntrusted)
	want(t, f.verify(t, "wrong", wrong, p), false, imagesv1alpha1.VerificationInvalid)
	want(t, f.verify(t, "broken", broken, p), false, imagesv1alpha1.VerificationError)
	f.clock.SetTime(f.clock.Now().Add(time.Minute))
	want(t, f.verify(t, "bare", bare, p), false, imagesv1alpha1.VerificationUnsigned) // read again

	wantCounts := map[string]float64{"verified": 1, "unsigned": 2, "untrusted": 1, "invalid": 1, "error": 1, "cached": 2}
	for _, res := range results {
		if got := testutil.ToFloat64(f.metrics.Results.WithLabelValues(res)); got != wantCounts[res] {
			t.Errorf("imagepin_verification_total{result=%q} = %v, want %v", res, got, wantCounts[res])
		}
	}
}

// repositoryKey names repo as push events do (registry.ParseTagRef).
func repositoryKey(t testing.TB, f *fixture, repo string) string {
	t.Helper()
	r, err := registry.ParseTagRef(f.reg.host+"/"+repo, "")
	if err != nil {
		t.Fatal(err)
	}
	return r.Repository
}

// TestSigned: a pushed signature makes the verifier forget that the
// digest did not verify, under every policy, so that the next check reads
// the signatures again within the same FreshSince; a verified answer,
// another digest's and another repository's stay.
func TestSigned(t *testing.T) {
	f := newFixture(t, false)
	key, other := newKey(t), newKey(t)
	p, p2 := keyPolicy(t, key), keyPolicy(t, other)
	d, _ := f.reg.pushImage("app")
	d2, _ := f.reg.pushImage("app")
	good, _ := f.reg.pushImage("good")
	f.reg.pushLegacy("good", good, signedLayer(t, key, simpleSigning(f.reg.host+"/good", good)))
	for _, r := range []struct {
		repo, digest string
		p            *Policy
	}{{"app", d, p}, {"app", d, p2}, {"app", d2, p}, {"good", good, p}} {
		f.verify(t, r.repo, r.digest, r.p)
	}
	f.reg.pushLegacy("app", d, signedLayer(t, key, simpleSigning(f.reg.host+"/app", d)))
	f.reg.takeRequests()

	f.v.Signed(repositoryKey(t, f, "app"), d)
	req := func(repo, digest string, p *Policy) Request {
		return Request{Image: f.reg.image(repo), Digest: digest, Policy: p, FreshSince: f.clock.Now()}
	}
	for _, r := range []Request{req("app", d, p), req("app", d, p2)} {
		if _, ok := f.v.Cached(r); ok {
			t.Errorf("%s under policy %s: still remembered unverified", r.Digest, r.Policy.ID)
		}
	}
	for _, r := range []Request{req("app", d2, p), req("good", good, p)} {
		if _, ok := f.v.Cached(r); !ok {
			t.Errorf("%s of %s: forgotten", r.Digest, r.Image)
		}
	}
	want(t, f.verify(t, "app", d, p), true, imagesv1alpha1.VerificationVerified)
	want(t, f.verify(t, "app", d, p2), false, imagesv1alpha1.VerificationUntrusted)
}

// TestSignedDuringVerification: a signature pushed while a verification
// of the digest is under way (its signatures read before the push) is not
// hidden by it: a check after the push neither joins that verification
// nor is answered by what it remembers.
func TestSignedDuringVerification(t *testing.T) {
	f := newFixture(t, false)
	key := newKey(t)
	p := keyPolicy(t, key)
	d, _ := f.reg.pushImage("racing")

	// The referrers are asked for after the .sig tag (none yet): hold the
	// first verification there.
	arrived, release := make(chan struct{}), make(chan struct{})
	var once, releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(free) // before the registry closes, which waits for its handlers
	f.reg.setFail(func(r *http.Request) failure {
		if r.URL.Path == "/v2/racing/referrers/"+d {
			once.Do(func() { close(arrived) })
			<-release
		}
		return serve
	})
	req := Request{Image: f.reg.image("racing"), Digest: d, Policy: p, FreshSince: f.clock.Now()}
	first := make(chan Result)
	go func() { first <- f.v.Verify(context.Background(), req) }()
	<-arrived

	f.reg.pushLegacy("racing", d, signedLayer(t, key, simpleSigning(f.reg.host+"/racing", d)))
	f.v.Signed(repositoryKey(t, f, "racing"), d)
	second := make(chan Result)
	go func() { second <- f.v.Verify(context.Background(), req) }()
	free()

	want(t, <-first, false, imagesv1alpha1.VerificationUnsigned) // read before the push
	want(t, <-second, true, imagesv1alpha1.VerificationVerified)
	want(t, f.verify(t, "racing", d, p), true, imagesv1alpha1.VerificationVerified)
}
