package verify

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

const (
	ciSubject = "ci@example.com"
	ciIssuer  = "https://token.actions.example.com"
)

// noCTLogs is a virtual Sigstore whose root lists no certificate
// transparency logs. Its Fulcio issues certificates without embedded
// SCTs, which a root listing CT logs refuses (see "certificate without an
// SCT"); a private Sigstore without a CT log is this.
type noCTLogs struct{ *ca.VirtualSigstore }

func (noCTLogs) CTLogs() map[string]*root.TransparencyLog { return nil }

// trustedRootJSON is the trusted_root.json of vs's Fulcio, TSA and Rekor,
// without CT logs: what `cosign trusted-root create` writes for such a
// deployment. (The virtual Sigstore's Rekor log ID is its hex string's
// bytes; a trusted root holds the raw key ID.)
func trustedRootJSON(t testing.TB, vs *ca.VirtualSigstore) []byte {
	t.Helper()
	logs := map[string]*root.TransparencyLog{}
	for id, l := range vs.RekorLogs() {
		c := *l
		var err error
		if c.ID, err = hex.DecodeString(id); err != nil {
			t.Fatal(err)
		}
		logs[id] = &c
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, vs.FulcioCertificateAuthorities(), nil, vs.TimestampingAuthorities(), logs)
	if err != nil {
		t.Fatal(err)
	}
	b, err := tr.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rootPolicy compiles spec with vs's trusted root JSON as its trustedRoot.
func rootPolicy(t testing.TB, vs *ca.VirtualSigstore, spec *imagesv1alpha1.VerifySpec, keys ...[]byte) *Policy {
	t.Helper()
	spec.TrustedRoot = &imagesv1alpha1.ObjectKeyRef{Name: "sigstore", Key: "trusted_root.json"}
	p, err := Compile(spec, Material{Keys: keys, RootJSON: trustedRootJSON(t, vs)})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func keylessSpec(ids ...imagesv1alpha1.KeylessIdentity) *imagesv1alpha1.VerifySpec {
	return &imagesv1alpha1.VerifySpec{Keyless: ids}
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TestKeyless verifies keyless signatures made with sigstore-go's virtual
// Sigstore (a Fulcio certificate for an identity, a Rekor entry with its
// promise, a TSA timestamp) over an image manifest, with checkBundle.
func TestKeyless(t *testing.T) {
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}`)
	digest := sha256Digest(manifest)
	entity, err := vs.Sign(ciSubject, ciIssuer, manifest)
	if err != nil {
		t.Fatal(err)
	}
	id := imagesv1alpha1.KeylessIdentity{Subject: ciSubject, Issuer: ciIssuer}
	compiled := rootPolicy(t, vs, keylessSpec(id))
	if !compiled.requireLog {
		t.Fatal("a trusted root without transparencyLog should require the log")
	}

	t.Run("matching identity, root swapped in", func(t *testing.T) {
		o := compiled.withRoot(noCTLogs{vs}).checkBundle(entity, digest)
		if !o.verified || o.by != "keyless, bundle" {
			t.Fatalf("got %+v, want verified keyless", o)
		}
	})

	t.Run("matching identity, from the trusted root JSON", func(t *testing.T) {
		if o := compiled.checkBundle(entity, digest); !o.verified {
			t.Fatalf("got %+v, want verified", o)
		}
	})

	t.Run("matching identity by regular expressions", func(t *testing.T) {
		p := rootPolicy(t, vs, keylessSpec(imagesv1alpha1.KeylessIdentity{SubjectRegExp: `^.*@example\.com$`, IssuerRegExp: `^https://token\.actions\.`}))
		if o := p.checkBundle(entity, digest); !o.verified {
			t.Fatalf("got %+v, want verified", o)
		}
	})

	t.Run("the second of two identities", func(t *testing.T) {
		p := rootPolicy(t, vs, keylessSpec(imagesv1alpha1.KeylessIdentity{Subject: "release@example.com", Issuer: ciIssuer}, id))
		if o := p.checkBundle(entity, digest); !o.verified {
			t.Fatalf("got %+v, want verified", o)
		}
	})

	t.Run("wrong subject", func(t *testing.T) {
		p := rootPolicy(t, vs, keylessSpec(imagesv1alpha1.KeylessIdentity{Subject: "mallory@example.com", Issuer: ciIssuer}))
		o := p.withRoot(noCTLogs{vs}).checkBundle(entity, digest)
		if o.verified || o.untrust == "" || !strings.Contains(o.untrust, "keyless bundle that does not verify") {
			t.Fatalf("got %+v, want untrusted", o)
		}
	})

	t.Run("wrong issuer", func(t *testing.T) {
		p := rootPolicy(t, vs, keylessSpec(imagesv1alpha1.KeylessIdentity{Subject: ciSubject, Issuer: "https://accounts.example.org"}))
		o := p.withRoot(noCTLogs{vs}).checkBundle(entity, digest)
		if o.verified || o.untrust == "" {
			t.Fatalf("got %+v, want untrusted", o)
		}
	})

	t.Run("certificate of another Sigstore", func(t *testing.T) {
		stranger, err := ca.NewVirtualSigstore()
		if err != nil {
			t.Fatal(err)
		}
		e, err := stranger.Sign(ciSubject, ciIssuer, manifest)
		if err != nil {
			t.Fatal(err)
		}
		if o := compiled.checkBundle(e, digest); o.verified || o.untrust == "" {
			t.Fatalf("got %+v, want untrusted", o)
		}
	})

	t.Run("trusted identity, another artifact", func(t *testing.T) {
		other := sha256Digest([]byte("another manifest"))
		o := compiled.checkBundle(entity, other)
		if o.verified || !strings.Contains(o.invalid, "over another artifact") {
			t.Fatalf("got %+v, want invalid", o)
		}
	})

	t.Run("certificate without an SCT while the root lists CT logs", func(t *testing.T) {
		o := compiled.withRoot(vs).checkBundle(entity, digest)
		if o.verified || !strings.Contains(o.untrust, "certificate timestamp") {
			t.Fatalf("got %+v, want untrusted for the missing SCT", o)
		}
	})

	t.Run("keyless signature, only keys trusted", func(t *testing.T) {
		o := keyPolicy(t, newKey(t)).checkBundle(entity, digest)
		if o.verified || o.untrust != "a keyless bundle, and no keyless identities are trusted" {
			t.Fatalf("got %+v", o)
		}
	})
}

