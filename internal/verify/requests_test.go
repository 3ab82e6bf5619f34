package verify

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sigstore/sigstore-go/pkg/sign"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Issue 18: the registry requests a new digest costs, by how it is signed,
// on a registry with the referrers API and on one without (the referrers
// tag). The figures are the README's "Requests per new digest"; a digest
// verified before costs none (TestCacheVerified).
func TestRequestsPerNewDigest(t *testing.T) {
	for _, api := range []bool{true, false} {
		f := newFixture(t, api)
		key := newKey(t)
		policy := keyPolicy(t, key)
		cases := []struct {
			name   string
			sign   func(repo, digest string, raw []byte)
			wantOK bool
			want   int
		}{
			{"unsigned", func(string, string, []byte) {}, false, map[bool]int{true: 2, false: 3}[api]},
			{"legacy .sig", func(repo, d string, _ []byte) { f.reg.pushLegacy(repo, d, signedLayer(t, key, simpleSigning(repo, d))) }, true, 2},
			{"one bundle", func(repo, d string, raw []byte) {
				f.reg.pushBundle(repo, subjectOf(d, raw), bundleJSON(t, key, inToto(d)))
			}, true, map[bool]int{true: 4, false: 5}[api]},
		}
		for _, c := range cases {
			repo := fmt.Sprintf("requests-%v-%s", api, strings.ReplaceAll(strings.ReplaceAll(c.name, " ", "-"), ".", ""))
			d, raw := f.reg.pushImage(repo)
			c.sign(repo, d, raw)
			f.reg.takeRequests()
			r := f.verify(t, repo, d, policy)
			if r.Verified != c.wantOK {
				t.Fatalf("%s: %+v", c.name, r)
			}
			var gets []string
			for _, req := range f.reg.takeRequests() {
				if !strings.HasSuffix(req, "/v2/") { // the resolver's ping, once per registry
					gets = append(gets, req)
				}
			}
			t.Logf("referrers API %v, %s: %d requests: %s", api, c.name, len(gets), strings.Join(gets, ", "))
			if len(gets) != c.want {
				t.Errorf("referrers API %v, %s: %d requests, want %d: %v", api, c.name, len(gets), c.want, gets)
			}
			for _, req := range gets {
				if !strings.HasPrefix(req, http.MethodGet+" ") {
					t.Errorf("%s: a %s, not a GET of a signature", c.name, req)
				}
				if strings.Contains(req, "/manifests/"+d) || strings.Contains(req, "/manifests/1.0") {
					t.Errorf("%s: the image itself was read: %s", c.name, req)
				}
			}
		}
	}
}

// A signature whose blob is gone or too large does not count, and does
// not stop the others from verifying the digest: whoever can push a
// referrer cannot block verification. A registry failure still fails the
// whole verification, closed (TestRegistryFailure).
func TestUnusableSignatureBlobsDoNotBlock(t *testing.T) {
	f := newFixture(t, false)
	key := newKey(t)
	policy := keyPolicy(t, key)
	d, raw := f.reg.pushImage("blocked")
	// A referrer whose layer says it is 1 GiB, one whose blob is missing,
	// then a good legacy signature.
	cfg := f.reg.pushBlob("blocked", []byte("{}"), emptyMediaType)
	huge := f.reg.pushBlob("blocked", []byte("not really a GiB"), bundleMediaType)
	huge.Size = 1 << 30
	missing := f.reg.pushBlob("blocked", []byte("x"), bundleMediaType)
	missing.Digest.Hex = strings.Repeat("0", 64)
	subject := subjectOf(d, raw)
	for _, layer := range []v1.Descriptor{huge, missing} {
		f.reg.putManifest("blocked", "", ociManifest{
			SchemaVersion: 2, MediaType: "application/vnd.oci.image.manifest.v1+json", ArtifactType: bundleMediaType,
			Config: cfg, Layers: []v1.Descriptor{layer}, Subject: &subject,
		})
	}
	r := f.verify(t, "blocked", d, policy)
	want(t, r, false, imagesv1alpha1.VerificationInvalid, "more than", "bundle referrer")
	f.reg.pushLegacy("blocked", d, signedLayer(t, key, simpleSigning("blocked", d)))
	f.clock.SetTime(f.clock.Now().Add(1))
	want(t, f.verify(t, "blocked", d, policy), true, imagesv1alpha1.VerificationVerified, "legacy .sig")
}

// An attestation is not a signature: a DSSE bundle by a trusted key whose
// statement is SLSA provenance (what attest-build-provenance and cosign
// attest attach, with the same artifactType) does not verify the digest.
func TestAttestationIsNotASignature(t *testing.T) {
	f := newFixture(t, false)
	key := newKey(t)
	policy := keyPolicy(t, key)
	d, raw := f.reg.pushImage("attested")
	stmt := fmt.Sprintf(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"sha256":%q}}],"predicateType":"https://slsa.dev/provenance/v1","predicate":{}}`,
		strings.TrimPrefix(d, "sha256:"))
	f.reg.pushBundle("attested", subjectOf(d, raw), bundleJSON(t, key, &sign.DSSEData{Data: []byte(stmt), PayloadType: "application/vnd.in-toto+json"}))
	want(t, f.verify(t, "attested", d, policy), false, imagesv1alpha1.VerificationInvalid, "an attestation (https://slsa.dev/provenance/v1), not a signature")

	// Signed as well: then it verifies.
	f.reg.pushBundle("attested", subjectOf(d, raw), bundleJSON(t, key, inToto(d)))
	f.clock.SetTime(f.clock.Now().Add(1))
	want(t, f.verify(t, "attested", d, policy), true, imagesv1alpha1.VerificationVerified, "bundle")
}

// A referrer that is listed but gone (deleted, or collected) does not
// count and does not block a good signature.
func TestGoneReferrerDoesNotBlock(t *testing.T) {
	f := newFixture(t, false)
	key := newKey(t)
	policy := keyPolicy(t, key)
	d, raw := f.reg.pushImage("stale")
	a := f.reg.pushBundle("stale", subjectOf(d, raw), bundleJSON(t, key, inToto(d)))
	b := f.reg.pushBundle("stale", subjectOf(d, raw), bundleJSON(t, key, inToto(d)))
	// Whichever of the two is read first is gone.
	var gone string
	f.reg.setFail(func(r *http.Request) failure {
		for _, ref := range []string{a.Digest.String(), b.Digest.String()} {
			if strings.HasSuffix(r.URL.Path, "/manifests/"+ref) && (gone == "" || gone == ref) {
				gone = ref
				return notFound404
			}
		}
		return serve
	})
	want(t, f.verify(t, "stale", d, policy), true, imagesv1alpha1.VerificationVerified, "bundle")
	if gone == "" {
		t.Fatal("no referrer manifest was read")
	}
}
