package verify

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"

	"github.com/imagepin/imagepin/internal/registry"
)

// What is read of a registry, bounded: input from outside.
const (
	// maxSignatures is how many legacy signature layers and how many
	// bundle referrers are looked at per digest.
	maxSignatures = 16
	// maxBlob bounds a signature payload or a bundle.
	maxBlob = 256 << 10
)

// Media types and annotations of cosign's formats.
const (
	simpleSigningMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	legacySigAnnotation    = "dev.cosignproject.cosign/signature"
	legacyCertAnnotation   = "dev.sigstore.cosign/certificate"
	bundleArtifactPrefix   = "application/vnd.dev.sigstore.bundle"
	cosignSignatureType    = "cosign container image signature"
	// A bundle is a signature of the image when its DSSE statement's
	// predicate is cosign's signing predicate; any other predicate
	// (SLSA provenance, an SBOM, a scan) is an attestation about the
	// image, which cosign verify does not take as a signature either.
	bundlePredicateAnnotation = "dev.sigstore.bundle.predicateType"
	cosignSignPredicate       = "https://sigstore.dev/cosign/sign/v1"
	inTotoPayloadType         = "application/vnd.in-toto+json"
)

// legacySig is one layer of a "sha256-<hex>.sig" manifest: a payload and
// the signature over it.
type legacySig struct {
	payload   []byte
	signature []byte
	keyless   bool // carries a Fulcio certificate
}

// found is what the signatures read for a digest said, each judged once,
// as it was read.
type found struct {
	outcomes []outcome
	// malformed says what could not be read as a signature (a bad
	// annotation, a bundle that does not parse): evidence of tampering,
	// reported when nothing verifies.
	malformed []string
}

func (f *found) none() bool { return len(f.outcomes) == 0 && len(f.malformed) == 0 }

// verified says whether a signature read so far verified: reading stops.
func (f *found) verified() bool {
	return len(f.outcomes) > 0 && f.outcomes[len(f.outcomes)-1].verified
}

// read fetches the signatures of digest in repo and judges each under pol:
// the legacy tag (a GET of its manifest, 404 when there is none, then a
// GET of each payload) and the referrers (one GET of the referrers list,
// then the manifest and the blob of each bundle), until one verifies: the
// rest are not read. A registry failure is returned: verification then
// fails closed.
func read(ctx context.Context, repo name.Repository, p *remote.Puller, digest string, pol *Policy) (*found, error) {
	f := &found{}
	if err := readLegacy(ctx, repo, p, digest, f, pol); err != nil {
		return nil, fmt.Errorf("read %s: %w", legacyTag(repo, digest), err)
	}
	if f.verified() {
		return f, nil
	}
	if err := readBundles(ctx, repo, p, digest, f, pol); err != nil {
		return nil, fmt.Errorf("read the referrers of %s: %w", repo.Digest(digest), err)
	}
	return f, nil
}

// legacyTag is where cosign stores a digest's signatures by default.
func legacyTag(repo name.Repository, digest string) name.Tag {
	return repo.Tag(strings.Replace(digest, ":", "-", 1) + ".sig")
}

func notFound(err error) bool {
	var terr *transport.Error
	return errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound
}