// entityBundle is the Sigstore bundle (v0.3, JSON) of a virtual
// Sigstore's DSSE attestation: its certificate, Rekor entry (with
// inclusion proof) and timestamp, as `cosign sign` writes one keyless.
func entityBundle(t testing.TB, e *ca.TestEntity) []byte {
	t.Helper()
	vc, err := e.VerificationContent()
	if err != nil {
		t.Fatal(err)
	}
	sc, err := e.SignatureContent()
	if err != nil {
		t.Fatal(err)
	}
	env := sc.EnvelopeContent().RawEnvelope()
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := base64.StdEncoding.DecodeString(env.Signatures[0].Sig)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := e.TlogEntries()
	if err != nil {
		t.Fatal(err)
	}
	tles := make([]*protorekor.TransparencyLogEntry, 0, len(entries))
	for _, en := range entries {
		// The virtual Rekor's entry leaves out the kind and version a
		// bundle carries; they are in its body.
		tle := proto.Clone(en.TransparencyLogEntry()).(*protorekor.TransparencyLogEntry)
		var body struct {
			Kind       string `json:"kind"`
			APIVersion string `json:"apiVersion"`
		}
		if err := json.Unmarshal(tle.CanonicalizedBody, &body); err != nil {
			t.Fatal(err)
		}
		tle.KindVersion = &protorekor.KindVersion{Kind: body.Kind, Version: body.APIVersion}
		tles = append(tles, tle)
	}
	stamps, err := e.Timestamps()
	if err != nil {
		t.Fatal(err)
	}
	tsd := &protobundle.TimestampVerificationData{}
	for _, s := range stamps {
		tsd.Rfc3161Timestamps = append(tsd.Rfc3161Timestamps, &protocommon.RFC3161SignedTimestamp{SignedTimestamp: s})
	}
	b := &protobundle.Bundle{
		MediaType: bundleMediaType,
		VerificationMaterial: &protobundle.VerificationMaterial{
			Content:                   &protobundle.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: vc.Certificate().Raw}},
			TlogEntries:               tles,
			TimestampVerificationData: tsd,
		},
		Content: &protobundle.Bundle_DsseEnvelope{DsseEnvelope: &protodsse.Envelope{
			Payload: payload, PayloadType: env.PayloadType, Signatures: []*protodsse.Signature{{Sig: sig}},
		}},
	}
	raw, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestKeylessThroughRegistry attaches a keyless bundle to an image in the
