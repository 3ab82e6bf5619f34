package controllers

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/drift"
	"github.com/imagepin/imagepin/internal/workload"
)

// Bounds that keep an ImagePin's status far below the 1 MiB object limit
// however many workloads match; what is left out is counted in
// summary.omitted and said in the Ready message.
const (
	maxImages          = 100
	maxWorkloadEntries = 500
	// maxWorkloadsPerImage is the CRD's maxItems of images[].workloads.
	maxWorkloadsPerImage = 256
	maxHistory           = 10
	// maxImageLength is the CRD's maxLength of images[].image; a longer
	// reference is not valid anyway, and is counted, not listed.
	maxImageLength = 512
	// maxDriftReasons is the CRD's maxItems of a workload's drift.
	maxDriftReasons = 7
	// maxStatusBytes budgets the workload entries' approximate size, as
	// entries with many digests and nodes are far larger than average.
	maxStatusBytes = 512 << 10
)

// driftPriority orders reasons for the Drifted condition's reason: the one
// an SRE should look at first.
var driftPriority = []imagesv1alpha1.DriftReason{
	imagesv1alpha1.DriftDigestGone,
	imagesv1alpha1.DriftTagMoved,
	imagesv1alpha1.DriftMixedReplicas,
	imagesv1alpha1.DriftRolloutPending,
	imagesv1alpha1.DriftUnresolvable,
	imagesv1alpha1.DriftUnverified,
}

// setInvalidSpec says the spec of this generation cannot be honoured. What
// was seen before stays in status: it is still the last thing known.
func setInvalidSpec(status *imagesv1alpha1.ImagePinStatus, generation int64, err error) {
	status.ObservedGeneration = generation
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type:               imagesv1alpha1.ConditionReady,
		Status:             metav1.ConditionFalse,
		Reason:             imagesv1alpha1.ReasonInvalidSpec,
		Message:            "the spec cannot be honoured: " + err.Error(),
		ObservedGeneration: generation,
	})
}

// setSuspended says the ImagePin is suspended; what was seen before stays.
func setSuspended(status *imagesv1alpha1.ImagePinStatus, generation int64) {
	status.ObservedGeneration = generation
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type:               imagesv1alpha1.ConditionReady,
		Status:             metav1.ConditionFalse,
		Reason:             imagesv1alpha1.ReasonSuspended,
		Message:            "spec.suspend is true: no registry requests and no writes until it is false; status shows the last check",
		ObservedGeneration: generation,
	})
}

// checkInput is what setChecked needs, as plain values.
type checkInput struct {
	generation int64
	now        time.Time
	interval   time.Duration
	obs        observation
	platforms  drift.Platforms
	// driftedFirst lists drifted images and containers first, and keeps
	// them when the bounds leave entries out (a ClusterImagePin's status).
	driftedFirst bool
	// overrides are spec.overrides, to name one whose digest is gone.
	overrides []imagesv1alpha1.ImageOverride
}

// setChecked writes the result of a check into status: images with their
// history and workloads, summary, Ready and Drifted. lastCheckTime moves
// only when something else changed or an interval has passed, so that pod
// churn does not turn into a status write per event.
func setChecked(status *imagesv1alpha1.ImagePinStatus, in checkInput) (byNamespace map[string]*imagesv1alpha1.Summary) {
	before := status.DeepCopy()
	// The API stores times to the second: compute with what it will keep,
	// or every check would look like a change.
	in.now = in.now.Truncate(time.Second)

	images, summary, byNamespace := buildImages(status.Images, in)
	status.Images = images
	status.Summary = summary
	status.ObservedGeneration = in.generation
	setReady(status, in.generation, goneOverrides(in.overrides, in.obs.available))
	setDrifted(status, in.generation)
	setVerified(status, in.generation, in.obs)
	setRollbackReady(status, in.generation)

	last := before.LastCheckTime
	if last == nil || in.now.Sub(last.Time) >= in.interval || !sameCheck(before, status) {
		t := metav1.NewTime(in.now)
		status.LastCheckTime = &t
	}
	return byNamespace
}

// sameCheck compares two statuses but for lastCheckTime.
func sameCheck(a, b *imagesv1alpha1.ImagePinStatus) bool {
	x, y := a.DeepCopy(), b.DeepCopy()
	x.LastCheckTime, y.LastCheckTime = nil, nil
	return equalStatus(x, y)
}

