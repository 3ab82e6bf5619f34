package verify

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore/pkg/cryptoutils"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// wantConfigError checks that err is a *ConfigError of field whose
// message says says.
func wantConfigError(t testing.TB, err error, field, says string) {
	t.Helper()
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v (%T), want a *ConfigError of %s", err, err, field)
	}
	if ce.Field != field {
		t.Errorf("field %q, want %q (%v)", ce.Field, field, err)
	}
	if !strings.HasPrefix(err.Error(), "spec.verify."+field+": ") || !strings.Contains(err.Error(), says) {
		t.Errorf("error %q does not name spec.verify.%s and say %q", err, field, says)
	}
}

func TestCompileErrors(t *testing.T) {
	good := string(pemOf(t, newKey(t)))
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	rootJSON := trustedRootJSON(t, vs)
	id := imagesv1alpha1.KeylessIdentity{Subject: ciSubject, Issuer: ciIssuer}
	keys := func(pems ...string) ([]imagesv1alpha1.KeySource, [][]byte) {
		var ks []imagesv1alpha1.KeySource
		var bs [][]byte
		for _, p := range pems {
			ks = append(ks, imagesv1alpha1.KeySource{PEM: p})
			bs = append(bs, []byte(p))
		}
		return ks, bs
	}

	t.Run("no spec, no policy", func(t *testing.T) {
		if p, err := Compile(nil, Material{}); p != nil || err != nil {
			t.Errorf("got %v, %v", p, err)
		}
	})

	t.Run("bad PEM", func(t *testing.T) {
		ks, bs := keys("-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n")
		_, err := Compile(&imagesv1alpha1.VerifySpec{Keys: ks}, Material{Keys: bs})
		wantConfigError(t, err, "keys[0]", "not a PEM public key")
		if errors.Unwrap(err) == nil {
			t.Error("the ConfigError wraps nothing")
		}
	})

	t.Run("not PEM at all, second key", func(t *testing.T) {
		ks, bs := keys(good, "ssh-ed25519 AAAA…")
		_, err := Compile(&imagesv1alpha1.VerifySpec{Keys: ks}, Material{Keys: bs})
		wantConfigError(t, err, "keys[1]", "not a PEM public key")
	})

	t.Run("a private key", func(t *testing.T) {
		priv, err := cryptoutils.MarshalPrivateKeyToPEM(newKey(t))
		if err != nil {
			t.Fatal(err)
		}
		ks, bs := keys(string(priv))
		_, err = Compile(&imagesv1alpha1.VerifySpec{Keys: ks}, Material{Keys: bs})
		wantConfigError(t, err, "keys[0]", "not a PEM public key")
	})

	t.Run("neither keys nor keyless", func(t *testing.T) {
		_, err := Compile(&imagesv1alpha1.VerifySpec{}, Material{})
		wantConfigError(t, err, "keys", "give keys, keyless identities, or both")
	})

	t.Run("material for fewer keys than listed", func(t *testing.T) {
		ks, _ := keys(good, good)
		_, err := Compile(&imagesv1alpha1.VerifySpec{Keys: ks}, Material{Keys: [][]byte{[]byte(good)}})
		wantConfigError(t, err, "keys", "1 keys read for 2 listed")
	})

	t.Run("keyless without a root", func(t *testing.T) {
		_, err := Compile(&imagesv1alpha1.VerifySpec{Keyless: []imagesv1alpha1.KeylessIdentity{id}}, Material{})
		wantConfigError(t, err, "trustedRoot", "keyless verification needs a trusted root")
	})

	t.Run("transparencyLog Require without a root", func(t *testing.T) {
		ks, bs := keys(good)
		_, err := Compile(&imagesv1alpha1.VerifySpec{Keys: ks, TransparencyLog: imagesv1alpha1.TransparencyLogRequire}, Material{Keys: bs})
		wantConfigError(t, err, "transparencyLog", "Require needs trustedRoot")
	})

	t.Run("a root that is not a trusted root", func(t *testing.T) {
		_, err := Compile(&imagesv1alpha1.VerifySpec{Keyless: []imagesv1alpha1.KeylessIdentity{id}}, Material{RootJSON: []byte(`{"mediaType":"application/json"}`)})
		wantConfigError(t, err, "trustedRoot", "not a Sigstore trusted root")
	})

	t.Run("a bad regular expression", func(t *testing.T) {
		_, err := Compile(&imagesv1alpha1.VerifySpec{Keyless: []imagesv1alpha1.KeylessIdentity{id, {SubjectRegExp: "(", Issuer: ciIssuer}}}, Material{RootJSON: rootJSON})
		wantConfigError(t, err, "keyless[1]", "")
	})

	t.Run("Ignore without a root compiles", func(t *testing.T) {
		ks, bs := keys(good)
		p, err := Compile(&imagesv1alpha1.VerifySpec{Keys: ks, TransparencyLog: imagesv1alpha1.TransparencyLogIgnore}, Material{Keys: bs})
		if err != nil || p.requireLog {
			t.Fatalf("got %+v, %v", p, err)
		}
	})
}