// registry and verifies it with a policy compiled from a trusted root
// JSON, through the verifier and the resolver.
func TestKeylessThroughRegistry(t *testing.T) {
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, false)
	id := imagesv1alpha1.KeylessIdentity{Subject: ciSubject, Issuer: ciIssuer}
	d, raw := f.reg.pushImage("keyless")
	// Logged a minute from now: within the certificate's ten minutes,
	// whatever second the certificate was issued in.
	e, err := vs.AttestAtTime(ciSubject, ciIssuer, inToto(d).Data, time.Now().Add(time.Minute), true)
	if err != nil {
		t.Fatal(err)
	}
	f.reg.pushBundle("keyless", subjectOf(d, raw), entityBundle(t, e))

	want(t, f.verify(t, "keyless", d, rootPolicy(t, vs, keylessSpec(id))), true, imagesv1alpha1.VerificationVerified, "keyless, bundle")
	ignore := keylessSpec(id)
	ignore.TransparencyLog = imagesv1alpha1.TransparencyLogIgnore
	want(t, f.verify(t, "keyless", d, rootPolicy(t, vs, ignore)), true, imagesv1alpha1.VerificationVerified, "keyless, bundle")
	want(t, f.verify(t, "keyless", d, rootPolicy(t, vs, keylessSpec(imagesv1alpha1.KeylessIdentity{Subject: "mallory@example.com", Issuer: ciIssuer}))),
		false, imagesv1alpha1.VerificationUntrusted, "keyless bundle that does not verify")
	want(t, f.verify(t, "keyless", d, keyPolicy(t, newKey(t))), false, imagesv1alpha1.VerificationUntrusted, "no keyless identities are trusted")
}

// TestTransparencyLogRequired: with a trusted root, transparencyLog
// defaults to Require, and a key's signature without a Rekor entry does
// not verify: neither a bundle without one nor a legacy .sig (whose log
// entry is not checked). With Ignore, both verify.
func TestTransparencyLogRequired(t *testing.T) {
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, false)
	key := newKey(t)
	keySpec := func(log imagesv1alpha1.TransparencyLogPolicy) *imagesv1alpha1.VerifySpec {
		return &imagesv1alpha1.VerifySpec{Keys: []imagesv1alpha1.KeySource{{PEM: string(pemOf(t, key))}}, TransparencyLog: log}
	}
	require := rootPolicy(t, vs, keySpec(""), pemOf(t, key))
	ignore := rootPolicy(t, vs, keySpec(imagesv1alpha1.TransparencyLogIgnore), pemOf(t, key))
	if require.ID == ignore.ID {
		t.Error("Require and Ignore policies share an ID")
	}

	d, raw := f.reg.pushImage("unlogged-bundle")
	f.reg.pushBundle("unlogged-bundle", subjectOf(d, raw), bundleJSON(t, key, &sign.PlainData{Data: raw}))
	want(t, f.verify(t, "unlogged-bundle", d, require), false, imagesv1alpha1.VerificationUntrusted, "transparencyLog is Require")
	want(t, f.verify(t, "unlogged-bundle", d, ignore), true, imagesv1alpha1.VerificationVerified)

	d, _ = f.reg.pushImage("legacy")
	f.reg.pushLegacy("legacy", d, signedLayer(t, key, simpleSigning(f.reg.host+"/legacy", d)))
	want(t, f.verify(t, "legacy", d, require), false, imagesv1alpha1.VerificationUntrusted, "legacy signatures are not checked against the log")
	want(t, f.verify(t, "legacy", d, ignore), true, imagesv1alpha1.VerificationVerified)
}
