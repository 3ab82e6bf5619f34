package registry

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// anyHostRegistry is an in-process TLS registry that every host name
// reaches: the resolver's transport dials it whatever the host, so that
// real names (registry.example.com, index.docker.io) can be resolved, and
// it counts requests by the Host they were sent to.
type anyHostRegistry struct {
	srv    *httptest.Server
	digest string // of team/app:v1

	mu     sync.Mutex
	byHost map[string]int
}

func newAnyHostRegistry(t *testing.T) *anyHostRegistry {
	t.Helper()
	a := &anyHostRegistry{byHost: map[string]int{}}
	inner := ggcrregistry.New(ggcrregistry.Logger(nullLogger()))
	a.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.byHost[strings.ToLower(r.Host)]++
		a.mu.Unlock()
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(a.srv.Close)
	img, err := random.Image(128, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(a.srv.Listener.Addr().String() + "/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(a.srv.Client().Transport)); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	a.digest = d.String()
	a.reset()
	return a
}

func (a *anyHostRegistry) reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.byHost = map[string]int{}
}

func (a *anyHostRegistry) total() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, c := range a.byHost {
		n += c
	}
	return n
}

func (a *anyHostRegistry) to(host string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.byHost[host]
}

// resolver returns a resolver allowing allowed whose every connection
// goes to the registry.
func (a *anyHostRegistry) resolver(t *testing.T, metrics *Metrics, allowed ...string) *Resolver {
	t.Helper()
	r, err := New(Options{AllowedRegistries: allowed, Metrics: metrics, QPS: 1000, Burst: 1000, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	addr := a.srv.Listener.Addr().String()
	tr := a.srv.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the test's own server under every name
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	r.transport.(*politeTransport).secure = tr
	return r
}

func TestAllowedRegistriesAreTheOnlyOnesContacted(t *testing.T) {
	a := newAnyHostRegistry(t)
	r := a.resolver(t, NewMetrics(nil),
		"registry.example.com", "*.corp.example", "other.example.com:5000", "Mixed.Case.Example,docker.io", " spaced.example ")

	tests := []struct {
		image string
		host  string // the Host the request goes to
		allow bool
	}{
		{"registry.example.com/team/app:v1", "registry.example.com", true},
		{"Registry.Example.COM/team/app:v1", "registry.example.com", true},
		{"registry.example.com:443/team/app:v1", "registry.example.com:443", true},
		{"registry.example.com:5000/team/app:v1", "registry.example.com:5000", false},
		{"registry.example.com.evil.example/team/app:v1", "registry.example.com.evil.example", false},
		{"a.corp.example/team/app:v1", "a.corp.example", true},
		{"a.b.corp.example/team/app:v1", "a.b.corp.example", true},
		{"corp.example/team/app:v1", "corp.example", false},
		{"evilcorp.example/team/app:v1", "evilcorp.example", false},
		{"a.corp.example:5000/team/app:v1", "a.corp.example:5000", false},
		{"other.example.com:5000/team/app:v1", "other.example.com:5000", true},
		{"other.example.com/team/app:v1", "other.example.com", false},
		{"other.example.com:5001/team/app:v1", "other.example.com:5001", false},
		{"mixed.case.example/team/app:v1", "mixed.case.example", true},
		{"spaced.example/team/app:v1", "spaced.example", true},
		// Docker Hub, by any of its names; go-containerregistry sends
		// docker.io and index.docker.io to index.docker.io.
		{"team/app:v1", "index.docker.io", true},
		{"docker.io/team/app:v1", "index.docker.io", true},
		{"index.docker.io/team/app:v1", "index.docker.io", true},
		{"registry-1.docker.io/team/app:v1", "registry-1.docker.io", true},
		{"docker.io:5000/team/app:v1", "docker.io:5000", false},
		{"evil.example.com/team/app:v1", "evil.example.com", false},
	}
	for _, tt := range tests {
		t.Run(tt.image, func(t *testing.T) {
			a.reset()
			// TTL 0: every resolution asks, none is answered from the cache.
			res, err := r.Resolve(context.Background(), Request{Image: tt.image})
			if tt.allow {
				if err != nil || res.Digest != a.digest {
					t.Fatalf("allowed: result %+v, error %v; want %s", res, err, a.digest)
				}
				if a.to(tt.host) == 0 {
					t.Fatalf("no request reached %s", tt.host)
				}
				return
			}
			var na *NotAllowedError
			if !errors.As(err, &na) || res.Digest != "" {
				t.Fatalf("not allowed: result %+v, error %v; want a *NotAllowedError and no digest", res, err)
			}
			if n := a.total(); n != 0 {
				t.Fatalf("%d requests sent for a registry that is not allowed", n)
			}
		})
	}

	_, err := r.Resolve(context.Background(), Request{Image: "evil.example.com/team/app:v1"})
	if want := "resolve evil.example.com/team/app:v1: registry evil.example.com is not in --allowed-registries; not contacted"; err == nil || err.Error() != want {
		t.Errorf("error = %v, want %q", err, want)
	}
	_, err = r.Resolve(context.Background(), Request{Image: "docker.io:5000/team/app:v1"})
	if err == nil || !strings.Contains(err.Error(), "registry docker.io:5000 is not in --allowed-registries") {
		t.Errorf("error = %v", err)
	}
}

func TestDockerHubIsAllowedByAnyOfItsNames(t *testing.T) {
	a := newAnyHostRegistry(t)
	for _, allowed := range []string{"docker.io", "index.docker.io", "registry-1.docker.io", "*.docker.io", "INDEX.DOCKER.IO:443"} {
		t.Run(allowed, func(t *testing.T) {
			r := a.resolver(t, NewMetrics(nil), allowed)
			for _, image := range []string{"team/app:v1", "docker.io/team/app:v1", "index.docker.io/team/app:v1", "registry-1.docker.io/team/app:v1"} {
				if res, err := r.Resolve(context.Background(), Request{Image: image, TTL: time.Minute}); err != nil || res.Digest != a.digest {
					t.Errorf("%s: result %+v, error %v", image, res, err)
				}
			}
		})
	}
	// Another registry's allow-list says nothing of Docker Hub.
	r := a.resolver(t, NewMetrics(nil), "registry.example.com")
	a.reset()
	_, err := r.Resolve(context.Background(), Request{Image: "nginx:1.27", TTL: time.Minute})
	if err == nil || !strings.Contains(err.Error(), "registry docker.io is not in --allowed-registries; not contacted") || a.total() != 0 {
		t.Fatalf("error %v, %d requests; want Docker Hub refused without a request", err, a.total())
	}
}

func TestNoAllowedRegistriesAllowsAll(t *testing.T) {
	a := newAnyHostRegistry(t)
	r := a.resolver(t, NewMetrics(nil))
	for _, image := range []string{"evil.example.com/team/app:v1", "team/app:v1", "x.example:5000/team/app:v1"} {
		if res, err := r.Resolve(context.Background(), Request{Image: image, TTL: time.Minute}); err != nil || res.Digest != a.digest {
			t.Errorf("%s: result %+v, error %v", image, res, err)
		}
	}
}

func TestBadAllowedRegistriesAreRefused(t *testing.T) {
	for _, bad := range []string{"https://registry.example.com", "registry.example.com/team", "user@registry.example.com", "*", "*.", "a*.example.com", "registry.example.com:0", "registry.example.com:http", "exa mple.com", "*.[::1]"} {
		if _, err := New(Options{AllowedRegistries: []string{bad}}); err == nil || !strings.Contains(err.Error(), "--allowed-registries entry") {
			t.Errorf("%q: error %v, want a clear refusal", bad, err)
		}
		var f AllowedRegistriesFlag
		if err := f.Set(bad); err == nil {
			t.Errorf("flag accepted %q", bad)
		}
	}
	for _, good := range []string{"localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000", "*.example.com:8443", "registry.example.com."} {
		if _, err := New(Options{AllowedRegistries: []string{good}}); err != nil {
			t.Errorf("%q refused: %v", good, err)
		}
	}
}

func TestAllowedRegistriesFlagIsCommaSeparatedAndRepeatable(t *testing.T) {
	var got AllowedRegistriesFlag
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.Var(&got, "allowed-registries", AllowedRegistriesUsage)
	if err := fs.Parse([]string{"--allowed-registries=a.example, b.example:5000", "--allowed-registries", "*.c.example,", "--allowed-registries="}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "|") != "a.example|b.example:5000|*.c.example" {
		t.Fatalf("parsed %q", got)
	}
}

func TestAllowListMatching(t *testing.T) {
	l, err := newAllowList([]string{"[::1]:5000", "localhost:5000", "*.example.com", "registry.example.com."})
	if err != nil {
		t.Fatal(err)
	}
	for reg, want := range map[string]bool{
		"[::1]:5000":            true,
		"[::1]:5001":            false,
		"localhost:5000":        true,
		"localhost":             false,
		"a.example.com":         true,
		"A.EXAMPLE.COM":         true,
		"a.example.com:443":     true,
		"example.com":           false,
		"registry.example.com":  true,
		"registry.example.com.": true,
		"index.docker.io":       false,
	} {
		if got := l.check(reg) == nil; got != want {
			t.Errorf("%s allowed = %v, want %v", reg, got, want)
		}
	}
}
