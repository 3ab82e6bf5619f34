package verify

import (
	"slices"
	"strings"
	"testing"

	"github.com/sigstore/sigstore-go/pkg/sign"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// TestBundleReferrers verifies Sigstore bundles made by sigstore-go's
// signer with the test's key and attached to the image as OCI 1.1
// referrers. The in-process registry here has no referrers API, so the
// verifier finds them in the fallback tag "sha256-<hex>" that
// go-containerregistry's writer keeps, as cosign's does.
func TestBundleReferrers(t *testing.T) {
	f := newFixture(t, false)
	trusted, other := newKey(t), newKey(t)
	policy := keyPolicy(t, trusted)

	t.Run("message signature over the manifest, trusted key", func(t *testing.T) {
		d, raw := f.reg.pushImage("plain")
		f.reg.pushBundle("plain", subjectOf(d, raw), bundleJSON(t, trusted, &sign.PlainData{Data: raw}))
		want(t, f.verify(t, "plain", d, policy), true, imagesv1alpha1.VerificationVerified, "keys[0] (sha256:", "bundle")
	})

	t.Run("DSSE in-toto statement about the digest, trusted key", func(t *testing.T) {
		d, raw := f.reg.pushImage("dsse")
		f.reg.pushBundle("dsse", subjectOf(d, raw), bundleJSON(t, trusted, inToto(d)))
		want(t, f.verify(t, "dsse", d, policy), true, imagesv1alpha1.VerificationVerified, "bundle")
	})

	t.Run("signed by another key", func(t *testing.T) {
		d, raw := f.reg.pushImage("wrong-key")
		f.reg.pushBundle("wrong-key", subjectOf(d, raw), bundleJSON(t, other, &sign.PlainData{Data: raw}))
		want(t, f.verify(t, "wrong-key", d, policy), false, imagesv1alpha1.VerificationUntrusted, "none of the trusted keys verifies")
	})

	t.Run("trusted bundle of another digest attached to this one", func(t *testing.T) {
		d, raw := f.reg.pushImage("replayed")
		_, raw2 := f.reg.pushImage("replayed-source")
		f.reg.pushBundle("replayed", subjectOf(d, raw), bundleJSON(t, trusted, &sign.PlainData{Data: raw2}))
		// Signed by the trusted key, but not this digest: Invalid, as a
		// legacy payload naming another digest is.
		want(t, f.verify(t, "replayed", d, policy), false, imagesv1alpha1.VerificationInvalid, "signed by keys[0]", "over another artifact, not this digest")
	})

	t.Run("trusted DSSE statement about another digest", func(t *testing.T) {
		d, raw := f.reg.pushImage("dsse-replayed")
		d2, _ := f.reg.pushImage("dsse-replayed-source")
		f.reg.pushBundle("dsse-replayed", subjectOf(d, raw), bundleJSON(t, trusted, inToto(d2)))
		want(t, f.verify(t, "dsse-replayed", d, policy), false, imagesv1alpha1.VerificationInvalid, "over another artifact, not this digest")
	})

	t.Run("another key's bundle of another digest is Untrusted", func(t *testing.T) {
		d, raw := f.reg.pushImage("stranger")
		_, raw2 := f.reg.pushImage("stranger-source")
		f.reg.pushBundle("stranger", subjectOf(d, raw), bundleJSON(t, other, &sign.PlainData{Data: raw2}))
		want(t, f.verify(t, "stranger", d, policy), false, imagesv1alpha1.VerificationUntrusted)
	})

	t.Run("a bundle that does not parse", func(t *testing.T) {
		d, raw := f.reg.pushImage("garbage")
		f.reg.pushBundle("garbage", subjectOf(d, raw), []byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`))
		want(t, f.verify(t, "garbage", d, policy), false, imagesv1alpha1.VerificationInvalid, "does not parse")
	})

	t.Run("a wrong bundle and a good one", func(t *testing.T) {
		d, raw := f.reg.pushImage("mixed")
		f.reg.pushBundle("mixed", subjectOf(d, raw), bundleJSON(t, other, &sign.PlainData{Data: raw}))
		f.reg.pushBundle("mixed", subjectOf(d, raw), bundleJSON(t, trusted, inToto(d)))
		want(t, f.verify(t, "mixed", d, policy), true, imagesv1alpha1.VerificationVerified)
	})

	t.Run("legacy and bundle together", func(t *testing.T) {
		d, raw := f.reg.pushImage("both")
		f.reg.pushLegacy("both", d, signedLayer(t, other, simpleSigning(f.reg.host+"/both", d)))
		f.reg.pushBundle("both", subjectOf(d, raw), bundleJSON(t, trusted, &sign.PlainData{Data: raw}))
		want(t, f.verify(t, "both", d, policy), true, imagesv1alpha1.VerificationVerified, "bundle")
	})
}

// TestBundleReferrersAPI attaches the bundle to a registry that serves
// the OCI 1.1 referrers API, so the verifier reads the list from
// GET /v2/<repo>/referrers/<digest> and no fallback tag exists.
func TestBundleReferrersAPI(t *testing.T) {
	f := newFixture(t, true)
	key := newKey(t)
	d, raw := f.reg.pushImage("api")
	f.reg.pushBundle("api", subjectOf(d, raw), bundleJSON(t, key, &sign.PlainData{Data: raw}))
	f.reg.takeRequests()
	r := f.verify(t, "api", d, keyPolicy(t, key))
	want(t, r, true, imagesv1alpha1.VerificationVerified, "bundle")
	reqs := f.reg.takeRequests()
	if !slices.Contains(reqs, "GET /v2/api/referrers/"+d) {
		t.Errorf("the referrers API was not asked: %q", reqs)
	}
	if fallback := "GET /v2/api/manifests/" + strings.Replace(d, ":", "-", 1); slices.Contains(reqs, fallback) {
		t.Errorf("the fallback tag was read although the registry has the referrers API: %q", reqs)
	}
}