// buildImages groups the observed containers by image, newest history
// first, within the status bounds. byNamespace counts images, pinned,
// drifted and omitted entries per namespace ("" for an ImagePin's; its
// workloads are the caller's to count): a ClusterImagePin's breakdown.
func buildImages(prev []imagesv1alpha1.ImageStatus, in checkInput) (out []imagesv1alpha1.ImageStatus, summary imagesv1alpha1.Summary, byNamespace map[string]*imagesv1alpha1.Summary) {
	summary = imagesv1alpha1.Summary{Workloads: int32(in.obs.workloads)}
	byNamespace = map[string]*imagesv1alpha1.Summary{}
	nsSummary := func(ns string) *imagesv1alpha1.Summary {
		if byNamespace[ns] == nil {
			byNamespace[ns] = &imagesv1alpha1.Summary{}
		}
		return byNamespace[ns]
	}
	imageIn := map[[2]string]bool{}

	type reasoned struct {
		c       containerObs
		reasons []imagesv1alpha1.DriftReason
	}
	byImage := map[string][]reasoned{}
	driftedImage := map[string]bool{}
	for _, c := range in.obs.containers {
		reasons := drift.Reasons(drift.Input{
			Pinned:        c.pinned,
			Resolved:      c.result.Digest,
			ResolveFailed: c.hasTag && c.err != nil,
			Running:       runningList(c.running),
			Platforms:     in.platforms,
			Unverified:    c.unverified(),
			Gone:          goneOf(c, in.obs.available),
		})
		if len(reasons) > maxDriftReasons {
			reasons = reasons[:maxDriftReasons]
		}
		ns := nsSummary(c.namespace)
		if !imageIn[[2]string{c.namespace, c.image}] {
			imageIn[[2]string{c.namespace, c.image}] = true
			ns.Images++
		}
		if c.pinned != "" {
			summary.Pinned++
			ns.Pinned++
		}
		if drift.Drifted(reasons) {
			summary.Drifted++
			ns.Drifted++
		}
		byImage[c.image] = append(byImage[c.image], reasoned{c, reasons})
		driftedImage[c.image] = driftedImage[c.image] || drift.Drifted(reasons)
	}
	names := make([]string, 0, len(byImage))
	for n := range byImage {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		if in.driftedFirst && driftedImage[names[i]] != driftedImage[names[j]] {
			return driftedImage[names[i]]
		}
		return names[i] < names[j]
	})
	summary.Images = int32(len(names))

	prevByImage := map[string]imagesv1alpha1.ImageStatus{}
	for _, p := range prev {
		prevByImage[p.Image] = p
	}
	// An image stays listed while there is room for images, even when its
	// workload entries are left out: its history is where Follow and a
	// rollback find their digests.
	sts := map[string]*imagesv1alpha1.ImageStatus{}
	var listed []string
	for _, img := range names {
		if len(listed) >= maxImages || len(img) > maxImageLength {
			continue
		}
		cs := make([]containerObs, len(byImage[img]))
		for i, rc := range byImage[img] {
			cs[i] = rc.c
		}
		st := imageStatus(img, cs, prevByImage[img], in.now, in.obs.available)
		sts[img] = &st
		listed = append(listed, img)
	}

	// Entries in one pass, or (driftedFirst) the drifted ones of every
	// image before any other, so that the bounds leave out clean ones.
	passes := []func([]imagesv1alpha1.DriftReason) bool{func([]imagesv1alpha1.DriftReason) bool { return true }}
	if in.driftedFirst {
		passes = []func([]imagesv1alpha1.DriftReason) bool{drift.Drifted, func(r []imagesv1alpha1.DriftReason) bool { return !drift.Drifted(r) }}
	}
	entries, bytes := 0, 0
	for _, take := range passes {
		for _, img := range names {
			st := sts[img]
			for _, rc := range byImage[img] {
				if !take(rc.reasons) {
					continue
				}
				c := rc.c
				entry := imagesv1alpha1.WorkloadImage{
					Namespace: c.namespace,
					Kind:      c.kind, Name: c.workload, Template: c.template, Container: c.container, Init: c.init, Volume: c.volume,
					PinnedDigest: imagesv1alpha1.Digest(c.pinned),
					Running:      c.running,
					Drift:        rc.reasons,
				}
				size := entrySize(entry)
				if st == nil || len(st.Workloads) >= maxWorkloadsPerImage || entries >= maxWorkloadEntries || bytes+size > maxStatusBytes {
					summary.Omitted++
					nsSummary(c.namespace).Omitted++
					continue
				}
				entries++
				bytes += size
				st.Workloads = append(st.Workloads, entry)
			}
		}
	}
	for _, img := range listed {
		st := sts[img]
		sort.Slice(st.Workloads, func(i, j int) bool {
			a, b := st.Workloads[i], st.Workloads[j]
			if in.driftedFirst && drift.Drifted(a.Drift) != drift.Drifted(b.Drift) {
				return drift.Drifted(a.Drift)
			}
			return workloadLess(a, b)
		})
		out = append(out, *st)
	}
	return out, summary, byNamespace
}

