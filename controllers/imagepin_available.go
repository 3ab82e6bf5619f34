package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
)

// Whether the registry still has the digests a backout needs: once a tag
// is pushed again, its old digest is untagged, and the registry's garbage
// collection deletes it. A rollback override to it would then break the
// workload (ErrImagePull), and a digest pods run but the registry no
// longer has breaks the next scale-up or drain. Every digest running,
// pinned, overridden or in history is checked with a HEAD by digest, on
// spec.retention.checkInterval's tick grid while present, and with each
// check while gone. An override's digest not yet written is asked about
// afresh by each check: it is checked right before it is written, not
// hours before (the registry's garbage collection may have run since).

// digestOf names one digest of one image (as status.images names it).
type digestOf struct{ image, digest string }

// availability is what the registry said of the digests a check needed;
// a digest it could not ask about is absent.
type availability map[digestOf]registry.Availability

// gone reports whether the registry said it no longer has digest.
func (a availability) gone(image, digest string) bool {
	v, ok := a[digestOf{image, digest}]
	return ok && !v.Available
}

// checkAvailability gives obs what is known of every digest obs's
// containers run or pin, the overrides of their images and the digests of
// their images' history in prev. The digest a tag resolved to in this
// check is present: it costs no request.
//
// A check does not wait for the registry: it takes the last verdicts, and
// a digest whose verdict is due again (or was never had) is asked about in
// the background; when an answer differs from what the check took, the
// ImagePin key is checked again. A blackholed registry so delays no
// status. The exception is an override not yet written: its digest is
// asked about afresh, and waited for, before it is written.
func (r *ImagePinReconciler) checkAvailability(ctx context.Context, key types.NamespacedName, obs *observation, prev []imagesv1alpha1.ImageStatus, sel *selection.Selection, now time.Time) {
	history := map[string][]imagesv1alpha1.DigestRecord{}
	for _, img := range prev {
		history[img.Image] = img.History
	}
	type ask struct {
		digestOf
		keychain authn.Keychain
		// beforeWrite: asked afresh, not on the retention tick: an
		// override about to be written.
		beforeWrite bool
	}
	var asks []ask
	known := availability{}
	queuedAt := map[digestOf]int{}
	add := func(image, digest string, kc authn.Keychain, beforeWrite bool) {
		k := digestOf{image, digest}
		if digest == "" {
			return
		}
		if _, ok := known[k]; ok {
			return
		}
		if i, ok := queuedAt[k]; ok {
			asks[i].beforeWrite = asks[i].beforeWrite || beforeWrite
			return
		}
		queuedAt[k] = len(asks)
		asks = append(asks, ask{k, kc, beforeWrite})
	}
	for _, c := range obs.containers {
		if c.err == nil && c.result.Digest != "" && !c.result.Behind {
			// The tag answered with it: present when asked.
			known[digestOf{c.image, c.result.Digest}] = registry.Availability{Available: true, CheckedAt: c.result.ResolvedAt}
		}
	}
	for _, c := range obs.containers {
		add(c.image, c.pinned, c.keychain, false)
		for _, run := range c.running {
			add(c.image, string(run.Digest), c.keychain, false)
		}
		// An override not yet written everywhere is checked before it is.
		o := sel.Override(c.image)
		add(c.image, o, c.keychain, o != c.pinned)
		for _, h := range history[c.image] {
			add(c.image, string(h.Digest), c.keychain, false)
		}
	}

	// A present digest is due on the retention tick, a gone one each
	// check (it may be pushed back), an override before it is written.
	present, gone := tickStart(now, sel.RetentionCheck), tickStart(now, sel.Interval)
	var wait, later []registry.AvailabilityRequest
	var waitFor, laterFor []digestOf
	for _, a := range asks {
		req := registry.AvailabilityRequest{Image: a.image, Digest: a.digest, Keychain: a.keychain, FreshSince: present}
		if a.beforeWrite {
			req.FreshSince = now
		}
		v, fresh, ok := r.Resolver.CachedAvailability(ctx, req)
		if ok {
			known[a.digestOf] = v
			if !v.Available && !a.beforeWrite {
				req.FreshSince = gone
				fresh = !v.CheckedAt.Before(gone)
			}
		}
		switch {
		case ok && fresh:
		case a.beforeWrite:
			wait, waitFor = append(wait, req), append(waitFor, a.digestOf)
		default:
			later, laterFor = append(later, req), append(laterFor, a.digestOf)
		}
	}
	answers := r.askAvailability(ctx, wait)
	for i, v := range answers {
		if v != nil {
			known[waitFor[i]] = *v
		}
	}
	obs.available = known
	if len(later) == 0 {
		return
	}
	took := make([]*registry.Availability, len(later))
	for i, d := range laterFor {
		if v, ok := known[d]; ok {
			took[i] = &v
		}
	}
	logger := log.FromContext(ctx)
	go func() {
		// The check's context ends with it; the answers are the
		// resolver's to bound (its timeout).
		answers := r.askAvailability(context.WithoutCancel(ctx), later)
		for i, v := range answers {
			if v != nil && (took[i] == nil || took[i].Available != v.Available) {
				logger.V(1).Info("digest availability changed: checking again", "image", laterFor[i].image, "digest", laterFor[i].digest, "available", v.Available)
				r.queueCheck(key)
				return
			}
		}
	}()
}

