package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/verify"
)

// Signature verification (spec.verify): every digest a container could be
// written with (what its tag resolves to, its override) or runs pinned is
// verified before planWrites decides; a digest that does not verify is
// never written, and is reported as drift Unverified and in the Verified
// condition. Answers are cached by the Verifier: a verified digest costs
// its signature reads once, ever.

// verifyAll fills each container's verdicts. A policy that cannot be built
// (a key Secret missing, a bad PEM) is kept in obs.verifyErr: nothing
// verifies, so nothing is written.
func (r *ImagePinReconciler) verifyAll(ctx context.Context, pin *imagesv1alpha1.ImagePin, sel *selection.Selection, obs *observation) {
	if pin.Spec.Verify == nil {
		return
	}
	obs.verifying = true
	cluster := strings.HasPrefix(pin.Name, selection.ClusterPinPrefix)
	policy, err := r.VerifyLoader.Policy(ctx, pin.Spec.Verify, pin.Namespace, cluster)
	if err != nil {
		obs.verifyErr = err
		return
	}
	// One verification per image and digest: the Verifier's answers are
	// per repository, digest and policy, whoever asks; the signatures are
	// read with the credentials of the first container naming it.
	type job struct{ image, digest string }
	jobs := map[job]*verify.Result{}
	keychains := map[job]authn.Keychain{}
	var order []job
	overrides := sel.Overrides()
	for _, c := range obs.containers {
		for _, d := range c.digestsToVerify(overrides[c.image]) {
			j := job{c.image, d}
			if _, ok := jobs[j]; !ok {
				jobs[j], keychains[j] = &verify.Result{}, c.keychain
				order = append(order, j)
			}
		}
	}
	// A verdict is this tick's even for a check owed from the previous
	// one: a signature pushed since is looked for.
	fresh := tickStart(r.Clock.Now(), sel.Interval)
	inParallel(len(order), func(i int) {
		j := order[i]
		*jobs[j] = r.Verifier.Verify(ctx, verify.Request{
			Image: j.image, Digest: j.digest, Keychain: keychains[j], Policy: policy, FreshSince: fresh,
		})
	})
	for i := range obs.containers {
		c := &obs.containers[i]
		for _, d := range c.digestsToVerify(overrides[c.image]) {
			if c.verdicts == nil {
				c.verdicts = map[string]verify.Result{}
			}
			c.verdicts[d] = *jobs[job{c.image, d}]
		}
	}
}

// digestsToVerify: what the tag resolves to (stale included: it may be
// written once the registry answers), the pinned digest, the override's.
func (c *containerObs) digestsToVerify(override string) []string {
	var out []string
	for _, d := range []string{c.result.Digest, c.pinned, override} {
		if d != "" && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// mayWrite says whether digest may be written into c: always without
// spec.verify, else only when it verified.
func (c *containerObs) mayWrite(verifying bool, digest string) bool {
	return !verifying || c.verdicts[digest].Verified
}

// unverified says whether c's resolved or pinned digest was verified and
// did not pass: drift Unverified.
func (c *containerObs) unverified() bool {
	for _, d := range []string{c.result.Digest, c.pinned} {
		if v, ok := c.verdicts[d]; ok && d != "" && !v.Verified {
			return true
		}
	}
	return false
}

// verdictOf returns what any container said of digest.
func verdictOf(cs []containerObs, digest imagesv1alpha1.Digest) *imagesv1alpha1.Verification {
	for _, c := range cs {
		if v, ok := c.verdicts[string(digest)]; ok {
			return v.Status()
		}
	}
	return nil
}

// maxUnverifiedListed caps the digests the Verified condition names.
const maxUnverifiedListed = 5

// setVerified sets the Verified condition from the check, or removes it
// without spec.verify.
func setVerified(status *imagesv1alpha1.ImagePinStatus, generation int64, obs observation) {
	if !obs.verifying {
		meta.RemoveStatusCondition(&status.Conditions, imagesv1alpha1.ConditionVerified)
		return
	}
	c := metav1.Condition{Type: imagesv1alpha1.ConditionVerified, ObservedGeneration: generation}
	if obs.verifyErr != nil {
		c.Status, c.Reason = metav1.ConditionFalse, imagesv1alpha1.ReasonVerifyConfigError
		c.Message = "no digest can be verified, so none is written: " + obs.verifyErr.Error()
		if ce := (*verify.ConfigError)(nil); !errors.As(obs.verifyErr, &ce) {
			c.Message = "no digest can be verified, so none is written: spec.verify: " + obs.verifyErr.Error()
		}
		meta.SetStatusCondition(&status.Conditions, metav1.Condition{Type: c.Type, ObservedGeneration: c.ObservedGeneration, Status: c.Status, Reason: c.Reason, Message: capMessage(c.Message)})
		return
	}
	seen := map[string]bool{}
	var failed []string
	verified := 0
	for _, o := range obs.containers {
		for _, d := range slices.Sorted(maps.Keys(o.verdicts)) {
			v := o.verdicts[d]
			key := o.image + "@" + d
			if seen[key] {
				continue
			}
			seen[key] = true
			if v.Verified {
				verified++
				continue
			}
			failed = append(failed, fmt.Sprintf("%s@%s: %s (%s)", o.image, d, v.Reason, v.Status().Message))
		}
	}
	sort.Strings(failed)
	if len(failed) == 0 {
		c.Status, c.Reason = metav1.ConditionTrue, imagesv1alpha1.ReasonSignaturesVerified
		c.Message = fmt.Sprintf("%d %s verified", verified, plural(verified, "digest"))
	} else {
		c.Status, c.Reason = metav1.ConditionFalse, imagesv1alpha1.ReasonUnverified
		c.Message = fmt.Sprintf("%d of %d %s did not verify, and %s never written: %s",
			len(failed), len(failed)+verified, plural(len(failed)+verified, "digest"), map[bool]string{true: "is", false: "are"}[len(failed) == 1], joinCapped(failed, maxUnverifiedListed))
	}
	c.Message = capMessage(c.Message)
	meta.SetStatusCondition(&status.Conditions, c)
}

// maxVerifiedMessage bounds the Verified condition's message, whatever
// the registries said.
const maxVerifiedMessage = 4096

func capMessage(s string) string { return verify.Truncate(s, maxVerifiedMessage) }
