package receiver

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/registry/registrytest"
)

const testToken = "s3cret-token"

// resolvingChecker stands in for the controller's check of the ImagePins
// naming a tag: it resolves the tag through the real resolver with a long
// TTL, as a check between ticks does, and remembers what it got.
type resolvingChecker struct {
	resolver *registry.Resolver
	images   map[registry.TagRef]string // the tags "ImagePins" name

	mu      sync.Mutex
	got     []string
	checked int
}

func (c *resolvingChecker) Names(t registry.TagRef) bool {
	for ref := range c.images {
		if ref == t || (t.Tag == "" && ref.Repository == t.Repository) {
			return true
		}
	}
	return false
}

func (c *resolvingChecker) Recheck(t registry.TagRef) (queued, full int) {
	for ref, image := range c.images {
		if ref != t && (t.Tag != "" || ref.Repository != t.Repository) {
			continue
		}
		res, err := c.resolver.Resolve(context.Background(), registry.Request{Image: image, TTL: time.Hour})
		c.mu.Lock()
		c.checked++
		if err == nil {
			c.got = append(c.got, res.Digest)
		}
		c.mu.Unlock()
		queued++
	}
	return queued, 0
}

func (c *resolvingChecker) last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.got) == 0 {
		return ""
	}
	return c.got[len(c.got)-1]
}

type fixture struct {
	reg      *registrytest.Registry
	resolver *registry.Resolver
	checker  *resolvingChecker
	clock    *clocktesting.FakeClock
	rc       *Receiver
	metrics  *Metrics
	dir      string
}