// imageStatus is the image-level part: what the tag resolves to, the
// error, and the history carried over from the previous status.
func imageStatus(img string, cs []containerObs, prev imagesv1alpha1.ImageStatus, now time.Time, avail availability) imagesv1alpha1.ImageStatus {
	st := imagesv1alpha1.ImageStatus{Image: img, History: prev.History}
	var errMsg string
	for _, c := range cs {
		if !c.hasTag {
			continue
		}
		if c.err == nil && c.result.Digest != "" {
			st.Digest = imagesv1alpha1.Digest(c.result.Digest)
			st.ResolvedAt = timePtr(c.result.ResolvedAt)
			errMsg = ""
			break
		}
		if errMsg == "" {
			errMsg = describeErr(c.err)
		}
		if st.Digest == "" && c.result.Digest != "" { // stale, kept with the error
			st.Digest = imagesv1alpha1.Digest(c.result.Digest)
			st.ResolvedAt = timePtr(c.result.ResolvedAt)
		}
	}
	st.Error = errMsg
	if st.Digest == "" && st.Error != "" && prev.Digest != "" {
		// The resolver no longer serves it (past --registry-max-stale), but
		// status is the memory: keep the last digest seen, with the error.
		st.Digest, st.ResolvedAt = prev.Digest, prev.ResolvedAt
	}
	if st.Digest != "" && (len(st.History) == 0 || st.History[0].Digest != st.Digest) {
		st.History = append([]imagesv1alpha1.DigestRecord{{Digest: st.Digest, FirstSeen: metav1.NewTime(now)}}, st.History...)
	}
	if len(st.History) > maxHistory {
		st.History = st.History[:maxHistory]
	}
	// Verification of the digest, and of each earlier one this check
	// verified (a pinned one): which are digests to roll back to.
	if st.Digest != "" {
		st.Verification = verdictOf(cs, st.Digest)
	}
	st.History = slices.Clone(st.History) // prev's is not this check's to change
	verifying := slices.ContainsFunc(cs, func(c containerObs) bool { return c.verdicts != nil })
	for i := range st.History {
		if v := verdictOf(cs, st.History[i].Digest); v != nil || !verifying {
			// Without verification this check, earlier words are
			// dropped: spec.verify removed, or its keys unreadable.
			// History says verified and why in a word; the message is
			// images[].verification's, so that ten entries per image
			// keep the status small.
			if v != nil {
				v.Message = ""
			}
			st.History[i].Verification = v
		}
		// Whether the registry still has it; an answer not had this
		// check keeps the last one.
		if a, ok := avail[digestOf{img, string(st.History[i].Digest)}]; ok {
			st.History[i].Available = &a.Available
			st.History[i].CheckedAt = timePtr(a.CheckedAt.Truncate(time.Second))
		}
	}
	return st
}

// entrySize estimates the serialized size of a workload entry.
func entrySize(w imagesv1alpha1.WorkloadImage) int {
	n := 160 + len(w.Namespace) + len(w.Kind) + len(w.Name) + len(w.Template) + len(w.Container) + len(w.PinnedDigest)
	for _, r := range w.Running {
		n += 100
		for _, node := range r.Nodes {
			n += len(node) + 4
		}
	}
	return n
}

func timePtr(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	mt := metav1.NewTime(t.Truncate(time.Second))
	return &mt
}

func runningList(r []imagesv1alpha1.RunningDigest) []string {
	out := make([]string, len(r))
	for i, d := range r {
		out[i] = string(d.Digest)
	}
	return out
}

func workloadLess(a, b imagesv1alpha1.WorkloadImage) bool {
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	ka, kb := workload.KindOrder(a.Kind), workload.KindOrder(b.Kind)
	if ka != kb {
		return ka < kb
	}
	if a.Name != b.Name {
		return a.Name < b.Name
	}
	if a.Template != b.Template {
		return a.Template < b.Template
	}
	if a.Volume != b.Volume {
		return b.Volume // containers first, then image volumes
	}
	if a.Init != b.Init {
		return a.Init
	}
	return a.Container < b.Container
}

