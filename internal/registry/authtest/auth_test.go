// Package authtest tests the resolver's credentials against the real
// distribution registry (htpasswd auth, TLS from a CA made for the test) and
// pull secrets stored in envtest's real API server.
package authtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/testenv"
)

var (
	env    *testenv.Env
	k8s    client.Client
	reg    *testenv.Registry
	digest string // of reg's team/app:v1
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var err error
	if env, err = testenv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	if k8s, err = client.New(env.Config, client.Options{Scheme: env.Scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if reg, err = testenv.StartRegistry(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = reg.Stop() }()
	if digest, err = pushImage("team/app:v1"); err != nil {
		fmt.Fprintln(os.Stderr, "push test image:", err)
		return 1
	}
	return m.Run()
}

func pushImage(repoTag string) (string, error) {
	img, err := random.Image(256, 1)
	if err != nil {
		return "", err
	}
	ref, err := name.NewTag(reg.Host + "/" + repoTag)
	if err != nil {
		return "", err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: reg.CAPool, MinVersion: tls.VersionTLS12}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: reg.User, Password: reg.Password}), remote.WithTransport(tr)); err != nil {
		return "", err
	}
	d, err := img.Digest()
	return d.String(), err
}

func newResolver(t *testing.T, caFile string, insecure ...string) *registry.Resolver {
	t.Helper()
	r, err := registry.New(registry.Options{CAFile: caFile, InsecureRegistries: insecure, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func namespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "auth-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func pullSecret(t *testing.T, ns, secretName, host, user, password string) {
	t.Helper()
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: secretName},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: testenv.DockerConfigJSON(host, user, password)},
	}
	if err := k8s.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

func podSpec(serviceAccount string, pullSecrets ...string) *corev1.PodSpec {
	s := &corev1.PodSpec{ServiceAccountName: serviceAccount}
	for _, n := range pullSecrets {
		s.ImagePullSecrets = append(s.ImagePullSecrets, corev1.LocalObjectReference{Name: n})
	}
	return s
}

func resolveFor(t *testing.T, r *registry.Resolver, ns string, spec *corev1.PodSpec, image string) (registry.Result, error) {
	t.Helper()
	kc, err := (&registry.Keychains{Reader: k8s}).ForPod(context.Background(), ns, spec)
	if err != nil {
		t.Fatal(err)
	}
	return r.Resolve(context.Background(), registry.Request{Image: image, Keychain: kc, TTL: time.Minute})
}

func TestPullSecretOfTheWorkloadWorks(t *testing.T) {
	ns := namespace(t)
	pullSecret(t, ns, "creds", reg.Host, reg.User, reg.Password)
	res, err := resolveFor(t, newResolver(t, reg.CAFile), ns, podSpec("", "creds"), reg.Host+"/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest != digest {
		t.Fatalf("digest = %s, want %s", res.Digest, digest)
	}
}

func TestPullSecretOfTheServiceAccountWorks(t *testing.T) {
	ns := namespace(t)
	pullSecret(t, ns, "sa-creds", reg.Host, reg.User, reg.Password)
	sa := &corev1.ServiceAccount{
		ObjectMeta:       metav1.ObjectMeta{Namespace: ns, Name: "builder"},
		ImagePullSecrets: []corev1.LocalObjectReference{{Name: "sa-creds"}},
	}
	if err := k8s.Create(context.Background(), sa); err != nil {
		t.Fatal(err)
	}
	res, err := resolveFor(t, newResolver(t, reg.CAFile), ns, podSpec("builder"), reg.Host+"/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest != digest {
		t.Fatalf("digest = %s, want %s", res.Digest, digest)
	}
}

// A malformed pull secret costs only itself: the workload's good secret
// still works.
func TestMalformedPullSecretIsSkipped(t *testing.T) {
	ns := namespace(t)
	// The API server checks that a dockercfg secret is JSON, not that
	// its entries are credentials.
	bad := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "broken"},
		Type:       corev1.SecretTypeDockercfg,
		Data:       map[string][]byte{corev1.DockerConfigKey: []byte(`{"127.0.0.1:1": "not an object"}`)},
	}
	if err := k8s.Create(context.Background(), bad); err != nil {
		t.Fatal(err)
	}
	pullSecret(t, ns, "creds", reg.Host, reg.User, reg.Password)
	res, err := resolveFor(t, newResolver(t, reg.CAFile), ns, podSpec("", "broken", "creds"), reg.Host+"/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest != digest {
		t.Fatalf("digest = %s, want %s", res.Digest, digest)
	}
}