// newFixture: an in-process registry with team/app:v1 pushed and resolved,
// a real resolver, and a receiver whose every endpoint has testToken.
func newFixture(t *testing.T) (*fixture, string) {
	t.Helper()
	f := &fixture{reg: registrytest.New(), clock: clocktesting.NewFakeClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))}
	t.Cleanup(f.reg.Close)
	var err error
	f.resolver, err = registry.New(registry.Options{InsecureRegistries: []string{f.reg.Host}})
	if err != nil {
		t.Fatal(err)
	}
	first := f.reg.Push(t, "team/app:v1")
	ref, err := registry.TagRefOf(f.reg.Image("team/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	f.checker = &resolvingChecker{resolver: f.resolver, images: map[registry.TagRef]string{ref: f.reg.Image("team/app:v1")}}
	if _, err := f.resolver.Resolve(context.Background(), registry.Request{Image: f.reg.Image("team/app:v1"), TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	f.dir = t.TempDir()
	for ep := range authOf {
		if err := os.WriteFile(filepath.Join(f.dir, ep), []byte(testToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f.metrics = NewMetrics(nil)
	f.rc, err = New(Options{Hinter: f.resolver, Checker: f.checker, SecretDir: f.dir, Clock: f.clock, Metrics: f.metrics, MaxBodyBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	return f, first
}

// post sends body to endpoint from sender, with headers, and returns the
// status code.
func (f *fixture) post(endpoint, sender, body string, header map[string]string) int {
	req := httptest.NewRequest(http.MethodPost, PathPrefix+endpoint, strings.NewReader(body))
	req.RemoteAddr = sender + ":40000"
	for k, v := range header {
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	f.rc.ServeHTTP(w, req)
	return w.Code
}

func (f *fixture) heads() int {
	h, _ := f.reg.ManifestRequests()
	return h
}

func genericBody(image string) string { return fmt.Sprintf(`{"image": %q}`, image) }

func bearer() map[string]string { return map[string]string{"Authorization": "Bearer " + testToken} }

func TestFloodOfForgedEventsCostsTwoHEADsAndChangesNothing(t *testing.T) {
	f, first := newFixture(t)
	before := f.heads()
	body := genericBody(f.reg.Image("team/app:v1"))
	for i := range 1000 {
		// Many senders, so that no per-sender budget hides the cost.
		if code := f.post(Generic, fmt.Sprintf("10.0.%d.%d", i/250, i%250), body, bearer()); code != http.StatusAccepted {
			t.Fatalf("event %d: status %d, want 202", i, code)
		}
	}
	if got := f.heads() - before; got != 1 {
		t.Fatalf("HEADs for 1000 events in one instant = %d, want 1 (the rest wait for the confirmation)", got)
	}
	f.clock.Step(DefaultMinGap / 2)
	waitFor(t, func() bool { return f.heads()-before == 2 }, "the confirmation's HEAD")
	if got := f.checker.last(); got != first {
		t.Errorf("after the flood the tag resolves to %s, want the unmoved %s: an event is never an answer", got, first)
	}
	hinted := testutil.ToFloat64(f.metrics.Pushes.WithLabelValues(Generic, resultHinted))
	coalesced := testutil.ToFloat64(f.metrics.Pushes.WithLabelValues(Generic, resultCoalesced))
	if hinted != 1 || coalesced != 999 {
		t.Errorf("pushes hinted %v, coalesced %v; want 1 and 999", hinted, coalesced)
	}
	if got := testutil.ToFloat64(f.metrics.Rechecks.WithLabelValues("queued")); got != 2 {
		t.Errorf("rechecks = %v, want 2", got)
	}
}

func TestPushIsSeenAtOnceConfirmedAndAgainAfterTheGap(t *testing.T) {
	f, _ := newFixture(t)
	second := f.reg.Push(t, "team/app:v1")
	body := genericBody(f.reg.Image("team/app:v1"))
	if code := f.post(Generic, "10.0.0.1", body, bearer()); code != http.StatusAccepted {
		t.Fatalf("status %d, want 202", code)
	}
	if got := f.checker.last(); got != second {
		t.Fatalf("after the event the tag resolves to %s, want the pushed %s", got, second)
	}
	// The confirmation asks once more (a registry may notify before the
	// tag points at the new manifest).
	f.clock.Step(DefaultMinGap / 2)
	waitFor(t, func() bool { f.checker.mu.Lock(); defer f.checker.mu.Unlock(); return f.checker.checked == 2 }, "the confirmation")
	// CI pushes again within the gap of the confirmation: seen at its end.
	third := f.reg.Push(t, "team/app:v1")
	f.clock.Step(DefaultMinGap / 2)
	if code := f.post(Generic, "10.0.0.1", body, bearer()); code != http.StatusAccepted {
		t.Fatalf("status %d, want 202", code)
	}
	if got := testutil.ToFloat64(f.metrics.Pushes.WithLabelValues(Generic, resultDeferred)); got != 1 {
		t.Fatalf("deferred pushes = %v, want 1", got)
	}
	if got := f.checker.last(); got != second {
		t.Fatalf("within the gap the tag was asked again (%s)", got)
	}
	f.clock.Step(DefaultMinGap / 2)
	waitFor(t, func() bool { return f.checker.last() == third }, "the second push to be seen after the gap")
}

func TestHintsOverTheBudgetAreDropped(t *testing.T) {
	f, _ := newFixture(t)
	f.reg.Push(t, "team/app:v2")
	v2, _ := registry.TagRefOf(f.reg.Image("team/app:v2"))
	f.checker.images[v2] = f.reg.Image("team/app:v2")
	rc, err := New(Options{Hinter: f.resolver, Checker: f.checker, SecretDir: f.dir, Clock: f.clock, Metrics: f.metrics, HintQPS: 0.001, HintBurst: 1})
	if err != nil {
		t.Fatal(err)
	}
	f.rc = rc
	for _, img := range []string{"team/app:v1", "team/app:v2"} {
		if code := f.post(Generic, "10.0.0.1", genericBody(f.reg.Image(img)), bearer()); code != http.StatusAccepted {
			t.Fatalf("status %d, want 202", code)
		}
	}
	if got := testutil.ToFloat64(f.metrics.Pushes.WithLabelValues(Generic, resultDropped)); got != 1 {
		t.Errorf("dropped pushes = %v, want 1 (a budget of one hint)", got)
	}
	// The confirmation spends the budget too: it has none left.
	before := f.heads()
	f.clock.Step(DefaultMinGap)
	if got := testutil.ToFloat64(f.metrics.HintsDropped); got != 2 {
		t.Errorf("hints dropped = %v, want 2 (the push and the confirmation)", got)
	}
	if got := f.heads() - before; got != 0 {
		t.Errorf("a confirmation over the budget sent %d HEADs", got)
	}
}

func TestARepositoryHintCoversItsTags(t *testing.T) {
	f, _ := newFixture(t)
	before := f.heads()
	repo := fmt.Sprintf(`{"repository": %q}`, f.reg.Image("team/app"))
	for _, body := range []string{repo, genericBody(f.reg.Image("team/app:v1")), repo} {
		if code := f.post(Generic, "10.4.0.1", body, bearer()); code != http.StatusAccepted {
			t.Fatalf("status %d, want 202", code)
		}
	}
	if got := f.heads() - before; got != 1 {
		t.Errorf("a repository's and its tag's events in one instant sent %d HEADs, want 1", got)
	}
	if got := testutil.ToFloat64(f.metrics.Pushes.WithLabelValues(Generic, resultCoalesced)); got != 2 {
		t.Errorf("coalesced = %v, want 2", got)
	}
}

func TestEventsNobodyUsesCostNothing(t *testing.T) {
	f, _ := newFixture(t)
	before := f.heads()
	for _, image := range []string{f.reg.Image("team/app:v2"), f.reg.Image("team/other:v1"), "ghcr.io/someone/else:v1"} {
		if code := f.post(Generic, "10.0.0.1", genericBody(image), bearer()); code != http.StatusAccepted {
			t.Fatalf("%s: status %d, want 202", image, code)
		}
	}
	if got := f.heads() - before; got != 0 {
		t.Errorf("HEADs for events nobody uses = %d, want 0", got)
	}
	if got := testutil.ToFloat64(f.metrics.Pushes.WithLabelValues(Generic, resultUnused)); got != 3 {
		t.Errorf("unused pushes = %v, want 3", got)
	}
}

func TestBadRequestsAreRefusedWithTheirStatus(t *testing.T) {
	f, _ := newFixture(t)
	good := genericBody(f.reg.Image("team/app:v1"))
	sign := func(key, body string) map[string]string {
		mac := hmac.New(sha256.New, []byte(key))
		mac.Write([]byte(body))
		return map[string]string{"X-Signature": "sha256=" + hex.EncodeToString(mac.Sum(nil))}
	}
	tests := []struct {
		name     string
		endpoint string
		body     string
		header   map[string]string
		want     int
	}{
		{"generic signed", Generic, good, sign(testToken, good), http.StatusAccepted},
		{"generic signed with another key", Generic, good, sign("other", good), http.StatusUnauthorized},
		{"generic signature of another body", Generic, good, sign(testToken, good+" "), http.StatusUnauthorized},
		{"generic signature not hex", Generic, good, map[string]string{"X-Signature": "sha256=zz"}, http.StatusUnauthorized},
		{"generic wrong token", Generic, good, map[string]string{"Authorization": "Bearer nope"}, http.StatusUnauthorized},
		{"generic no credential", Generic, good, nil, http.StatusUnauthorized},
		{"distribution raw token refused", Distribution, `{"events":[]}`, map[string]string{"Authorization": "Basic " + testToken}, http.StatusUnauthorized},
		{"harbor raw auth header", Harbor, `{"type":"PULL_ARTIFACT","event_data":{}}`, map[string]string{"Authorization": testToken}, http.StatusAccepted},
		{"ghcr unsigned", GHCR, `{}`, map[string]string{"X-GitHub-Event": "ping"}, http.StatusUnauthorized},
		{"malformed", Generic, `{"image": `, bearer(), http.StatusBadRequest},
		{"not an image", Generic, `{"image": "Not An Image"}`, bearer(), http.StatusBadRequest},
		{"oversized", Generic, `{"image": "` + strings.Repeat("a", 5000) + `"}`, bearer(), http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := f.post(tt.endpoint, "10.1.0.1", tt.body, tt.header); got != tt.want {
				t.Errorf("status %d, want %d", got, tt.want)
			}
		})
	}
	for _, code := range []string{"202", "401", "400", "413"} {
		var n float64
		for ep := range authOf {
			n += testutil.ToFloat64(f.metrics.Requests.WithLabelValues(ep, code))
		}
		if n == 0 {
			t.Errorf("no request counted with code %s", code)
		}
	}
}

func TestTokensInThePathAndRouting(t *testing.T) {
	f, _ := newFixture(t)
	call := func(method, path string) int {
		req := httptest.NewRequest(method, path, bytes.NewReader([]byte(`{"repository":"x"}`)))
		w := httptest.NewRecorder()
		f.rc.ServeHTTP(w, req)
		return w.Code
	}
	tests := []struct {
		name, method, path string
		want               int
	}{
		{"docker hub wrong token", http.MethodPost, PathPrefix + DockerHub + "/nope", http.StatusUnauthorized},
		{"docker hub without token", http.MethodPost, PathPrefix + DockerHub, http.StatusNotFound},
		{"token where none is taken", http.MethodPost, PathPrefix + Generic + "/" + testToken, http.StatusNotFound},
		{"unknown endpoint", http.MethodPost, PathPrefix + "nexus", http.StatusNotFound},
		{"GET", http.MethodGet, PathPrefix + Generic, http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := call(tt.method, tt.path); got != tt.want {
				t.Errorf("status %d, want %d", got, tt.want)
			}
		})
	}
	if err := os.Remove(filepath.Join(f.dir, Quay)); err != nil {
		t.Fatal(err)
	}
	f.clock.Step(secretsReloadAfter)
	if got := call(http.MethodPost, PathPrefix+Quay+"/"+testToken); got != http.StatusNotFound {
		t.Errorf("an endpoint whose secret was removed answers %d, want 404", got)
	}
}

func TestOneSenderIsRateLimited(t *testing.T) {
	f, _ := newFixture(t)
	body := genericBody(f.reg.Image("team/app:v1"))
	limited := 0
	for range DefaultSenderBurst + 50 {
		if f.post(Generic, "10.2.0.1", body, bearer()) == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited != 50 {
		t.Errorf("%d of %d requests from one sender limited, want 50 (its burst is %d)", limited, DefaultSenderBurst+50, DefaultSenderBurst)
	}
	// Requests without the secret spend nothing: behind an Ingress they
	// come from the registries' address.
	for range 3 * DefaultSenderBurst {
		if got := f.post(Generic, "10.2.0.3", body, map[string]string{"Authorization": "Bearer nope"}); got != http.StatusUnauthorized {
			t.Fatalf("a request without the secret gets %d, want 401", got)
		}
	}
	if got := f.post(Generic, "10.2.0.3", body, bearer()); got != http.StatusAccepted {
		t.Errorf("after %d refused requests from its address, an authentic one gets %d, want 202", 3*DefaultSenderBurst, got)
	}
	if got := f.post(Generic, "10.2.0.2", body, bearer()); got != http.StatusAccepted {
		t.Errorf("another sender gets %d, want 202", got)
	}
	f.clock.Step(time.Second)
	if got := f.post(Generic, "10.2.0.1", body, bearer()); got != http.StatusAccepted {
		t.Errorf("the limited sender a second later gets %d, want 202", got)
	}
}

func TestStandbyAnswers503(t *testing.T) {
	f, _ := newFixture(t)
	f.rc.opts.Leading = func() bool { return false }
	if got := f.post(Generic, "10.3.0.1", genericBody(f.reg.Image("team/app:v1")), bearer()); got != http.StatusServiceUnavailable {
		t.Errorf("a standby answers %d, want 503", got)
	}
}

func waitFor(t *testing.T, ok func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAnswersAnAlertWatchesStartAtZero(t *testing.T) {
	f, _ := newFixture(t)
	if n, want := testutil.CollectAndCount(f.metrics.Requests), 3*len(authOf); n != want {
		t.Errorf("%d request series at the start, want %d (202, 400 and 401 of every endpoint, at zero)", n, want)
	}
}
