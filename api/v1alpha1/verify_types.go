/*
Copyright 2026 The imagepin Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package v1alpha1

// VerifySpec says whose signature a digest must carry before imagepin pins
// it, follows it or admits it pinned. A digest verifies when one signature
// on it (a cosign signature in a legacy ".sig" tag, or a Sigstore bundle
// attached as an OCI 1.1 referrer) is by one of keys, or by a certificate
// of one of keyless's identities.
// +kubebuilder:validation:XValidation:rule="has(self.keys) || has(self.keyless)",message="verify needs keys, keyless identities, or both"
// +kubebuilder:validation:XValidation:rule="!has(self.keyless) || has(self.trustedRoot)",message="keyless verification needs trustedRoot: the Fulcio and Rekor keys to trust"
type VerifySpec struct {
	// keys are the public keys (PEM: ECDSA, RSA or Ed25519) whose
	// signatures are trusted.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	Keys []KeySource `json:"keys,omitempty"`

	// keyless are the certificate identities (Fulcio-issued certificates)
	// whose signatures are trusted. Keyless signatures are verified in
	// the Sigstore bundle format only.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	Keyless []KeylessIdentity `json:"keyless,omitempty"`

	// trustedRoot is a Sigstore trusted root (the trusted_root.json that
	// "cosign trusted-root create" writes, or the public-good instance's
	// from its TUF repository): Fulcio certificate authorities, Rekor and
	// CT log keys, timestamp authorities. Required for keyless. With
	// keys, it turns on transparency-log checks. Nothing is fetched from
	// the internet.
	// +optional
	TrustedRoot *ObjectKeyRef `json:"trustedRoot,omitempty"`

	// transparencyLog says whether a signature must have been logged in
	// Rekor: Require (the default when trustedRoot is given; a bundle's
	// log entry is checked against the root's Rekor keys) or Ignore
	// (the default without trustedRoot).
	// +optional
	TransparencyLog TransparencyLogPolicy `json:"transparencyLog,omitempty"`
}

// TransparencyLogPolicy says whether signatures must be in Rekor.
// +kubebuilder:validation:Enum=Require;Ignore
type TransparencyLogPolicy string

const (
	// TransparencyLogRequire requires a Rekor entry, checked against the
	// trusted root.
	TransparencyLogRequire TransparencyLogPolicy = "Require"
	// TransparencyLogIgnore does not look at Rekor entries.
	TransparencyLogIgnore TransparencyLogPolicy = "Ignore"
)

// KeySource is one public key: inline, or a key of a Secret or ConfigMap.
// +kubebuilder:validation:XValidation:rule="[has(self.pem), has(self.secretKeyRef), has(self.configMapKeyRef)].filter(x, x).size() == 1",message="a key is exactly one of pem, secretKeyRef or configMapKeyRef"
type KeySource struct {
	// pem is the public key itself ("-----BEGIN PUBLIC KEY-----…").
	// +optional
	// +kubebuilder:validation:MaxLength=16384
	PEM string `json:"pem,omitempty"`
	// secretKeyRef names a key of a Secret holding the PEM public key.
	// +optional
	SecretKeyRef *ObjectKeyRef `json:"secretKeyRef,omitempty"`
	// configMapKeyRef names a key of a ConfigMap holding the PEM public
	// key.
	// +optional
	ConfigMapKeyRef *ObjectKeyRef `json:"configMapKeyRef,omitempty"`
}

// ObjectKeyRef names one key of a Secret or ConfigMap.
type ObjectKeyRef struct {
	// namespace of the object. An ImagePin reads its own namespace only
	// (empty means it); a ClusterImagePin must name one.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace,omitempty"`
	// name of the object.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// key in the object's data.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key"`
}

// KeylessIdentity is who a keyless signing certificate must name: its
// OIDC issuer and its subject (the SAN: an email, a workflow URI), each
// exact or as a regular expression (RE2, anchored by you).
// +kubebuilder:validation:XValidation:rule="has(self.issuer) != has(self.issuerRegExp)",message="give exactly one of issuer and issuerRegExp"
// +kubebuilder:validation:XValidation:rule="has(self.subject) != has(self.subjectRegExp)",message="give exactly one of subject and subjectRegExp"
type KeylessIdentity struct {
	// issuer is the OIDC issuer, exactly.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Issuer string `json:"issuer,omitempty"`
	// issuerRegExp matches the OIDC issuer.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	IssuerRegExp string `json:"issuerRegExp,omitempty"`
	// subject is the certificate's subject alternative name, exactly.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Subject string `json:"subject,omitempty"`
	// subjectRegExp matches the certificate's subject alternative name.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	SubjectRegExp string `json:"subjectRegExp,omitempty"`
}

// Verification is what signature verification said of one digest.
type Verification struct {
	// verified is true when a trusted signature covers the digest.
	// +required
	Verified bool `json:"verified"`
	// reason is one of Verified, Unsigned (no signature found),
	// Untrusted (signatures, none by a trusted key or identity), Invalid
	// (a signature that does not verify, or does not cover this digest)
	// or Error (the registry failed mid-verification; retried, and
	// nothing is written meanwhile).
	// +required
	// +kubebuilder:validation:Enum=Verified;Unsigned;Untrusted;Invalid;Error
	Reason VerificationReason `json:"reason"`
	// message says more: which key or identity signed, or why nothing
	// verified.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Message string `json:"message,omitempty"`
}

// VerificationReason is why a digest did or did not verify.
type VerificationReason string

// Verification reasons.
const (
	VerificationVerified  VerificationReason = "Verified"
	VerificationUnsigned  VerificationReason = "Unsigned"
	VerificationUntrusted VerificationReason = "Untrusted"
	VerificationInvalid   VerificationReason = "Invalid"
	VerificationError     VerificationReason = "Error"
)