// TestPolicyID: the ID is the same for the same keys however given, and
// changes with anything that decides a verification.
func TestPolicyID(t *testing.T) {
	a, b := newKey(t), newKey(t)
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	// PEM text that differs, one key.
	crlf := strings.ReplaceAll(string(pemOf(t, a)), "\n", "\r\n")
	p1, err := Compile(&imagesv1alpha1.VerifySpec{Keys: []imagesv1alpha1.KeySource{{PEM: crlf}}}, Material{Keys: [][]byte{[]byte(crlf)}})
	if err != nil {
		t.Fatal(err)
	}
	if p1.ID != keyPolicy(t, a).ID {
		t.Error("one key written two ways has two IDs")
	}
	id := imagesv1alpha1.KeylessIdentity{Subject: ciSubject, Issuer: ciIssuer}
	ids := map[string]string{}
	for name, p := range map[string]*Policy{
		"a":              keyPolicy(t, a),
		"b":              keyPolicy(t, b),
		"a, b":           keyPolicy(t, a, b),
		"keyless":        rootPolicy(t, vs, keylessSpec(id)),
		"keyless, other": rootPolicy(t, vs, keylessSpec(imagesv1alpha1.KeylessIdentity{Subject: "other@example.com", Issuer: ciIssuer})),
		"keyless, log Ignore": rootPolicy(t, vs, &imagesv1alpha1.VerifySpec{Keyless: []imagesv1alpha1.KeylessIdentity{id},
			TransparencyLog: imagesv1alpha1.TransparencyLogIgnore}),
	} {
		if other, ok := ids[p.ID]; ok {
			t.Errorf("%s and %s share ID %s", name, other, p.ID)
		}
		ids[p.ID] = name
	}
	if got := keyPolicy(t, b, a).Describe(); !strings.HasPrefix(got, "keys[0] (sha256:") || !strings.Contains(got, ", keys[1] (sha256:") {
		t.Errorf("Describe() = %q", got)
	}
	if got := rootPolicy(t, vs, keylessSpec(imagesv1alpha1.KeylessIdentity{SubjectRegExp: ".*@example.com", Issuer: ciIssuer})).Describe(); got != "~.*@example.com ("+ciIssuer+")" {
		t.Errorf("Describe() = %q", got)
	}
}

// TestOtherKeyTypes: RSA and Ed25519 public keys verify legacy signatures
// as cosign makes them with such keys (RSA PKCS#1 v1.5 over SHA-256,
// Ed25519 over the payload).
func TestOtherKeyTypes(t *testing.T) {
	f := newFixture(t, false)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		pub  crypto.PublicKey
		sign func(payload []byte) []byte
	}{
		{"rsa", &rsaKey.PublicKey, func(payload []byte) []byte {
			sum := sha256.Sum256(payload)
			sig, err := rsa.SignPKCS1v15(rand.Reader, rsaKey, crypto.SHA256, sum[:])
			if err != nil {
				t.Fatal(err)
			}
			return sig
		}},
		{"ed25519", edPub, func(payload []byte) []byte { return ed25519.Sign(edKey, payload) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			pem, err := cryptoutils.MarshalPublicKeyToPEM(c.pub)
			if err != nil {
				t.Fatal(err)
			}
			p, err := Compile(&imagesv1alpha1.VerifySpec{Keys: []imagesv1alpha1.KeySource{{PEM: string(pem)}}}, Material{Keys: [][]byte{pem}})
			if err != nil {
				t.Fatal(err)
			}
			d, _ := f.reg.pushImage(c.name)
			payload := simpleSigning(f.reg.host+"/"+c.name, d)
			f.reg.pushLegacy(c.name, d, sigLayer{payload: payload, annotation: base64.StdEncoding.EncodeToString(c.sign(payload))})
			want(t, f.verify(t, c.name, d, p), true, imagesv1alpha1.VerificationVerified)
			want(t, f.verify(t, c.name, d, keyPolicy(t, newKey(t))), false, imagesv1alpha1.VerificationUntrusted)
		})
	}
}
