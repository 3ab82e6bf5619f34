package controllers

import (
	"context"
	"fmt"
	"hash/fnv"
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
// check is present: it costs no request. A verdict the resolver no longer
// holds (a restarted manager) is taken from prev's history meanwhile.
//
// A check does not wait for the registry: it takes the last verdicts, and
// a digest whose verdict is due again (or was never had) is asked about in
// the background; when an answer says a digest is gone, or back, the
// ImagePin key is checked again (one found present is recorded by the
// next check: at a cold start, a check again per ImagePin would ask its
// tags again after a tick). A blackholed registry so delays no status.
// The exception is an override this check would write: its digest is
// asked about afresh, and waited for, before it is written.
func (r *ImagePinReconciler) checkAvailability(ctx context.Context, key types.NamespacedName, mode imagesv1alpha1.Mode, obs *observation, prev []imagesv1alpha1.ImageStatus, sel *selection.Selection, now time.Time) {
	recorded := availability{}
	history := map[string][]imagesv1alpha1.DigestRecord{}
	for _, img := range prev {
		history[img.Image] = img.History
		for _, h := range img.History {
			if h.Available != nil && h.CheckedAt != nil {
				recorded[digestOf{img.Image, string(h.Digest)}] = registry.Availability{Available: *h.Available, CheckedAt: h.CheckedAt.Time}
			}
		}
	}
	type ask struct {
		digestOf
		keychain authn.Keychain
		// beforeWrite: an override this check would write, asked about
		// afresh.
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
		if c.result.Digest != "" && !c.result.ResolvedAt.IsZero() {
			// The tag answered with it: present when asked (this tick's
			// answer, or the last good one while it is behind or fails).
			known[digestOf{c.image, c.result.Digest}] = registry.Availability{Available: true, CheckedAt: c.result.ResolvedAt}
		}
	}
	writes := mode == imagesv1alpha1.ModePin || mode == imagesv1alpha1.ModeFollow
	for _, c := range obs.containers {
		add(c.image, c.pinned, c.keychain, false)
		for _, run := range c.running {
			add(c.image, string(run.Digest), c.keychain, false)
		}
		// An override this check would write is checked before it is.
		o := sel.Override(c.image)
		add(c.image, o, c.keychain, writes && o != "" && o != c.pinned && templateMutable(c.kind) && c.mayWrite(obs.verifying, o))
		for _, h := range history[c.image] {
			add(c.image, string(h.Digest), c.keychain, false)
		}
	}

	var wait, later []registry.AvailabilityRequest
	var waitFor, laterFor []digestOf
	for _, a := range asks {
		// A present digest is due on the retention tick, a gone one each
		// interval's tick (it may be pushed back); each digest's ticks
		// are its own, so that a cluster's digests are not all asked
		// about at one instant.
		req := registry.AvailabilityRequest{Image: a.image, Digest: a.digest, Keychain: a.keychain}
		v, failedAt, ok := r.Resolver.CachedAvailability(ctx, req)
		if !ok {
			// A restarted manager: the verdict its status recorded, as
			// fresh as its checkedAt.
			v, ok = recorded[a.digestOf]
		}
		if ok {
			known[a.digestOf] = v
		}
		req.FreshSince = digestTick(now, sel.RetentionCheck, a.digest)
		if ok && !v.Available {
			// Gone: asked again on the interval's tick.
			req.FreshSince = digestTick(now, sel.Interval, a.digest)
		}
		due := registry.Due(v, failedAt, ok, req.FreshSince)
		if ok && v.Available && a.beforeWrite {
			// Present when last asked: asked again right before it is
			// written.
			req.FreshSince, due = now, true
		}
		switch {
		case !due:
		case a.beforeWrite:
			wait, waitFor = append(wait, req), append(waitFor, a.digestOf)
		default:
			later, laterFor = append(later, req), append(laterFor, a.digestOf)
		}
	}
	for i, v := range r.askAvailability(ctx, wait) {
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
	r.asking.Go(func() {
		// The check's context ends with it; the answers are the
		// resolver's to bound (its timeout).
		answers := r.askAvailability(context.WithoutCancel(ctx), later)
		for i, v := range answers {
			if v != nil && ((took[i] == nil && !v.Available) || (took[i] != nil && took[i].Available != v.Available)) {
				logger.V(1).Info("digest availability changed: checking again", "image", laterFor[i].image, "digest", laterFor[i].digest, "available", v.Available)
				r.queueCheck(key)
				return
			}
		}
	})
}

// digestTick is the start of the tick of interval that now falls in, on a
// grid offset by the digest: every digest is asked about once per
// interval, at its own moment.
func digestTick(now time.Time, interval time.Duration, digest string) time.Time {
	if interval <= 0 {
		return now
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(digest))
	offset := time.Duration(h.Sum64() % uint64(interval))
	return tickStart(now.Add(-offset), interval).Add(offset)
}

// askAvailability asks about each of reqs, a few at a time; an answer is
// nil when the registry gave none.
func (r *ImagePinReconciler) askAvailability(ctx context.Context, reqs []registry.AvailabilityRequest) []*registry.Availability {
	out := make([]*registry.Availability, len(reqs))
	inParallel(len(reqs), func(i int) {
		v, err := r.Resolver.Available(ctx, reqs[i])
		if err != nil {
			log.FromContext(ctx).V(1).Info("digest availability unknown", "image", reqs[i].Image, "digest", reqs[i].Digest, "reason", err.Error())
			return
		}
		out[i] = &v
	})
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

// goneOverrides names, as spec fields, the overrides whose digest the
// registry said it no longer has.
func goneOverrides(overrides []imagesv1alpha1.ImageOverride, a availability) []string {
	var gone []string
	for i, o := range overrides {
		if a.gone(selection.ImageKey(o.Image), string(o.Digest)) {
			gone = append(gone, fmt.Sprintf("spec.overrides[%d].digest %s of %s", i, o.Digest, o.Image))
		}
	}
	return gone
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
