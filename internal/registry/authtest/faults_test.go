package authtest

import (
	"context"
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/registry/faulttest"
)

// The faults here sit between the resolver and the distribution registry
// of TestMain: a TLS proxy serving the registry's own certificate (so the
// resolver trusts it through --registry-ca-file), with the registry's real
// htpasswd auth behind it.

const faultTTL = time.Minute

// goodCredentials offers the registry's account to every registry.
type goodCredentials struct{}

func (goodCredentials) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.FromConfig(authn.AuthConfig{Username: reg.User, Password: reg.Password}), nil
}

type faultEnv struct {
	proxy    *faulttest.Proxy
	clock    *clocktesting.FakeClock
	metrics  *registry.Metrics
	resolver *registry.Resolver
	image    string
}

func newFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(reg.Dir, "cert.pem"), filepath.Join(reg.Dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	e := &faultEnv{
		proxy:   faulttest.New(t, faulttest.Options{Upstream: "https://" + reg.Host, Transport: reg.Transport(), Certificate: &cert}),
		clock:   clocktesting.NewFakeClock(time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)),
		metrics: registry.NewMetrics(nil),
	}
	e.image = e.proxy.Host + "/team/app:v1"
	e.resolver, err = registry.New(registry.Options{
		CAFile: reg.CAFile, Clock: e.clock, Metrics: e.metrics,
		MaxStale: time.Hour, Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *faultEnv) resolve() (registry.Result, error) {
	return e.resolver.Resolve(context.Background(), registry.Request{Image: e.image, Keychain: goodCredentials{}, TTL: faultTTL})
}

// confirm resolves the good digest, then steps past the TTL.
func (e *faultEnv) confirm(t *testing.T) {
	t.Helper()
	res, err := e.resolve()
	if err != nil || res.Digest != digest || res.Stale {
		t.Fatalf("through the proxy, before the fault: result %+v, error %v; want %s", res, err, digest)
	}
	e.clock.Step(faultTTL)
	e.proxy.Reset()
}

// check asserts a clear error that names the registry, says each of
// want, and shows no credential; and the last good digest if there was
// one (stale), or none.
func (e *faultEnv) check(t *testing.T, res registry.Result, err error, hadDigest bool, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; result %+v", res)
	}
	msg := err.Error()
	t.Logf("error: %s", msg)
	for _, w := range append([]string{"registry " + e.proxy.Host}, want...) {
		if !strings.Contains(msg, w) {
			t.Errorf("error does not say %q: %s", w, msg)
		}
	}
	for _, secret := range []string{reg.Password, strings.TrimPrefix(faulttest.BasicAuthorization(reg.User, reg.Password), "Basic ")} {
		if strings.Contains(msg, secret) {
			t.Fatalf("the error shows a credential: %s", msg)
		}
	}
	switch {
	case hadDigest && (res.Digest != digest || !res.Stale):
		t.Fatalf("result %+v, want the last good digest %s marked stale", res, digest)
	case !hadDigest && res.Digest != "":
		t.Fatalf("result %+v, want no digest", res)
	}
}

// hold resolves n more times within the TTL: nothing is sent.
func (e *faultEnv) hold(t *testing.T, n int) {
	t.Helper()
	before := e.proxy.Count("", "")
	errsBefore := testutil.ToFloat64(e.metrics.Requests.WithLabelValues(e.proxy.Host, http.MethodHead, "error"))
	for range n {
		if _, err := e.resolve(); err == nil {
			t.Fatal("the failure was forgotten within the TTL")
		}
	}
	if got := e.proxy.Count("", ""); got != before {
		t.Fatalf("%d requests within the TTL of a failure, want none", got-before)
	}
	if got := testutil.ToFloat64(e.metrics.Requests.WithLabelValues(e.proxy.Host, http.MethodHead, "error")); got != errsBefore {
		t.Fatalf("%v connection attempts within the TTL of a failure, want none", got-errsBefore)
	}
}

