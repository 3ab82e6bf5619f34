package pinhook

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/verify"
)

// negativeFreshFor is how long admission takes a cached word that a
// digest does not verify.
const negativeFreshFor = 30 * time.Second

// requestVerifier verifies, for one admission request, the digests an
// ImagePin with spec.verify would have written: each policy built once per
// request, answers from the shared Verifier's cache when it has them.
type requestVerifier struct {
	h         *Handler
	namespace string
	policies  map[*imagesv1alpha1.ImagePin]policyOrErr
}

type policyOrErr struct {
	p   *verify.Policy
	err error
}

func (h *Handler) verifier(namespace string) *requestVerifier {
	return &requestVerifier{h: h, namespace: namespace, policies: map[*imagesv1alpha1.ImagePin]policyOrErr{}}
}

// check returns why digest may not be written for pin, or "" when it
// verified.
func (v *requestVerifier) check(ctx context.Context, pin *imagesv1alpha1.ImagePin, ref, digest string, kc authn.Keychain) string {
	if v.h.Verifier == nil || v.h.VerifyLoader == nil {
		return fmt.Sprintf("%s@%s: signatures not verified: this webhook has no verifier", ref, digest)
	}
	pe, ok := v.policies[pin]
	if !ok {
		cluster := strings.HasPrefix(pin.Name, selection.ClusterPinPrefix)
		pe.p, pe.err = v.h.VerifyLoader.Policy(ctx, pin.Spec.Verify, v.namespace, cluster)
		v.policies[pin] = pe
	}
	if pe.err != nil {
		return fmt.Sprintf("%s@%s: signatures not verified: %v", ref, digest, pe.err)
	}
	// A word that the digest does not verify is taken for 30 s at most
	// (or the interval, when shorter): a digest signed since is admitted
	// soon, on every replica, push events or not.
	fresh := negativeFreshFor
	if pin.Spec.Interval != nil && pin.Spec.Interval.Duration > 0 && pin.Spec.Interval.Duration < fresh {
		fresh = pin.Spec.Interval.Duration
	}
	r := v.h.Verifier.Verify(ctx, verify.Request{
		Image: ref, Digest: digest, Keychain: kc, Policy: pe.p,
		FreshSince: time.Now().Add(-fresh),
	})
	if r.Verified {
		return ""
	}
	return fmt.Sprintf("%s@%s did not verify: %s (%s)", ref, digest, r.Reason, r.Message)
}