// setReady: True when every selected tag resolved, else False naming the
// images that did not and why.
//
// An override to a digest the registry no longer has makes it False too
// (OverrideDigestGone, naming the field), first: the one condition is set
// once, so that its transition time moves only when it changes.
func setReady(status *imagesv1alpha1.ImagePinStatus, generation int64, goneOverrides []string) {
	var failed []string
	for _, img := range status.Images {
		if img.Error != "" {
			failed = append(failed, img.Error)
		}
	}
	c := metav1.Condition{Type: imagesv1alpha1.ConditionReady, ObservedGeneration: generation}
	s := status.Summary
	switch {
	case len(goneOverrides) > 0:
		c.Status, c.Reason = metav1.ConditionFalse, imagesv1alpha1.ReasonOverrideDigestGone
		c.Message = fmt.Sprintf("the registry no longer has %s: not written, the workloads run what they run; choose a digest whose status.images[].history entry is available",
			joinCapped(goneOverrides, 3))
		if len(failed) > 0 {
			c.Message += fmt.Sprintf("; could not resolve %d of %d %s (last digests kept): %s",
				len(failed), s.Images, plural(int(s.Images), "image"), joinCapped(failed, 3))
		}
	case len(failed) == 0:
		c.Status, c.Reason = metav1.ConditionTrue, imagesv1alpha1.ReasonResolved
		c.Message = fmt.Sprintf("resolved %d %s of %d %s", s.Images, plural(int(s.Images), "image"), s.Workloads, plural(int(s.Workloads), "workload"))
	default:
		c.Status, c.Reason = metav1.ConditionFalse, imagesv1alpha1.ReasonResolutionFailed
		c.Message = fmt.Sprintf("could not resolve %d of %d %s (last digests kept): %s",
			len(failed), s.Images, plural(int(s.Images), "image"), joinCapped(failed, 3))
	}
	if s.Omitted > 0 {
		c.Message += fmt.Sprintf("; %d workload %s left out of status.images to keep the status small (counted in summary)",
			s.Omitted, plural(int(s.Omitted), "container"))
	}
	meta.SetStatusCondition(&status.Conditions, c)
}

// setDrifted: True with the most urgent reason when any selected container
// runs something other than what its tag or pin means.
func setDrifted(status *imagesv1alpha1.ImagePinStatus, generation int64) {
	c := metav1.Condition{Type: imagesv1alpha1.ConditionDrifted, ObservedGeneration: generation}
	var lines []string
	found := map[imagesv1alpha1.DriftReason]bool{}
	driftedImages := 0
	for _, img := range status.Images {
		var parts []string
		for _, w := range img.Workloads {
			if !drift.Drifted(w.Drift) {
				continue
			}
			var rs []string
			for _, r := range w.Drift {
				if r != imagesv1alpha1.DriftUnpinned {
					found[r] = true
					rs = append(rs, string(r))
				}
			}
			where := fmt.Sprintf("%s %s/%s", w.Kind, w.Name, slot(w.Template, w.Container, false))
			if w.Namespace != "" {
				where = w.Namespace + ": " + where
			}
			parts = append(parts, fmt.Sprintf("%s: %s", where, strings.Join(rs, ", ")))
		}
		if len(parts) > 0 {
			driftedImages++
			lines = append(lines, fmt.Sprintf("%s (%s)", img.Image, joinCapped(parts, 2)))
		}
	}
	if status.Summary.Drifted == 0 {
		c.Status, c.Reason = metav1.ConditionFalse, imagesv1alpha1.ReasonNoDrift
		c.Message = "every selected container runs what its tag or pin means"
		if unpinned := countUnpinned(status); unpinned > 0 {
			c.Message += fmt.Sprintf(" (%d by tag only: Unpinned)", unpinned)
		}
	} else {
		c.Status = metav1.ConditionTrue
		for _, r := range driftPriority {
			if found[r] {
				c.Reason = string(r)
				break
			}
		}
		if c.Reason == "" {
			// Every drifted entry was left out of status.images.
			c.Reason = string(imagesv1alpha1.DriftTagMoved)
			c.Message = fmt.Sprintf("%d workload %s drifted, none of them in status.images (left out to keep the status small)",
				status.Summary.Drifted, plural(int(status.Summary.Drifted), "container"))
		} else {
			c.Message = fmt.Sprintf("%d of %d %s drifted: %s", driftedImages, status.Summary.Images, plural(int(status.Summary.Images), "image"), joinCapped(lines, 3))
		}
	}
	meta.SetStatusCondition(&status.Conditions, c)
}

func countUnpinned(status *imagesv1alpha1.ImagePinStatus) int {
	n := 0
	for _, img := range status.Images {
		for _, w := range img.Workloads {
			if slices.Contains(w.Drift, imagesv1alpha1.DriftUnpinned) {
				n++
			}
		}
	}
	return n
}

// joinCapped joins the first n items and says how many more there are.
func joinCapped(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, "; ")
	}
	return fmt.Sprintf("%s; and %d more", strings.Join(items[:n], "; "), len(items)-n)
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