func TestWrongPasswordSaysAuthenticationFailed(t *testing.T) {
	ns := namespace(t)
	pullSecret(t, ns, "creds", reg.Host, reg.User, "wrong")
	_, err := resolveFor(t, newResolver(t, reg.CAFile), ns, podSpec("", "creds"), reg.Host+"/team/app:v1")
	want := "authentication failed for registry " + reg.Host
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("want an error saying %q, got %v", want, err)
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Fatalf("the error shows the password: %v", err)
	}
}

// A workload in namespace B that names a pull secret that exists only in
// namespace A gets no credentials.
func TestSecretOfAnotherNamespaceIsNeverUsed(t *testing.T) {
	a, b := namespace(t), namespace(t)
	pullSecret(t, a, "creds", reg.Host, reg.User, reg.Password)
	r := newResolver(t, reg.CAFile)

	if _, err := resolveFor(t, r, a, podSpec("", "creds"), reg.Host+"/team/app:v1"); err != nil {
		t.Fatalf("in the secret's own namespace: %v", err)
	}
	_, err := resolveFor(t, r, b, podSpec("", "creds"), reg.Host+"/team/app:v1")
	if err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("namespace %s resolved with namespace %s's secret (err %v)", b, a, err)
	}
}

// A pull secret is offered only to the registry its docker config names:
// another registry asked with the same keychain sees no credentials.
func TestCredentialsGoOnlyToTheirRegistry(t *testing.T) {
	var mu sync.Mutex
	var authHeaders []string
	inner := ggcrregistry.New()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := r.Header.Get("Authorization"); h != "" {
			mu.Lock()
			authHeaders = append(authHeaders, h)
			mu.Unlock()
		}
		inner.ServeHTTP(w, r)
	}))
	defer other.Close()
	otherHost := strings.TrimPrefix(other.URL, "http://")
	ref, _ := name.NewTag(otherHost+"/team/app:v1", name.Insecure)
	img, _ := random.Image(64, 1)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}

	ns := namespace(t)
	pullSecret(t, ns, "creds", reg.Host, reg.User, reg.Password)
	r := newResolver(t, reg.CAFile, otherHost)
	if _, err := resolveFor(t, r, ns, podSpec("", "creds"), otherHost+"/team/app:v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := resolveFor(t, r, ns, podSpec("", "creds"), reg.Host+"/team/app:v1"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(authHeaders) > 0 {
		t.Fatalf("registry %s received credentials meant for %s: %d Authorization headers", otherHost, reg.Host, len(authHeaders))
	}
}

func TestRegistryCAIsNeededAndHonoured(t *testing.T) {
	ns := namespace(t)
	pullSecret(t, ns, "creds", reg.Host, reg.User, reg.Password)

	_, err := resolveFor(t, newResolver(t, ""), ns, podSpec("", "creds"), reg.Host+"/team/app:v1")
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without the CA: want a certificate error, got %v", err)
	}
	res, err := resolveFor(t, newResolver(t, reg.CAFile), ns, podSpec("", "creds"), reg.Host+"/team/app:v1")
	if err != nil || res.Digest != digest {
		t.Fatalf("with --registry-ca-file: digest %s, error %v; want %s", res.Digest, err, digest)
	}
	res, err = resolveFor(t, newResolver(t, "", reg.Host), ns, podSpec("", "creds"), reg.Host+"/team/app:v1")
	if err != nil || res.Digest != digest {
		t.Fatalf("with --insecure-registry: digest %s, error %v; want %s", res.Digest, err, digest)
	}
}

func TestMissingCAFileIsAClearError(t *testing.T) {
	_, err := registry.New(registry.Options{CAFile: "/nonexistent/ca.pem"})
	if err == nil || !strings.Contains(err.Error(), "read registry CA file") {
		t.Fatalf("want a clear error, got %v", err)
	}
}

// Issue 13 item 10b: every matching pull secret is tried in turn, as a
// kubelet tries them: a stale secret listed first does not hide a good
// one, here against the distribution registry's real htpasswd auth.
func TestStalePullSecretDoesNotHideAGoodOne(t *testing.T) {
	ns := namespace(t)
	pullSecret(t, ns, "stale", reg.Host, reg.User, "rotated-away")
	pullSecret(t, ns, "creds", reg.Host, reg.User, reg.Password)
	res, err := resolveFor(t, newResolver(t, reg.CAFile), ns, podSpec("", "stale", "creds"), reg.Host+"/team/app:v1")
	if err != nil || res.Digest != digest {
		t.Fatalf("stale secret first, then a good one: digest %s, error %v; want %s", res.Digest, err, digest)
	}
}
