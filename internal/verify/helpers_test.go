package verify

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"google.golang.org/protobuf/encoding/protojson"
	clocktesting "k8s.io/utils/clock/testing"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
)

// testRegistry is go-containerregistry's in-process registry behind two
// httptest servers sharing its storage: the test pushes through one, and
// the verifier reads through the other, which counts the requests it
// gets and can be told to fail some of them. So the counts are the
// verifier's requests only.
type testRegistry struct {
	t testing.TB
	// host is the verifier's side: images are named by it.
	host string
	// pushHost is the test's side.
	pushHost string

	mu       sync.Mutex
	requests []string // "GET /v2/…"
	fail     func(r *http.Request) failure
}

// failure is what the verifier's side does with a request.
type failure int

const (
	serve       failure = iota
	status500           // answer 500
	hangUp              // close the connection without an answer
	notFound404         // answer 404 MANIFEST_UNKNOWN
)

// newTestRegistry starts a registry; referrers turns on its OCI 1.1
// referrers API (without it, referrers are listed in the fallback tag
// "sha256-<hex>", which go-containerregistry's writer keeps).
func newTestRegistry(t testing.TB, referrers bool) *testRegistry {
	t.Helper()
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)), ggcrregistry.WithReferrersSupport(referrers))
	if referrers {
		inner = specReferrers(t, inner)
	}
	tr := &testRegistry{t: t}
	push := httptest.NewServer(inner)
	t.Cleanup(push.Close)
	read := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.mu.Lock()
		tr.requests = append(tr.requests, r.Method+" "+r.URL.Path)
		fail := tr.fail
		tr.mu.Unlock()
		f := serve
		if fail != nil {
			f = fail(r)
		}
		switch f {
		case status500:
			http.Error(w, "the registry failed, for the test", http.StatusInternalServerError)
		case notFound404:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"gone, for the test"}]}`)
		case hangUp:
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			_ = conn.Close()
		default:
			inner.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(read.Close)
	tr.host = strings.TrimPrefix(read.URL, "http://")
	tr.pushHost = strings.TrimPrefix(push.URL, "http://")
	return tr
}

// specReferrers corrects one answer of go-containerregistry's in-process
// registry to what the OCI distribution spec says: its referrers API
// lists each referrer's artifactType as its config's media type, where
// the spec (and registries that implement the API: Docker Hub, GHCR, ECR,
// ACR, Harbor, zot) give the manifest's artifactType when it has one. A
// cosign bundle, whose config is the empty descriptor, would otherwise be
// listed as application/vnd.oci.empty.v1+json. Nothing else is changed.
func specReferrers(t testing.TB, inner http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repo, _, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v2/"), "/referrers/")
		if r.Method != http.MethodGet || !ok {
			inner.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, r)
		var idx v1.IndexManifest
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &idx) != nil {
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
			return
		}
		for i, d := range idx.Manifests {
			m := httptest.NewRecorder()
			inner.ServeHTTP(m, httptest.NewRequest(http.MethodGet, "/v2/"+repo+"/manifests/"+d.Digest.String(), nil))
			var mf struct {
				ArtifactType string `json:"artifactType"`
			}
			if err := json.Unmarshal(m.Body.Bytes(), &mf); err != nil {
				t.Errorf("referrer %s: %v", d.Digest, err)
			}
			if mf.ArtifactType != "" {
				idx.Manifests[i].ArtifactType = mf.ArtifactType
			}
		}
		b, _ := json.Marshal(idx)
		w.Header().Set("Content-Type", string(types.OCIImageIndex))
		_, _ = w.Write(b)
	})
}

// setFail makes the verifier's side fail the requests f says; nil serves
// them all again.
func (tr *testRegistry) setFail(f func(r *http.Request) failure) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.fail = f
}

// takeRequests returns the verifier's requests since the last call.
func (tr *testRegistry) takeRequests() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := tr.requests
	tr.requests = nil
	return out
}

// image is the reference of repo:tag as the verifier names it.
func (tr *testRegistry) image(repo string) string { return tr.host + "/" + repo + ":1.0" }

func (tr *testRegistry) pushRepo(repo string) name.Repository {
	tr.t.Helper()
	r, err := name.NewRepository(tr.pushHost+"/"+repo, name.Insecure)
	if err != nil {
		tr.t.Fatal(err)
	}
	return r
}

// pushImage pushes a random image to repo:1.0 and returns its digest and
// its manifest's bytes (what a bundle's message signature is over).
func (tr *testRegistry) pushImage(repo string) (string, []byte) {
	tr.t.Helper()
	img, err := random.Image(128, 1)
	if err != nil {
		tr.t.Fatal(err)
	}
	if err := remote.Write(tr.pushRepo(repo).Tag("1.0"), img); err != nil {
		tr.t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		tr.t.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		tr.t.Fatal(err)
	}
	return d.String(), raw
}

// pushBlob uploads b to repo and returns its descriptor.
func (tr *testRegistry) pushBlob(repo string, b []byte, mt types.MediaType) v1.Descriptor {
	tr.t.Helper()
	l := static.NewLayer(b, mt)
	if err := remote.WriteLayer(tr.pushRepo(repo), l); err != nil {
		tr.t.Fatal(err)
	}
	d, _ := l.Digest()
	return v1.Descriptor{MediaType: mt, Digest: d, Size: int64(len(b))}
}

// rawManifest is a manifest given as bytes, to push exactly as written.
type rawManifest struct {
	raw []byte
	mt  types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.raw, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }

// putManifest pushes manifest m (marshalled) to repo under ref (a tag or
// its digest) and returns its descriptor.
func (tr *testRegistry) putManifest(repo, ref string, m any) v1.Descriptor {
	tr.t.Helper()
	raw, err := json.Marshal(m)
	if err != nil {
		tr.t.Fatal(err)
	}
	h, size, _ := v1.SHA256(bytes.NewReader(raw))
	var r name.Reference = tr.pushRepo(repo).Digest(h.String())
	if ref != "" {
		r = tr.pushRepo(repo).Tag(ref)
	}
	if err := remote.Put(r, rawManifest{raw: raw, mt: types.OCIManifestSchema1}); err != nil {
		tr.t.Fatal(err)
	}
	return v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: h, Size: size}
}

// ociManifest is an OCI image manifest with the fields cosign writes.
type ociManifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     types.MediaType   `json:"mediaType"`
	ArtifactType  string            `json:"artifactType,omitempty"`
	Config        v1.Descriptor     `json:"config"`
	Layers        []v1.Descriptor   `json:"layers"`
	Subject       *v1.Descriptor    `json:"subject,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// simpleSigning is the payload cosign signs for a digest of repo (the
