// Package verify checks, before imagepin writes or admits a digest, that a
// signature it trusts covers that digest: a cosign signature in the legacy
// "sha256-<hex>.sig" tag, or a Sigstore bundle attached to the digest as an
// OCI 1.1 referrer. Signatures are read through the resolver (its
// credentials, budget, allow list and TLS rules) and checked with
// sigstore-go; results are cached per repository, digest and policy.
package verify

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/sigstore/sigstore-go/pkg/root"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Policy is a compiled spec.verify: whose signatures are trusted. A Policy
// is immutable and safe for concurrent use.
type Policy struct {
	// ID identifies everything that decides a verification (keys,
	// identities, root, log policy): the cache's key, so that a changed
	// key set verifies again.
	ID string

	keys       []trustedKey
	identities []sgverify.CertificateIdentity
	idNames    []string
	root       root.TrustedMaterial
	requireLog bool
}

type trustedKey struct {
	name     string // "keys[0] (sha256:0123456789ab)"
	hint     string // base64 of the SHA-256 of its DER: cosign's bundle hint
	verifier signature.Verifier
}

// Material is spec.verify with its references read: the PEM of each key in
// the order of spec.verify.keys, and the trusted root's JSON (nil without
// one). Field names the spec field each came from, for errors.
type Material struct {
	Keys     [][]byte
	RootJSON []byte
}

// ConfigError is spec.verify's material that cannot be used: the field and
// why. Nothing verifies until it is fixed.
type ConfigError struct {
	Field string
	Err   error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("spec.verify.%s: %v", e.Field, e.Err) }
func (e *ConfigError) Unwrap() error { return e.Err }

// Compile checks spec and its material and returns the Policy.
func Compile(spec *imagesv1alpha1.VerifySpec, m Material) (*Policy, error) {
	if spec == nil {
		return nil, nil
	}
	if len(spec.Keys) == 0 && len(spec.Keyless) == 0 {
		return nil, &ConfigError{Field: "keys", Err: fmt.Errorf("give keys, keyless identities, or both")}
	}
	if len(m.Keys) != len(spec.Keys) {
		return nil, &ConfigError{Field: "keys", Err: fmt.Errorf("%d keys read for %d listed", len(m.Keys), len(spec.Keys))}
	}
	h := sha256.New()
	p := &Policy{}
	for i, pemBytes := range m.Keys {
		field := fmt.Sprintf("keys[%d]", i)
		pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemBytes)
		if err != nil {
			return nil, &ConfigError{Field: field, Err: fmt.Errorf("not a PEM public key: %w", err)}
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, &ConfigError{Field: field, Err: err}
		}
		v, err := signature.LoadVerifier(pub, crypto.SHA256)
		if err != nil {
			return nil, &ConfigError{Field: field, Err: fmt.Errorf("unsupported public key: %w", err)}
		}
		sum := sha256.Sum256(der)
		p.keys = append(p.keys, trustedKey{name: fmt.Sprintf("%s (sha256:%s)", field, hex.EncodeToString(sum[:6])), hint: base64.StdEncoding.EncodeToString(sum[:]), verifier: v})
		_, _ = fmt.Fprintf(h, "key:%x\n", der)
	}
	for i, id := range spec.Keyless {
		ci, err := sgverify.NewShortCertificateIdentity(id.Issuer, id.IssuerRegExp, id.Subject, id.SubjectRegExp)
		if err != nil {
			return nil, &ConfigError{Field: fmt.Sprintf("keyless[%d]", i), Err: err}
		}
		p.identities = append(p.identities, ci)
		p.idNames = append(p.idNames, identityName(id))
		_, _ = fmt.Fprintf(h, "identity:%q %q %q %q\n", id.Issuer, id.IssuerRegExp, id.Subject, id.SubjectRegExp)
	}
	if m.RootJSON != nil {
		tr, err := root.NewTrustedRootFromJSON(m.RootJSON)
		if err != nil {
			return nil, &ConfigError{Field: "trustedRoot", Err: fmt.Errorf("not a Sigstore trusted root: %w", err)}
		}
		p.root = tr
		_, _ = fmt.Fprintf(h, "root:%x\n", sha256.Sum256(m.RootJSON))
	}
	if len(p.identities) > 0 && p.root == nil {
		return nil, &ConfigError{Field: "trustedRoot", Err: fmt.Errorf("keyless verification needs a trusted root")}
	}
	switch spec.TransparencyLog {
	case imagesv1alpha1.TransparencyLogRequire:
		if p.root == nil {
			return nil, &ConfigError{Field: "transparencyLog", Err: fmt.Errorf("transparencyLog Require needs trustedRoot: the Rekor keys to check log entries with")}
		}
		p.requireLog = true
	case "":
		p.requireLog = p.root != nil
	}
	_, _ = fmt.Fprintf(h, "log:%v\n", p.requireLog)
	p.ID = hex.EncodeToString(h.Sum(nil))[:32]
	return p, nil
}

// withRoot is Compile's test hook: trusted material that is not a JSON
// root (sigstore-go's virtual Sigstore).
func (p *Policy) withRoot(tm root.TrustedMaterial) *Policy {
	q := *p
	q.root = tm
	return &q
}

func identityName(id imagesv1alpha1.KeylessIdentity) string {
	subject, issuer := id.Subject, id.Issuer
	if subject == "" {
		subject = "~" + id.SubjectRegExp
	}
	if issuer == "" {
		issuer = "~" + id.IssuerRegExp
	}
	return subject + " (" + issuer + ")"
}

// Describe says what the policy trusts, for messages.
func (p *Policy) Describe() string {
	var parts []string
	for _, k := range p.keys {
		parts = append(parts, k.name)
	}
	parts = append(parts, p.idNames...)
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