func TestFaultUntrustedCertificate(t *testing.T) {
	e := newFaultEnv(t)
	e.confirm(t)
	e.proxy.Set(faulttest.Faults{UntrustedTLS: true})

	res, err := e.resolve()
	e.check(t, res, err, true, "TLS certificate", "not trusted", "--registry-ca-file")
	if got := e.proxy.Count("", ""); got != 0 {
		t.Errorf("%d requests got through a TLS handshake that failed", got)
	}
	if got := testutil.ToFloat64(e.metrics.Requests.WithLabelValues(e.proxy.Host, http.MethodHead, "error")); got < 1 || got > 3 {
		t.Errorf("HEAD attempts = %v, want 1 to 3", got)
	}
	e.hold(t, 10)

	e.proxy.Set(faulttest.Faults{})
	e.clock.Step(faultTTL)
	if res, err := e.resolve(); err != nil || res.Digest != digest || res.Stale {
		t.Fatalf("certificate trusted again: result %+v, error %v", res, err)
	}
}

func TestFaultUnauthorizedWithValidCredentials(t *testing.T) {
	e := newFaultEnv(t)
	e.confirm(t)
	e.proxy.Set(faulttest.Faults{Status: http.StatusUnauthorized})

	res, err := e.resolve()
	e.check(t, res, err, true, "authentication failed", "check the pull secret")
	// The credential once (a 401 is not retried), then anonymous access,
	// as a kubelet falls back: its ping and its HEAD.
	if got := e.proxy.Count("", ""); got < 1 || got > 4 {
		t.Errorf("requests = %d, want 1 to 4: a 401 is not retried, anonymous access is tried once", got)
	}
	e.hold(t, 10)
}

func TestFaultTokenServiceFails(t *testing.T) {
	for _, tt := range []struct {
		status int
		want   []string
	}{
		{http.StatusInternalServerError, []string{"the token service of registry", "500 Internal Server Error"}},
		{http.StatusBadGateway, []string{"the token service of registry", "502 Bad Gateway"}},
		{http.StatusUnauthorized, []string{"authentication failed"}},
		{http.StatusForbidden, []string{"authentication failed"}},
	} {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			// A resolver that has not met the registry yet: it pings, is
			// told to get a bearer token, and the token service fails,
			// echoing the credentials it was sent.
			e := newFaultEnv(t)
			e.proxy.Set(faulttest.Faults{TokenStatus: tt.status})
			res, err := e.resolve()
			e.check(t, res, err, false, tt.want...)
			if !strings.Contains(err.Error(), "<redacted>") {
				t.Errorf("the token service's echo of the credentials should be shown redacted: %v", err)
			}
			if got := e.proxy.Count(http.MethodGet, "/token"); got < 1 || got > 3 {
				t.Errorf("token requests = %d, want 1 to 3", got)
			}
			e.hold(t, 10)
		})
	}
}

// The digest faults against the real registry: never a wrong digest.
func TestFaultDigestsAgainstTheDistributionRegistry(t *testing.T) {
	e := newFaultEnv(t)
	e.confirm(t)

	// A malformed HEAD digest is not trusted: the manifest is fetched
	// and hashed, the distribution registry's GET header checked.
	e.proxy.Set(faulttest.Faults{HeadDigest: "sha256:abc"})
	if res, err := e.resolve(); err != nil || res.Digest != digest || res.Stale {
		t.Fatalf("malformed HEAD digest: result %+v, error %v; want %s from the manifest", res, err, digest)
	}
	if h, g := e.proxy.Count(http.MethodHead, "/manifests/"), e.proxy.Count(http.MethodGet, "/manifests/"); h != 1 || g != 1 {
		t.Errorf("HEADs %d and GETs %d, want 1 each", h, g)
	}

	// The manifest does not match its digest: rejected, last digest kept.
	e.clock.Step(faultTTL)
	e.proxy.Set(faulttest.Faults{OmitHeadDigest: true, CorruptManifest: true})
	res, err := e.resolve()
	e.check(t, res, err, true, "does not match", "not trusted")
	e.hold(t, 10)

	// A 100 MiB answer is not read.
	e.clock.Step(faultTTL)
	e.proxy.Reset()
	e.proxy.Set(faulttest.Faults{OmitHeadDigest: true, HugeManifest: 100 << 20})
	res, err = e.resolve()
	e.check(t, res, err, true, "more than 4 MiB", "not read")
	if sent := e.proxy.BodyBytes(); sent > 32<<20 {
		t.Errorf("%d MiB sent before the resolver stopped reading", sent>>20)
	}
}
