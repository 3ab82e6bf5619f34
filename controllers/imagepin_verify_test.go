package controllers

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/verify"
)

// Issue 18: with spec.verify, Pin and Follow write only digests that
// verified; Follow stays where it is on a digest that did not.
func TestPlanWritesOnlyVerifiedDigests(t *testing.T) {
	const img = "reg.io/app:v1"
	ok := verify.Result{Verified: true, Reason: imagesv1alpha1.VerificationVerified}
	unsigned := verify.Result{Reason: imagesv1alpha1.VerificationUnsigned, Message: "no signature"}
	failed := verify.Result{Reason: imagesv1alpha1.VerificationError, Message: "registry failed"}
	c := func(pinned, resolved string, verdicts map[string]verify.Result) containerObs {
		return containerObs{kind: imagesv1alpha1.KindDeployment, workload: "web", place: place{container: "app"}, image: img, hasTag: true,
			pinned: pinned, result: registry.Result{Digest: resolved}, verdicts: verdicts}
	}
	seen := map[string]time.Time{img: t0.Add(-time.Hour)}
	tests := []struct {
		name      string
		mode      imagesv1alpha1.Mode
		c         containerObs
		verifying bool
		overrides map[string]string
		want      string
	}{
		{name: "Pin writes a verified digest", mode: imagesv1alpha1.ModePin, c: c("", dg("a"), map[string]verify.Result{dg("a"): ok}), verifying: true,
			want: fmt.Sprintf("[%s -> %s@%s]", img, img, dg("a"))},
		{name: "Pin does not write an unsigned digest", mode: imagesv1alpha1.ModePin, c: c("", dg("a"), map[string]verify.Result{dg("a"): unsigned}), verifying: true, want: "[]"},
		{name: "Follow stays on the verified digest", mode: imagesv1alpha1.ModeFollow, c: c(dg("a"), dg("b"), map[string]verify.Result{dg("a"): ok, dg("b"): unsigned}), verifying: true, want: "[]"},
		{name: "Follow moves to a verified digest", mode: imagesv1alpha1.ModeFollow, c: c(dg("a"), dg("b"), map[string]verify.Result{dg("a"): ok, dg("b"): ok}), verifying: true,
			want: fmt.Sprintf("[%s@%s -> %s@%s]", img, dg("a"), img, dg("b"))},
		{name: "a registry failure mid-verification writes nothing (fail closed)", mode: imagesv1alpha1.ModeFollow, c: c(dg("a"), dg("b"), map[string]verify.Result{dg("b"): failed}), verifying: true, want: "[]"},
		{name: "a policy that could not be built writes nothing", mode: imagesv1alpha1.ModePin, c: c("", dg("a"), nil), verifying: true, want: "[]"},
		{name: "an override to an unverified digest is not written", mode: imagesv1alpha1.ModeFollow, c: c(dg("b"), dg("b"), map[string]verify.Result{dg("b"): ok, dg("a"): unsigned}), verifying: true,
			overrides: map[string]string{img: dg("a")}, want: "[]"},
		{name: "without spec.verify nothing is asked", mode: imagesv1alpha1.ModePin, c: c("", dg("a"), nil),
			want: fmt.Sprintf("[%s -> %s@%s]", img, img, dg("a"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obs := obsOf(tt.c)
			obs.verifying = tt.verifying
			plan, _ := planWrites(planInput{mode: tt.mode, now: t0, obs: obs, firstSeen: seen, overrides: tt.overrides})
			var got []string
			for _, w := range plan {
				for _, iw := range w.writes {
					got = append(got, iw.from+" -> "+iw.to)
				}
			}
			if fmt.Sprint(got) != tt.want {
				t.Errorf("plan = %v, want %s", got, tt.want)
			}
		})
	}
}

// Issue 18: status says, per image and digest, whether it verified; a
// container whose new digest did not verify shows drift Unverified; the
// Verified condition names the image, the digest and the reason.
func TestStatusReportsVerification(t *testing.T) {
	const img = "reg.io/app:v1"
	c := containerObs{kind: imagesv1alpha1.KindDeployment, workload: "web", place: place{container: "app"}, image: img, hasTag: true,
		pinned: dg("a"), result: registry.Result{Digest: dg("b"), ResolvedAt: t0},
		verdicts: map[string]verify.Result{
			dg("a"): {Verified: true, Reason: imagesv1alpha1.VerificationVerified, Message: "signed by keys[0]"},
			dg("b"): {Reason: imagesv1alpha1.VerificationUntrusted, Message: "signed by another key"},
		}}
	obs := obsOf(c)
	obs.verifying = true
	status := &imagesv1alpha1.ImagePinStatus{Images: []imagesv1alpha1.ImageStatus{{Image: img, Digest: imagesv1alpha1.Digest(dg("a")),
		History: []imagesv1alpha1.DigestRecord{{Digest: imagesv1alpha1.Digest(dg("a"))}}}}}
	setChecked(status, checkInput{generation: 1, now: t0, interval: time.Minute, obs: obs})

	st := status.Images[0]
	if st.Verification == nil || st.Verification.Verified || st.Verification.Reason != imagesv1alpha1.VerificationUntrusted {
		t.Errorf("images[0].verification = %+v, want Untrusted", st.Verification)
	}
	if len(st.History) != 2 || st.History[1].Verification == nil || !st.History[1].Verification.Verified {
		t.Fatalf("history = %+v, want the earlier digest verified", st.History)
	}
	if st.History[1].Verification.Message != "" || st.Verification.Message == "" {
		t.Errorf("the message belongs in images[].verification only, to keep ten history entries small: %+v, %+v", st.History[1].Verification, st.Verification)
	}
	if got := st.Workloads[0].Drift; !containsReason(got, imagesv1alpha1.DriftUnverified) {
		t.Errorf("drift = %v, want Unverified among them", got)
	}
	cond := meta.FindStatusCondition(status.Conditions, imagesv1alpha1.ConditionVerified)
	if cond == nil || cond.Status != "False" || cond.Reason != imagesv1alpha1.ReasonUnverified {
		t.Fatalf("Verified condition = %+v", cond)
	}
	for _, want := range []string{img + "@" + dg("b"), "Untrusted", "signed by another key"} {
		if !strings.Contains(cond.Message, want) {
			t.Errorf("Verified message %q does not say %q", cond.Message, want)
		}
	}

	// A policy that cannot be built: the condition names the field.
	obs = obsOf(containerObs{kind: imagesv1alpha1.KindDeployment, workload: "web", image: img, hasTag: true, result: registry.Result{Digest: dg("b")}})
	obs.verifying = true
	obs.verifyErr = &verify.ConfigError{Field: "keys[0].secretKeyRef", Err: errors.New("Secret ns/keys not found")}
	setChecked(status, checkInput{generation: 2, now: t0, interval: time.Minute, obs: obs})
	cond = meta.FindStatusCondition(status.Conditions, imagesv1alpha1.ConditionVerified)
	if cond == nil || cond.Reason != imagesv1alpha1.ReasonVerifyConfigError || !strings.Contains(cond.Message, "spec.verify.keys[0].secretKeyRef") {
		t.Errorf("Verified condition = %+v, want VerifyConfigError naming the field", cond)
	}

	// Without spec.verify there is no condition, and no verification.
	setChecked(status, checkInput{generation: 3, now: t0, interval: time.Minute, obs: obsOf(c.withoutVerdicts())})
	if meta.FindStatusCondition(status.Conditions, imagesv1alpha1.ConditionVerified) != nil {
		t.Error("a Verified condition without spec.verify")
	}
	if v := status.Images[0].History[1].Verification; v != nil {
		t.Errorf("history keeps a verification without spec.verify: %+v", v)
	}
}

func (c containerObs) withoutVerdicts() containerObs {
	c.verdicts = nil
	return c
}

func containsReason(list []imagesv1alpha1.DriftReason, r imagesv1alpha1.DriftReason) bool {
	for _, x := range list {
		if x == r {
			return true
		}
	}
	return false
}