// askAvailability asks about each of reqs, a few at a time; an answer is
// nil when the registry gave none.
func (r *ImagePinReconciler) askAvailability(ctx context.Context, reqs []registry.AvailabilityRequest) []*registry.Availability {
	out := make([]*registry.Availability, len(reqs))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(resolveWorkers, len(reqs)) {
		wg.Go(func() {
			for i := range next {
				v, err := r.Resolver.Available(ctx, reqs[i])
				if err != nil {
					log.FromContext(ctx).V(1).Info("digest availability unknown", "image", reqs[i].Image, "digest", reqs[i].Digest, "reason", err.Error())
					continue
				}
				out[i] = &v
			}
		})
	}
	for i := range reqs {
		next <- i
	}
	close(next)
	wg.Wait()
	return out
}

// unavailable counts the distinct digests a's answers say are gone.
func (a availability) unavailable() int {
	n := 0
	for _, v := range a {
		if !v.Available {
			n++
		}
	}
	return n
}

// goneOf lists c's pinned and running digests a's answers say are gone.
func goneOf(c containerObs, a availability) []string {
	var out []string
	if a.gone(c.image, c.pinned) {
		out = append(out, c.pinned)
	}
	for _, run := range c.running {
		if d := string(run.Digest); d != c.pinned && a.gone(c.image, d) {
			out = append(out, d)
		}
	}
	return out
}

// setOverridesGone turns Ready False when an override names a digest the
// registry no longer has: it is not written, and the field is named.
func setOverridesGone(status *imagesv1alpha1.ImagePinStatus, generation int64, overrides []imagesv1alpha1.ImageOverride, a availability) {
	var gone []string
	for i, o := range overrides {
		if a.gone(selection.ImageKey(o.Image), string(o.Digest)) {
			gone = append(gone, fmt.Sprintf("spec.overrides[%d].digest %s of %s", i, o.Digest, o.Image))
		}
	}
	if len(gone) == 0 {
		return
	}
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type: imagesv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: imagesv1alpha1.ReasonOverrideDigestGone,
		ObservedGeneration: generation,
		Message: fmt.Sprintf("the registry no longer has %s: not written, the workloads run what they run; choose a digest whose status.images[].history entry is available",
			joinCapped(gone, 3)),
	})
}

// setRollbackReady says whether every digest of history is still in the
// registry: a rollback to any of them can be written.
func setRollbackReady(status *imagesv1alpha1.ImagePinStatus, generation int64) {
	var gone []string
	unknown := 0
	for _, img := range status.Images {
		for _, h := range img.History {
			switch {
			case h.Available == nil:
				unknown++
			case !*h.Available:
				gone = append(gone, img.Image+"@"+string(h.Digest))
			}
		}
	}
	c := metav1.Condition{Type: imagesv1alpha1.ConditionRollbackReady, ObservedGeneration: generation}
	switch {
	case len(gone) > 0:
		c.Status, c.Reason = metav1.ConditionFalse, imagesv1alpha1.ReasonDigestsGone
		c.Message = fmt.Sprintf("the registry no longer has %d %s of history (garbage collected), and a rollback override to one is not written: %s",
			len(gone), plural(len(gone), "digest"), joinCapped(gone, 3))
	case unknown > 0:
		c.Status, c.Reason = metav1.ConditionUnknown, imagesv1alpha1.ReasonAvailabilityUnknown
		c.Message = fmt.Sprintf("%d %s of history not checked yet, or the registry did not answer", unknown, plural(unknown, "digest"))
	default:
		c.Status, c.Reason = metav1.ConditionTrue, imagesv1alpha1.ReasonDigestsAvailable
		c.Message = "the registry has every digest of history"
	}
	meta.SetStatusCondition(&status.Conditions, c)
}