func readLegacy(ctx context.Context, repo name.Repository, p *remote.Puller, digest string, f *found, pol *Policy) error {
	desc, err := p.Get(ctx, legacyTag(repo, digest))
	if notFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	m, ok := parseManifest(desc.Manifest)
	if !ok {
		f.malformed = append(f.malformed, "the .sig manifest does not parse")
		return nil
	}
	for i, l := range m.Layers {
		if i == maxSignatures {
			f.malformed = append(f.malformed, fmt.Sprintf("more than %d signature layers; the rest not read", maxSignatures))
			break
		}
		if l.MediaType != simpleSigningMediaType {
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(l.Annotations[legacySigAnnotation])
		if err != nil || len(sig) == 0 {
			f.malformed = append(f.malformed, fmt.Sprintf(".sig layer %d has no valid %s annotation", i, legacySigAnnotation))
			continue
		}
		payload, err := readBlob(ctx, repo, p, l)
		if unusable(err) {
			f.malformed = append(f.malformed, fmt.Sprintf(".sig layer %d: %s", i, oneLine(err.Error())))
			continue
		}
		if err != nil {
			return err
		}
		f.outcomes = append(f.outcomes, pol.checkLegacy(legacySig{payload: payload, signature: sig, keyless: l.Annotations[legacyCertAnnotation] != ""}, digest))
		if f.verified() {
			return nil
		}
	}
	return nil
}

func readBundles(ctx context.Context, repo name.Repository, p *remote.Puller, digest string, f *found, pol *Policy) error {
	idx, err := remote.Referrers(repo.Digest(digest), remote.Reuse(p), remote.WithContext(ctx))
	if err != nil {
		return err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	// Signatures before other attestations, where the list says which
	// (the referrers API gives the manifests' annotations; the referrers
	// tag does not): junk referrers cannot push a signature out of reach.
	manifests := slices.Clone(im.Manifests)
	sort.SliceStable(manifests, func(i, j int) bool {
		return manifests[i].Annotations[bundlePredicateAnnotation] == cosignSignPredicate && manifests[j].Annotations[bundlePredicateAnnotation] != cosignSignPredicate
	})
	n := 0
	for _, d := range manifests {
		if !strings.HasPrefix(d.ArtifactType, bundleArtifactPrefix) {
			continue
		}
		if pa, ok := d.Annotations[bundlePredicateAnnotation]; ok && pa != cosignSignPredicate {
			continue // an attestation (provenance, SBOM …), not a signature
		}
		if n == maxSignatures {
			f.malformed = append(f.malformed, fmt.Sprintf("more than %d bundle referrers; the rest not read", maxSignatures))
			break
		}
		n++
		desc, err := p.Get(ctx, repo.Digest(d.Digest.String()))
		if unusable(err) {
			// Listed but gone (deleted, or collected), or not a manifest:
			// that one signature does not count.
			f.malformed = append(f.malformed, fmt.Sprintf("bundle referrer %s: %s", d.Digest, oneLine(err.Error())))
			continue
		}
		if err != nil {
			return err
		}
		m, ok := parseManifest(desc.Manifest)
		if !ok || len(m.Layers) == 0 {
			f.malformed = append(f.malformed, fmt.Sprintf("bundle referrer %s has no layer", d.Digest))
			continue
		}
		raw, err := readBlob(ctx, repo, p, m.Layers[0])
		if unusable(err) {
			f.malformed = append(f.malformed, fmt.Sprintf("bundle referrer %s: %s", d.Digest, oneLine(err.Error())))
			continue
		}
		if err != nil {
			return err
		}
		b := &bundle.Bundle{}
		if err := b.UnmarshalJSON(raw); err != nil {
			f.malformed = append(f.malformed, fmt.Sprintf("bundle referrer %s does not parse: %s", d.Digest, oneLine(err.Error())))
			continue
		}
		f.outcomes = append(f.outcomes, pol.checkBundle(b, digest))
		if f.verified() {
			return nil
		}
	}
	return nil
}

// parseManifest reads a signature's manifest; one that does not parse is a
// bad signature, not a registry failure.
func parseManifest(raw []byte) (*v1.Manifest, bool) {
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	return m, err == nil
}

// errBadBlob: a signature blob too large to be one.
var errBadBlob = errors.New("not a signature")

// unusable says whether a blob's error is of that one signature (too
// large, or gone): it does not count, and the others are still read, so
// that nobody who can push a referrer can block verification. Any other
// error (the registry failing) fails the whole verification, closed.
func unusable(err error) bool {
	var tooLarge *registry.TooLargeError
	var mismatch *registry.DigestMismatchError
	return err != nil && (errors.Is(err, errBadBlob) || notFound(err) || errors.As(err, &tooLarge) || errors.As(err, &mismatch))
}

// readBlob GETs a blob, at most maxBlob bytes; the registry's bytes are
// checked against the digest as they are read.
func readBlob(ctx context.Context, repo name.Repository, p *remote.Puller, d v1.Descriptor) ([]byte, error) {
	if d.Size > maxBlob {
		return nil, fmt.Errorf("blob %s is %d bytes, more than the %d a signature may have: %w", d.Digest, d.Size, maxBlob, errBadBlob)
	}
	l, err := p.Layer(ctx, repo.Digest(d.Digest.String()))
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	defer func() { _ = rc.Close() }()
	b, err := io.ReadAll(io.LimitReader(rc, maxBlob+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxBlob {
		return nil, fmt.Errorf("blob %s is larger than the %d bytes a signature may have: %w", d.Digest, maxBlob, errBadBlob)
	}
	return b, nil
}

// outcome is one signature's verdict.
type outcome struct {
	verified bool
	by       string // who signed, when verified
	invalid  string // why it does not count for this digest at all
	untrust  string // why no trusted key or identity verifies it
}

// checkLegacy verifies a legacy signature: the signature over the payload
// by one of the keys, and a payload that names this digest.
func (p *Policy) checkLegacy(s legacySig, digest string) outcome {
	var payload struct {
		Critical struct {
			Image struct {
				Digest string `json:"docker-manifest-digest"`
			} `json:"image"`
			Type string `json:"type"`
		} `json:"critical"`
	}
	if err := json.Unmarshal(s.payload, &payload); err != nil {
		return outcome{invalid: "a .sig payload is not a cosign signature payload"}
	}
	if payload.Critical.Type != cosignSignatureType {
		return outcome{invalid: fmt.Sprintf("a .sig payload is of type %q, not %q", payload.Critical.Type, cosignSignatureType)}
	}
	if payload.Critical.Image.Digest != digest {
		return outcome{invalid: fmt.Sprintf("a .sig payload signs %s, not this digest", payload.Critical.Image.Digest)}
	}
	for _, k := range p.keys {
		if err := k.verifier.VerifySignature(bytes.NewReader(s.signature), bytes.NewReader(s.payload)); err == nil {
			if p.requireLog {
				return outcome{untrust: fmt.Sprintf("a legacy .sig signature by %s, but transparencyLog is Require and legacy signatures are not checked against the log: sign with the bundle format", k.name)}
			}
			return outcome{verified: true, by: k.name + ", legacy .sig"}
		}
	}
	if s.keyless {
		return outcome{untrust: "a legacy keyless .sig signature: keyless signatures are verified in the bundle format only"}
	}
	if len(p.keys) == 0 {
		return outcome{untrust: "a legacy .sig signature, and no keys are trusted"}
	}
	return outcome{untrust: "a legacy .sig signature that none of the trusted keys verifies (another key, or altered)"}
}

// checkBundle verifies a Sigstore bundle with sigstore-go: by a trusted
// key, or by a certificate of a trusted identity chaining to the trusted
// root; in both cases over this digest, and logged in Rekor when the
// policy requires it.
func (p *Policy) checkBundle(b sgverify.SignedEntity, digest string) outcome {
	raw, err := hex.DecodeString(strings.TrimPrefix(digest, "sha256:"))
	if err != nil {
		return outcome{invalid: "not a sha256 digest"}
	}
	artifact := sgverify.WithArtifactDigest("sha256", raw)
	vc, err := b.VerificationContent()
	if err != nil {
		return outcome{invalid: fmt.Sprintf("a bundle without verification material: %v", err)}
	}
	if why := notASignature(b); why != "" {
		return outcome{invalid: why}
	}
	if vc.Certificate() == nil {
		if len(p.keys) == 0 {
			return outcome{untrust: "a bundle signed by a key, and no keys are trusted"}
		}
		hint := ""
		if pk := vc.PublicKey(); pk != nil {
			hint = pk.Hint()
		}
		var first string
		var logged outcome
		// Every key is tried (the hint is only a hint), the one it names
		// first.
		for _, k := range p.keysFor(hint) {
			tm := p.keyMaterial(k)
			err := p.verifyWith(b, tm, false, artifact, sgverify.WithKey())
			if err == nil {
				return outcome{verified: true, by: k.name + ", bundle"}
			}
			if errors.Is(err, errLogMissing) && k.hint == hint && logged.untrust == "" {
				logged = outcome{untrust: fmt.Sprintf("a bundle signed by %s, but %v", k.name, err)}
			}
			if p.signsOther(b, tm, false, sgverify.WithKey()) {
				return outcome{invalid: fmt.Sprintf("a bundle signed by %s over another artifact, not this digest", k.name)}
			}
			if first == "" {
				first = err.Error()
			}
		}
		if logged.untrust != "" {
			return logged
		}
		return outcome{untrust: "a bundle that none of the trusted keys verifies (another key, or altered): " + oneLine(first)}
	}
	if len(p.identities) == 0 {
		return outcome{untrust: "a keyless bundle, and no keyless identities are trusted"}
	}
	opts := make([]sgverify.PolicyOption, 0, len(p.identities))
	for _, id := range p.identities {
		opts = append(opts, sgverify.WithCertificateIdentity(id))
	}
	err = p.verifyWith(b, p.root, true, artifact, opts...)
	if err == nil {
		return outcome{verified: true, by: "keyless, bundle"}
	}
	if p.signsOther(b, p.root, true, opts...) {
		return outcome{invalid: "a keyless bundle of a trusted identity over another artifact, not this digest"}
	}
	return outcome{untrust: "a keyless bundle that does not verify: " + oneLine(err.Error())}
}

// signsOther reports whether b, which does not verify for this digest,
// verifies for what it says it signs (its message digest, or its DSSE
// envelope without the statement's subjects): a trusted signature of
// another artifact. It only tells Invalid from Untrusted.
func (p *Policy) signsOther(b sgverify.SignedEntity, tm root.TrustedMaterial, keyless bool, opts ...sgverify.PolicyOption) bool {
	sc, err := b.SignatureContent()
	if err != nil {
		return false
	}
	artifact := sgverify.WithoutArtifactUnsafe()
	if m := sc.MessageSignatureContent(); m != nil {
		artifact = sgverify.WithArtifactDigest("sha256", m.Digest())
	}
	return p.verifyWith(b, tm, keyless, artifact, opts...) == nil
}

var errLogMissing = errors.New("transparencyLog is Require and it has no Rekor entry the trusted root verifies")

// notASignature says why a bundle is not a signature of an image, or "":
// a DSSE envelope must carry an in-toto statement with cosign's signing
// predicate. A message signature is one (its digest is checked by the
// verification).
func notASignature(b sgverify.SignedEntity) string {
	sc, err := b.SignatureContent()
	if err != nil {
		return "a bundle without a signature: " + oneLine(err.Error())
	}
	env := sc.EnvelopeContent()
	if env == nil {
		return ""
	}
	if raw := env.RawEnvelope(); raw == nil || raw.PayloadType != inTotoPayloadType {
		return "a DSSE bundle whose payload is not an in-toto statement"
	}
	st, err := env.Statement()
	if err != nil {
		return "a DSSE bundle whose statement does not parse: " + oneLine(err.Error())
	}
	if st.GetPredicateType() != cosignSignPredicate {
		return fmt.Sprintf("an attestation (%s), not a signature", Truncate(st.GetPredicateType(), 120))
	}
	return ""
}

// keysFor lists the trusted keys, the one hint names first.
func (p *Policy) keysFor(hint string) []trustedKey {
	out := make([]trustedKey, 0, len(p.keys))
	for _, k := range p.keys {
		if hint != "" && k.hint == hint {
			out = append([]trustedKey{k}, out...)
		} else {
			out = append(out, k)
		}
	}
	return out
}

// keyMaterial trusts k whatever key hint a bundle gives, and with a root
// its logs and timestamp authorities.
func (p *Policy) keyMaterial(k trustedKey) root.TrustedMaterial {
	km := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) {
		return root.NewExpiringKey(k.verifier, time.Time{}, time.Time{}), nil
	})
	if p.root != nil {
		return root.TrustedMaterialCollection{p.root, km}
	}
	return km
}

// verifyWith runs sigstore-go's verifier.
func (p *Policy) verifyWith(b sgverify.SignedEntity, tm root.TrustedMaterial, keyless bool, artifact sgverify.ArtifactPolicyOption, opts ...sgverify.PolicyOption) error {
	var vopts []sgverify.VerifierOption
	switch {
	case p.requireLog:
		vopts = append(vopts, sgverify.WithTransparencyLog(1), sgverify.WithObserverTimestamps(1))
	case keyless:
		// A certificate is checked at the time a log or a timestamp
		// authority observed the signature.
		vopts = append(vopts, sgverify.WithObserverTimestamps(1))
	default:
		vopts = append(vopts, sgverify.WithNoObserverTimestamps())
	}
	if keyless && p.root != nil && len(p.root.CTLogs()) > 0 {
		vopts = append(vopts, sgverify.WithSignedCertificateTimestamps(1))
	}
	v, err := sgverify.NewVerifier(tm, vopts...)
	if err != nil {
		return err
	}
	_, err = v.Verify(b, sgverify.NewPolicy(artifact, opts...))
	if err != nil && p.requireLog && isLogError(err) {
		return fmt.Errorf("%w: %v", errLogMissing, oneLine(err.Error()))
	}
	return err
}

func isLogError(err error) bool {
	s := err.Error()
	return strings.Contains(s, "transparency log") || strings.Contains(s, "tlog") || strings.Contains(s, "threshold not met")
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