// "docker-reference" it names).
func simpleSigning(repo, digest string) []byte {
	return fmt.Appendf(nil, `{"critical":{"identity":{"docker-reference":%q},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":null}`, repo, digest)
}

// signASN1 is cosign's signature of a payload with an ECDSA P-256 key:
// ASN.1 over its SHA-256.
func signASN1(t testing.TB, key *ecdsa.PrivateKey, payload []byte) []byte {
	t.Helper()
	sum := sha256.Sum256(payload)
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// sigLayer is one layer of a legacy .sig manifest: a payload and the
// signature annotation as written (base64, or something broken).
type sigLayer struct {
	payload    []byte
	annotation string
}

// signedLayer is what `cosign sign --key` writes for payload.
func signedLayer(t testing.TB, key *ecdsa.PrivateKey, payload []byte) sigLayer {
	return sigLayer{payload: payload, annotation: base64.StdEncoding.EncodeToString(signASN1(t, key, payload))}
}

// pushLegacy writes the legacy signature manifest of digest, tag
// "sha256-<hex>.sig", as cosign lays it out: an OCI manifest whose config
// lists the payloads as its layers' diff IDs, and one layer per signature
// of media type application/vnd.dev.cosign.simplesigning.v1+json, its
// blob the payload and its "dev.cosignproject.cosign/signature"
// annotation the signature. It returns the payload blobs' descriptors.
func (tr *testRegistry) pushLegacy(repo, digest string, layers ...sigLayer) []v1.Descriptor {
	tr.t.Helper()
	descs := make([]v1.Descriptor, 0, len(layers))
	ids := make([]string, 0, len(layers))
	for _, l := range layers {
		d := tr.pushBlob(repo, l.payload, simpleSigningMediaType)
		d.Annotations = map[string]string{legacySigAnnotation: l.annotation}
		descs = append(descs, d)
		ids = append(ids, d.Digest.String())
	}
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "", "os": "", "created": "0001-01-01T00:00:00Z", "config": map[string]any{},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": ids},
		"history": []map[string]any{{"created": "0001-01-01T00:00:00Z"}},
	})
	cfgDesc := tr.pushBlob(repo, cfg, types.OCIConfigJSON)
	tr.putManifest(repo, strings.Replace(digest, ":", "-", 1)+".sig", ociManifest{
		SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Config: cfgDesc, Layers: descs,
	})
	return descs
}

// Media types of a Sigstore bundle referrer.
const (
	bundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"
	emptyMediaType  = "application/vnd.oci.empty.v1+json"
)

