package registry

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// Issue 13 item 8: a cloud helper that returns a new token on every call
// (ECR, ACR) keeps one cache entry, one transport and one HEAD per TTL;
// the token is refreshed, and the refreshed one is what the registry gets.
func TestRotatingCloudTokenKeepsOneCacheEntryAndOneTransport(t *testing.T) {
	f := newFixture(t)
	want := f.reg.push("team/app:v1")
	rot := &rotatingKeychain{}
	var seen authLog
	f.reg.setIntercept(basicAuth(rot.valid, &seen))
	ecr := newCloudKeychain("ECR", func(h string) bool { return h == hostname(f.reg.host) }, rot, f.clock)
	resolve := func() {
		t.Helper()
		// A keychain per resolution, as the controller builds one per workload.
		kc := &podKeychain{cloud: []*cloudKeychain{ecr}}
		res, err := f.resolver.Resolve(context.Background(), Request{Image: f.reg.image("team/app:v1"), Keychain: kc, TTL: time.Minute})
		if err != nil || res.Digest != want {
			t.Fatalf("digest %s, error %v; want %s", res.Digest, err, want)
		}
	}
	for range 10 {
		resolve()
	}
	if got := f.reg.count("HEAD manifests"); got != 1 {
		t.Errorf("HEADs for 10 resolutions = %d, want 1", got)
	}
	if got := len(f.resolver.pullers); got != 1 {
		t.Errorf("transports = %d, want 1", got)
	}

	// Past the TTL and the token's reuse: one more HEAD, a fresh token on
	// the same transport.
	f.clock.Step(refreshEvery + time.Minute)
	resolve()
	if got := f.reg.count("HEAD manifests"); got != 2 {
		t.Errorf("HEADs after the TTL = %d, want 2", got)
	}
	if got := len(f.resolver.pullers); got != 1 {
		t.Errorf("transports after a token refresh = %d, want 1", got)
	}
	if n := rot.count(); n != 2 {
		t.Errorf("helper calls = %d, want 2 (one per refresh)", n)
	}
	if got := seen.last(); got != "AWS:token-2" {
		t.Errorf("the registry last got %q, want the refreshed token AWS:token-2", got)
	}

	// An idle transport is dropped.
	f.clock.Step(pullerIdleAfter + sweepInterval)
	f.reg.setIntercept(nil)
	f.reg.push("team/other:v1")
	if _, err := f.resolver.Resolve(context.Background(), Request{Image: f.reg.image("team/other:v1"), TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	f.resolver.mu.Lock()
	_, kept := f.resolver.pullers[f.reg.host+"|ECR @"+f.reg.host]
	f.resolver.mu.Unlock()
	if kept {
		t.Errorf("the ECR transport idle for %s was kept", pullerIdleAfter+sweepInterval)
	}
}

// Issue 13 item 8: a pull secret is known by its value. Two namespaces'
// secrets with different credentials are two identities (an answer seen
// with one is never served to the other); the same credential copied into
// two namespaces is one, and costs one request per tag.
func TestPullSecretsAreKnownByTheirCredential(t *testing.T) {
	f := newFixture(t)
	f.reg.push("team/app:v1")
	resolve := func(ns, user, pass string) {
		t.Helper()
		kc := &podKeychain{secrets: []pullSecret{{name: "pull secret " + ns + "/creds", kc: staticKeychain{user, pass}}}}
		if _, err := f.resolver.Resolve(context.Background(), Request{Image: f.reg.image("team/app:v1"), Keychain: kc, TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	resolve("a", "alice", "one")
	resolve("b", "bob", "two")
	if got := f.reg.count("HEAD manifests"); got != 2 {
		t.Fatalf("HEADs = %d, want 2: different credentials share nothing", got)
	}
	resolve("c", "alice", "one")
	resolve("d", "alice", "one")
	if got := f.reg.count("HEAD manifests"); got != 2 {
		t.Fatalf("HEADs = %d, want still 2: one credential in three namespaces is one identity", got)
	}
}

// Issue 13 item 10b: each matching pull secret is tried, then anonymous
// access: a stale secret does not break a public image, nor a private one
// another secret can read; when all are refused, the first refusal is
// reported.
func TestEachPullSecretThenAnonymousIsTried(t *testing.T) {
	f := newFixture(t)
	public := f.reg.push("library/nginx:1.27")
	private := f.reg.push("team/app:v1")
	var seen authLog
	f.reg.setIntercept(basicAuth(func(u, p string) bool { return u == "bob" && p == "current" }, &seen, "library/nginx"))
	secret := func(name, user, pass string) pullSecret {
		return pullSecret{name: "pull secret ns/" + name, kc: staticKeychain{user, pass}}
	}
	stale := secret("stale", "alice", "expired-password")
	good := secret("good", "bob", "current")
	resolve := func(image string, secrets ...pullSecret) (Result, error) {
		return f.resolver.Resolve(context.Background(), Request{Image: f.reg.image(image), Keychain: &podKeychain{secrets: secrets}, TTL: time.Minute})
	}

	if res, err := resolve("library/nginx:1.27", stale); err != nil || res.Digest != public {
		t.Fatalf("public image with a stale secret: digest %s, error %v; want %s", res.Digest, err, public)
	}
	if res, err := resolve("team/app:v1", stale, good); err != nil || res.Digest != private {
		t.Fatalf("private image, stale secret then a good one: digest %s, error %v; want %s", res.Digest, err, private)
	}
	_, err := resolve("team/app:v1", stale, secret("other", "carol", "wrong-too"))
	if err == nil {
		t.Fatal("private image with only stale secrets resolved")
	}
	for _, w := range []string{"authentication failed for registry " + f.reg.host, "3 credentials tried, anonymous access included, all refused"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "expired-password") || strings.Contains(err.Error(), "wrong-too") {
		t.Errorf("the error shows a password: %v", err)
	}
}

// Issue 13 item 12: off-cloud, the cloud keychains are not asked about
// any registry but their own (public.ecr.aws is public: anonymous), and
// nothing reaches stderr. The in-process registry answers under each name.
func TestCloudKeychainsAreAskedOnlyAboutTheirOwnRegistries(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	reg := newTestRegistry(t)
	want := reg.push("team/app:v1")
	ecrHost := "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
	public := []string{"public.ecr.aws", "quay.io", "ghcr.io", reg.host}
	r, err := New(Options{InsecureRegistries: append([]string{ecrHost}, public...), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dialTo(r, reg.host)

	counters := map[string]*countingKeychain{"ECR": {}, "Google": {}, "ACR": {}}
	counted := &cliKeychain{docker: newRefreshing("docker config", authn.DefaultKeychain, nil)}
	for _, c := range defaultCloudKeychains() {
		counted.cloud = append(counted.cloud, newCloudKeychain(c.name, c.serves, counters[c.name], nil))
	}
	cli, err := CLIKeychain(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stderr := captureStderr(t, func() {
		for _, kc := range []authn.Keychain{counted, cli} {
			for _, host := range public {
				res, err := r.Resolve(context.Background(), Request{Image: host + "/team/app:v1", Keychain: kc, TTL: time.Minute})
				if err != nil || res.Digest != want {
					t.Errorf("%s: digest %s, error %v; want %s", host, res.Digest, err, want)
				}
			}
		}
	})
	for name, c := range counters {
		if got := c.asked(); len(got) > 0 {
			t.Errorf("the %s keychain was asked about %v", name, got)
		}
	}
	if stderr != "" {
		t.Errorf("resolving public images wrote to stderr: %q", stderr)
	}

	// Its own registry is the one the ECR keychain is asked about.
	if _, err := r.Resolve(context.Background(), Request{Image: ecrHost + "/team/app:v1", Keychain: counted, TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if got := counters["ECR"].asked(); len(got) != 1 || got[0] != ecrHost {
		t.Errorf("the ECR keychain was asked about %v, want [%s]", got, ecrHost)
	}
}

func TestCloudRegistryHosts(t *testing.T) {
	tests := []struct {
		name, host         string
		ecr, google, azure bool
	}{
		{name: "ECR", host: "123456789012.dkr.ecr.us-east-1.amazonaws.com", ecr: true},
		{name: "ECR China", host: "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", ecr: true},
		{name: "ECR FIPS", host: "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com", ecr: true},
		{name: "ECR Public is public", host: "public.ecr.aws"},
		{name: "not an account", host: "evil.dkr.ecr.us-east-1.amazonaws.com"},
		{name: "GCR", host: "gcr.io", google: true},
		{name: "GCR region", host: "eu.gcr.io", google: true},
		{name: "Artifact Registry", host: "europe-west1-docker.pkg.dev", google: true},
		{name: "ACR", host: "team.azurecr.io", azure: true},
		{name: "ACR China", host: "team.azurecr.cn", azure: true},
		{name: "Docker Hub", host: "index.docker.io"},
		{name: "quay", host: "quay.io"},
		{name: "look-alike", host: "gcr.io.example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if isECR(tt.host) != tt.ecr || isGoogle(tt.host) != tt.google || isACR(tt.host) != tt.azure {
				t.Errorf("%s: ECR %v Google %v ACR %v; want %v %v %v", tt.host, isECR(tt.host), isGoogle(tt.host), isACR(tt.host), tt.ecr, tt.google, tt.azure)
			}
		})
	}
}
