package verify

import (
	"encoding/base64"
	"strings"
	"testing"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// TestLegacySignatures verifies signatures in cosign's legacy layout, the
// "sha256-<hex>.sig" tag, read through the resolver from the in-process
// registry.
func TestLegacySignatures(t *testing.T) {
	f := newFixture(t, false)
	trusted, other := newKey(t), newKey(t)
	policy := keyPolicy(t, trusted)
	ref := func(repo string) string { return f.reg.host + "/" + repo }

	t.Run("signed by the trusted key", func(t *testing.T) {
		d, _ := f.reg.pushImage("signed")
		f.reg.pushLegacy("signed", d, signedLayer(t, trusted, simpleSigning(ref("signed"), d)))
		r := f.verify(t, "signed", d, policy)
		want(t, r, true, imagesv1alpha1.VerificationVerified, "keys[0] (sha256:", "legacy .sig")
		if !r.CheckedAt.Equal(f.clock.Now()) {
			t.Errorf("CheckedAt %v, want the clock's %v", r.CheckedAt, f.clock.Now())
		}
		if s := r.Status(); !s.Verified || s.Reason != imagesv1alpha1.VerificationVerified || s.Message != r.Message {
			t.Errorf("Status() = %+v", s)
		}
	})

	t.Run("signed by another key", func(t *testing.T) {
		d, _ := f.reg.pushImage("other-key")
		f.reg.pushLegacy("other-key", d, signedLayer(t, other, simpleSigning(ref("other-key"), d)))
		want(t, f.verify(t, "other-key", d, policy), false, imagesv1alpha1.VerificationUntrusted, "none of the trusted keys verifies")
	})

	t.Run("signature bytes flipped", func(t *testing.T) {
		d, _ := f.reg.pushImage("flipped")
		payload := simpleSigning(ref("flipped"), d)
		sig := signASN1(t, trusted, payload)
		sig[len(sig)-3] ^= 0xff // inside the ASN.1 integer s
		f.reg.pushLegacy("flipped", d, sigLayer{payload: payload, annotation: base64.StdEncoding.EncodeToString(sig)})
		// Without the signer's key, an altered signature cannot be told
		// from one by another key: both are Untrusted.
		want(t, f.verify(t, "flipped", d, policy), false, imagesv1alpha1.VerificationUntrusted, "another key, or altered")
	})

	t.Run("payload altered to name another digest", func(t *testing.T) {
		d, _ := f.reg.pushImage("altered")
		d2, _ := f.reg.pushImage("altered-other")
		l := signedLayer(t, trusted, simpleSigning(ref("altered"), d))
		l.payload = simpleSigning(ref("altered"), d2) // the signature is over the original
		f.reg.pushLegacy("altered", d, l)
		want(t, f.verify(t, "altered", d, policy), false, imagesv1alpha1.VerificationInvalid, "signs "+d2+", not this digest")
	})

	t.Run("trusted signature of another digest copied to this one", func(t *testing.T) {
		d, _ := f.reg.pushImage("replayed")
		d2, _ := f.reg.pushImage("replayed-source")
		f.reg.pushLegacy("replayed", d, signedLayer(t, trusted, simpleSigning(ref("replayed"), d2)))
		want(t, f.verify(t, "replayed", d, policy), false, imagesv1alpha1.VerificationInvalid, "signs "+d2)
	})

	t.Run("not cosign's payload type", func(t *testing.T) {
		d, _ := f.reg.pushImage("wrong-type")
		payload := []byte(`{"critical":{"identity":{"docker-reference":"x"},"image":{"docker-manifest-digest":"` + d + `"},"type":"something else"},"optional":null}`)
		f.reg.pushLegacy("wrong-type", d, signedLayer(t, trusted, payload))
		want(t, f.verify(t, "wrong-type", d, policy), false, imagesv1alpha1.VerificationInvalid, `of type "something else"`)
	})

	t.Run("signature annotation not base64", func(t *testing.T) {
		d, _ := f.reg.pushImage("bad-annotation")
		f.reg.pushLegacy("bad-annotation", d, sigLayer{payload: simpleSigning(ref("bad-annotation"), d), annotation: "not base64!"})
		want(t, f.verify(t, "bad-annotation", d, policy), false, imagesv1alpha1.VerificationInvalid, "no valid dev.cosignproject.cosign/signature annotation")
	})

	t.Run("no signature", func(t *testing.T) {
		d, _ := f.reg.pushImage("unsigned")
		want(t, f.verify(t, "unsigned", d, policy), false, imagesv1alpha1.VerificationUnsigned, "no signature")
	})

	t.Run("the signature of another image in the repository does not count", func(t *testing.T) {
		d, _ := f.reg.pushImage("neighbour")
		d2, _ := f.reg.pushImage("neighbour") // retags 1.0; d stays by digest
		f.reg.pushLegacy("neighbour", d2, signedLayer(t, trusted, simpleSigning(ref("neighbour"), d2)))
		want(t, f.verify(t, "neighbour", d, policy), false, imagesv1alpha1.VerificationUnsigned)
		want(t, f.verify(t, "neighbour", d2, policy), true, imagesv1alpha1.VerificationVerified)
	})

	t.Run("two keys, the second signed", func(t *testing.T) {
		d, _ := f.reg.pushImage("second-key")
		f.reg.pushLegacy("second-key", d, signedLayer(t, trusted, simpleSigning(ref("second-key"), d)))
		want(t, f.verify(t, "second-key", d, keyPolicy(t, other, trusted)), true, imagesv1alpha1.VerificationVerified, "keys[1] (sha256:")
	})

	t.Run("two signatures, one by a trusted key", func(t *testing.T) {
		d, _ := f.reg.pushImage("two-sigs")
		payload := simpleSigning(ref("two-sigs"), d)
		f.reg.pushLegacy("two-sigs", d, signedLayer(t, other, payload), signedLayer(t, trusted, payload))
		want(t, f.verify(t, "two-sigs", d, policy), true, imagesv1alpha1.VerificationVerified, "keys[0]")
	})
}

// TestLegacyKeyAsPEM gives the trusted key as cosign.pub is written (a
// PEM "PUBLIC KEY" block), inline in spec.verify.keys, with the
// surrounding whitespace a YAML block scalar leaves.
func TestLegacyKeyAsPEM(t *testing.T) {
	f := newFixture(t, false)
	key := newKey(t)
	pem := "\n" + string(pemOf(t, key)) + "\n"
	p, err := Compile(&imagesv1alpha1.VerifySpec{Keys: []imagesv1alpha1.KeySource{{PEM: pem}}}, Material{Keys: [][]byte{[]byte(pem)}})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Describe(); !strings.HasPrefix(got, "keys[0] (sha256:") {
		t.Errorf("Describe() = %q", got)
	}
	d, _ := f.reg.pushImage("pem")
	f.reg.pushLegacy("pem", d, signedLayer(t, key, simpleSigning(f.reg.host+"/pem", d)))
	want(t, f.verify(t, "pem", d, p), true, imagesv1alpha1.VerificationVerified)
}