// pushBundle attaches bundleJSON to subject as cosign does: an OCI 1.1
// referrer with artifactType application/vnd.dev.sigstore.bundle.v0.3+json,
// the empty config ({}) and one layer holding the bundle.
func (tr *testRegistry) pushBundle(repo string, subject v1.Descriptor, bundleJSON []byte) v1.Descriptor {
	tr.t.Helper()
	cfg := tr.pushBlob(repo, []byte("{}"), emptyMediaType)
	layer := tr.pushBlob(repo, bundleJSON, bundleMediaType)
	return tr.putManifest(repo, "", ociManifest{
		SchemaVersion: 2, MediaType: types.OCIManifestSchema1, ArtifactType: bundleMediaType,
		Config: cfg, Layers: []v1.Descriptor{layer}, Subject: &subject,
		Annotations: map[string]string{"dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
	})
}

// subjectOf is the descriptor of the image digest with manifest raw.
func subjectOf(digest string, raw []byte) v1.Descriptor {
	h, _ := v1.NewHash(digest)
	return v1.Descriptor{MediaType: types.DockerManifestSchema2, Digest: h, Size: int64(len(raw))}
}

// keypair is sign.Keypair around an ECDSA P-256 key of the test's.
type keypair struct{ key *ecdsa.PrivateKey }

var _ sign.Keypair = keypair{}

func (k keypair) GetHashAlgorithm() protocommon.HashAlgorithm {
	return protocommon.HashAlgorithm_SHA2_256
}

func (k keypair) GetSigningAlgorithm() protocommon.PublicKeyDetails {
	return protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256
}

func (k keypair) GetHint() []byte {
	der, _ := x509.MarshalPKIXPublicKey(&k.key.PublicKey)
	sum := sha256.Sum256(der)
	return []byte(base64.StdEncoding.EncodeToString(sum[:]))
}

func (k keypair) GetKeyAlgorithm() string        { return "ECDSA" }
func (k keypair) GetPublicKey() crypto.PublicKey { return &k.key.PublicKey }

func (k keypair) GetPublicKeyPem() (string, error) {
	b, err := cryptoutils.MarshalPublicKeyToPEM(&k.key.PublicKey)
	return string(b), err
}

func (k keypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	sum := sha256.Sum256(data)
	sig, err := ecdsa.SignASN1(rand.Reader, k.key, sum[:])
	return sig, sum[:], err
}

// bundleJSON signs content with key into a Sigstore bundle (no
// certificate, no log entry, no timestamp: `cosign sign --key` with the
// log off) and returns its JSON as a registry holds it.
func bundleJSON(t testing.TB, key *ecdsa.PrivateKey, content sign.Content) []byte {
	t.Helper()
	b, err := sign.Bundle(content, keypair{key}, sign.BundleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// inToto is the in-toto statement about the image digest that cosign v3
// signs in a bundle's DSSE envelope (`cosign sign` with the bundle
// format, its default).
func inToto(digest string) *sign.DSSEData {
	stmt := fmt.Sprintf(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"sha256":%q},"annotations":{}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{}}`,
		strings.TrimPrefix(digest, "sha256:"))
	return &sign.DSSEData{Data: []byte(stmt), PayloadType: "application/vnd.in-toto+json"}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pemOf(t testing.TB, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := cryptoutils.MarshalPublicKeyToPEM(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// keyPolicy compiles a policy trusting keys, given inline.
func keyPolicy(t testing.TB, keys ...*ecdsa.PrivateKey) *Policy {
	t.Helper()
	spec := &imagesv1alpha1.VerifySpec{}
	var m Material
	for _, k := range keys {
		p := pemOf(t, k)
		spec.Keys = append(spec.Keys, imagesv1alpha1.KeySource{PEM: string(p)})
		m.Keys = append(m.Keys, p)
	}
	p, err := Compile(spec, m)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// fixture is a registry, a real resolver reading it and a verifier
// reading through the resolver, on a fake clock.
type fixture struct {
	reg     *testRegistry
	clock   *clocktesting.FakePassiveClock
	metrics *Metrics
	v       *Verifier
}

func newFixture(t testing.TB, referrers bool) *fixture {
	t.Helper()
	reg := newTestRegistry(t, referrers)
	res, err := registry.New(registry.Options{InsecureRegistries: []string{reg.host}, QPS: 1000, Burst: 1000})
	if err != nil {
		t.Fatal(err)
	}
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC))
	m := NewMetrics(nil)
	return &fixture{reg: reg, clock: clk, metrics: m, v: New(res, clk, m)}
}

// verify verifies digest of repo's image under p, fresh as of now.
func (f *fixture) verify(t testing.TB, repo, digest string, p *Policy) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return f.v.Verify(ctx, Request{Image: f.reg.image(repo), Digest: digest, Policy: p, FreshSince: f.clock.Now()})
}

// want checks a result's verdict and reason, and that its message says
// each of says.
func want(t testing.TB, r Result, verified bool, reason imagesv1alpha1.VerificationReason, says ...string) {
	t.Helper()
	if r.Verified != verified || r.Reason != reason {
		t.Fatalf("got verified=%v reason=%s (%q), want verified=%v reason=%s", r.Verified, r.Reason, r.Message, verified, reason)
	}
	for _, s := range says {
		if !strings.Contains(r.Message, s) {
			t.Errorf("message %q does not say %q", r.Message, s)
		}
	}
}
