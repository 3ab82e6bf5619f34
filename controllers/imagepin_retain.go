package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/workload"
)

// Retention (spec.retention.protect): checking that the digests a backout
// needs are still in the registry (imagepin_available.go) says when it is
// too late; protect keeps them there. Each digest the selected containers
// run or pin, and the newest keepLast digests of each image's history,
// gets a keep tag of its own (registry.KeepTagOf), which the registry's
// garbage collection of untagged manifests spares. status.keepTags is the
// record of the tags this ImagePin relies on, and of which it pushed: a
// tag is deleted once nothing needs it, only by the ImagePin that pushed
// it, and only when no other ImagePin relies on it.

// keepWant is one digest to keep in one repository, and the credentials
// to keep it with.
type keepWant struct {
	repo, digest string
	keychain     authn.Keychain
}

// retain pushes the keep tags pin needs and deletes those it no longer
// needs, recording both in status.keepTags, and sets the Retained
// condition. Nothing is pushed without spec.retention.protect; with it
// off, the tags pin pushed are deleted. A tag is checked (one HEAD) once
// per retention check interval; a failure is retried on the interval's
// tick, or at once with retryNow (a deleted ImagePin's last chances).
func (r *ImagePinReconciler) retain(ctx context.Context, pin *imagesv1alpha1.ImagePin, sel *selection.Selection, obs observation, status *imagesv1alpha1.ImagePinStatus, now time.Time, retryNow bool) {
	key := client.ObjectKeyFromObject(pin)
	if !sel.Protect && len(status.KeepTags) == 0 {
		r.claims.set(key, nil)
		meta.RemoveStatusCondition(&status.Conditions, imagesv1alpha1.ConditionRetained)
		if pin.DeletionTimestamp.IsZero() {
			if err := r.dropFinalizer(ctx, pin); err != nil {
				log.FromContext(ctx).Info("finalizer not removed", "finalizer", keepTagsFinalizer, "reason", err.Error())
			}
		}
		return
	}
	retry := func(digest string) time.Time {
		if retryNow {
			return now
		}
		return digestTick(now, sel.Interval, digest)
	}
	var pushKeychain authn.Keychain
	var secretErr error
	if sel.PushSecret != "" {
		pushKeychain, secretErr = r.Keychains.ForSecret(ctx, pin.Namespace, sel.PushSecret)
	}
	keychainOf := func(kc authn.Keychain) authn.Keychain {
		if sel.PushSecret != "" {
			return pushKeychain
		}
		return kc
	}

	var wants []keepWant
	wanted := map[digestOf]bool{}
	if sel.Protect {
		wants, wanted = keepWants(sel, obs, status.Images)
	}
	// Claimed before any Keep: an Unkeep of another ImagePin, in this
	// manager, sees the claim, or its DELETE is done before the Keep.
	r.claims.set(key, wanted)
	var failures []error
	fail := func(err error) { failures = append(failures, err) }
	if secretErr != nil {
		fail(fmt.Errorf("spec.retention.pushSecretRef: %w", secretErr))
	}

	records := map[digestOf]int{}
	for i, k := range status.KeepTags {
		records[digestOf{repositoryOf(k.Image), string(k.Digest)}] = i
		if wanted[digestOf{repositoryOf(k.Image), string(k.Digest)}] {
			// Needed again, whether or not its Keep succeeds below.
			status.KeepTags[i].Released = false
		}
	}
	var pushed, deleted, undeletable []string
	if secretErr == nil && len(wants) > 0 {
		// The finalizer first: a tag pushed is deleted with the ImagePin.
		if err := r.ensureFinalizer(ctx, pin); err != nil {
			fail(err)
			wants = nil
		}
	}
	if secretErr == nil {
		var room []keepWant
		over, fresh := 0, 0
		for _, w := range wants {
			_, recorded := records[digestOf{w.repo, w.digest}]
			switch {
			case recorded:
			case len(status.KeepTags)+fresh < maxKeepTags:
				fresh++
			default:
				over++
				continue
			}
			room = append(room, w)
		}
		if over > 0 {
			fail(fmt.Errorf("%d more %s to keep than the %d keep tags status.keepTags holds: not kept; select fewer images or lower spec.retention.keepLast", over, plural(over, "digest"), maxKeepTags))
		}
		results := r.keepAll(ctx, room, func(w keepWant) registry.KeepRequest {
			return registry.KeepRequest{Image: w.repo, Digest: w.digest, Keychain: keychainOf(w.keychain), Owner: key.String(),
				FreshSince: digestTick(now, sel.RetentionCheck, w.digest), RetrySince: retry(w.digest)}
		})
		for i, w := range room {
			created, err := results[i].created, results[i].err
			if err != nil {
				fail(err)
				continue
			}
			d := digestOf{w.repo, w.digest}
			if i, ok := records[d]; ok {
				// A tag found in place and gone since is pin's once
				// pushed.
				status.KeepTags[i].Pushed = status.KeepTags[i].Pushed || created
				continue
			}
			if created {
				pushed = append(pushed, w.repo+":"+registry.KeepTagOf(w.digest))
			}
			records[d] = len(status.KeepTags)
			status.KeepTags = append(status.KeepTags, imagesv1alpha1.KeepTag{
				Image: w.repo, Tag: registry.KeepTagOf(w.digest), Digest: imagesv1alpha1.Digest(w.digest),
				CreatedAt: metav1.NewTime(now), Pushed: created,
			})
		}
	}

	// Let go of what is no longer wanted: a tag pin found in place is not
	// its to delete; one it pushed is deleted once no other ImagePin needs
	// it. One another ImagePin records is handed over to it (its record
	// says pushed from then on, so that it deletes the tag when it lets go
	// in turn); meanwhile, and while another only claims it, the record
	// stays, released.
	var others map[digestOf]*imagesv1alpha1.ImagePin
	othersKnown := true
	kept := status.KeepTags[:0:0]
	for _, k := range status.KeepTags {
		d := digestOf{repositoryOf(k.Image), string(k.Digest)}
		if wanted[d] {
			kept = append(kept, k)
			continue
		}
		if !k.Pushed {
			continue
		}
		k.Released = true
		if others == nil {
			others, othersKnown = r.keepTagsOfOthers(ctx, pin)
		}
		if other := others[d]; other != nil {
			if err := r.handOver(ctx, other, d); err != nil {
				log.FromContext(ctx).Info("keep tag not handed over yet", "tag", k.Image+":"+k.Tag, "to", other.Namespace+"/"+other.Name, "reason", err.Error())
				kept = append(kept, k)
			}
			continue
		}
		if secretErr != nil || !othersKnown || r.claims.byOthers(key, d) {
			// Claimed by another ImagePin not recorded yet, or the others
			// or the credentials could not be read: next check.
			kept = append(kept, k)
			continue
		}
		req := registry.KeepRequest{Image: k.Image, Digest: string(k.Digest), Keychain: keychainOf(r.keychainFor(ctx, pin.Namespace, obs, k.Image)),
			Owner: key.String(), RetrySince: retry(string(k.Digest))}
		stillWanted := false
		ok, err := r.Resolver.Unkeep(ctx, req, func() bool {
			stillWanted = r.claims.byOthers(key, d)
			return stillWanted
		})
		switch {
		case errors.Is(err, registry.ErrDeleteUnsupported):
			undeletable = append(undeletable, k.Image+":"+k.Tag)
		case err != nil:
			fail(err)
			kept = append(kept, k)
		case stillWanted:
			kept = append(kept, k)
		case ok:
			deleted = append(deleted, k.Image+":"+k.Tag)
		}
	}
	if len(kept) == 0 {
		kept = nil
	}
	status.KeepTags = kept
	if len(pushed) > 0 {
		r.eventAfterWrite(pin, corev1.EventTypeNormal, EventKeepTagsPushed,
			fmt.Sprintf("pushed %d keep %s, so that garbage collection spares what a backout needs: %s", len(pushed), plural(len(pushed), "tag"), joinCapped(pushed, 3)))
	}
	if len(deleted) > 0 {
		r.eventAfterWrite(pin, corev1.EventTypeNormal, EventKeepTagsDeleted,
			fmt.Sprintf("deleted %d keep %s no longer needed: %s", len(deleted), plural(len(deleted), "tag"), joinCapped(deleted, 3)))
	}
	if len(undeletable) > 0 {
		r.eventAfterWrite(pin, corev1.EventTypeWarning, EventKeepTagsLeft,
			fmt.Sprintf("the registry does not delete tags through its API: %d keep %s no longer needed %s left for you to delete by the registry's own means: %s",
				len(undeletable), plural(len(undeletable), "tag"), plural(len(undeletable), "is"), joinCapped(undeletable, 5)))
	}
	for _, err := range failures {
		log.FromContext(ctx).Info("keep tag not in place", "reason", err.Error())
	}
	setRetained(status, pin.Generation, sel.Protect, len(wants), failures)
}

// keepWants lists the digests pin keeps: every digest the containers run
// or pin, their images' overrides, and the newest keepLast digests of
// each image's history; wanted has them all, by repository. A digest the
// registry said is gone is not asked to be kept, but stays wanted: its
// tag, if it has one, is not deleted on a verdict that may be wrong (a
// 404 to the pull credentials).
func keepWants(sel *selection.Selection, obs observation, images []imagesv1alpha1.ImageStatus) ([]keepWant, map[digestOf]bool) {
	var out []keepWant
	wanted := map[digestOf]bool{}
	add := func(image, digest string, kc authn.Keychain) {
		d := digestOf{repositoryOf(image), digest}
		if digest == "" || wanted[d] {
			return
		}
		wanted[d] = true
		if !obs.available.gone(image, digest) {
			out = append(out, keepWant{d.image, digest, kc})
		}
	}
	keychains := map[string]authn.Keychain{}
	for _, c := range obs.containers {
		if _, ok := keychains[c.image]; !ok {
			keychains[c.image] = c.keychain
		}
		add(c.image, c.pinned, c.keychain)
		for _, run := range c.running {
			add(c.image, string(run.Digest), c.keychain)
		}
		add(c.image, sel.Override(c.image), c.keychain)
	}
	for _, img := range images {
		kc, ok := keychains[img.Image]
		if !ok {
			continue // no container names it any more
		}
		for i, h := range img.History {
			if i >= sel.KeepLast {
				break
			}
			add(img.Image, string(h.Digest), kc)
		}
	}
	return out, wanted
}

// keepResult is what Keep said of one keepWant.
type keepResult struct {
	created bool
	err     error
}

// keepAll asks for every want to be kept, a few at a time: a slow
// registry costs one timeout per batch, not one per digest.
func (r *ImagePinReconciler) keepAll(ctx context.Context, wants []keepWant, request func(keepWant) registry.KeepRequest) []keepResult {
	out := make([]keepResult, len(wants))
	inParallel(len(wants), func(i int) {
		out[i].created, out[i].err = r.Resolver.Keep(ctx, request(wants[i]))
	})
	return out
}

// keepClaims is what the ImagePins this manager checks want kept, as
// their last check found: an Unkeep of one ImagePin's tag is not made
// while another claims it, even before that one's status records it.
type keepClaims struct {
	mu sync.Mutex
	by map[types.NamespacedName]map[digestOf]bool
}

// set records what pin wants kept (nil: nothing).
func (c *keepClaims) set(pin types.NamespacedName, wanted map[digestOf]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(wanted) == 0 {
		delete(c.by, pin)
		return
	}
	if c.by == nil {
		c.by = map[types.NamespacedName]map[digestOf]bool{}
	}
	c.by[pin] = wanted
}

// byOthers says whether an ImagePin other than pin wants d kept.
func (c *keepClaims) byOthers(pin types.NamespacedName, d digestOf) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for p, wanted := range c.by {
		if p != pin && wanted[d] {
			return true
		}
	}
	return false
}

// keychainFor is the credentials of the first container naming an image
// of repo; when none does any more (its workload is gone), those of the
// namespace's default ServiceAccount.
func (r *ImagePinReconciler) keychainFor(ctx context.Context, namespace string, obs observation, repo string) authn.Keychain {
	for _, c := range obs.containers {
		if repositoryOf(c.image) == repo {
			return c.keychain
		}
	}
	kc, err := r.Keychains.ForPod(ctx, namespace, &corev1.PodSpec{})
	if err != nil {
		return authn.NewMultiKeychain() // anonymous: a refusal says so
	}
	return kc
}

// maxKeepTags is how many keep tags status.keepTags holds (its MaxItems).
const maxKeepTags = 512

// keepTagsOfOthers maps each keep tag an ImagePin other than pin relies
// on, as its status records it, to that ImagePin, read from the API
// server (not the cache, which may not have another's latest record yet);
// known is false when they could not be read. A released record is not
// relied on: it waits for the tag to be free to delete.
func (r *ImagePinReconciler) keepTagsOfOthers(ctx context.Context, pin *imagesv1alpha1.ImagePin) (relied map[digestOf]*imagesv1alpha1.ImagePin, known bool) {
	out := map[digestOf]*imagesv1alpha1.ImagePin{}
	var pins imagesv1alpha1.ImagePinList
	reader := r.APIReader
	if reader == nil {
		reader = r.Client
	}
	if err := reader.List(ctx, &pins); err != nil {
		log.FromContext(ctx).Info("keep tags not deleted: cannot list ImagePins", "reason", err.Error())
		return out, false
	}
	for i := range pins.Items {
		p := &pins.Items[i]
		if p.UID == pin.UID || !p.DeletionTimestamp.IsZero() {
			continue
		}
		for _, k := range p.Status.KeepTags {
			if !k.Released {
				out[digestOf{repositoryOf(k.Image), string(k.Digest)}] = p
			}
		}
	}
	return out, true
}

// handOver makes other, which relies on the keep tag of d, its pusher:
// its record says pushed from now on, so that it deletes the tag once it
// no longer needs it. Written only over the status read (a conflict is an
// error, and the hand-over is tried again).
func (r *ImagePinReconciler) handOver(ctx context.Context, other *imagesv1alpha1.ImagePin, d digestOf) error {
	before := other.DeepCopy()
	for i, k := range other.Status.KeepTags {
		if repositoryOf(k.Image) == d.image && string(k.Digest) == d.digest {
			other.Status.KeepTags[i].Pushed = true
		}
	}
	return r.Status().Patch(ctx, other, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
}

// repositoryOf is the repository of image, named in full (nginx is
// index.docker.io/library/nginx), so that one repository named two ways
// is one.
func repositoryOf(image string) string {
	if ref, err := name.ParseReference(image, name.WeakValidation); err == nil {
		return ref.Context().Name()
	}
	image, _, _ = strings.Cut(image, "@")
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[:i]
	}
	return image
}

// setRetained says whether every digest to keep has its keep tag, and
// why not.
func setRetained(status *imagesv1alpha1.ImagePinStatus, generation int64, protect bool, wanted int, failures []error) {
	if !protect && len(status.KeepTags) == 0 && len(failures) == 0 {
		meta.RemoveStatusCondition(&status.Conditions, imagesv1alpha1.ConditionRetained)
		return
	}
	c := metav1.Condition{Type: imagesv1alpha1.ConditionRetained, ObservedGeneration: generation}
	msgs := make([]string, 0, len(failures))
	refused := false
	for _, err := range failures {
		refused = refused || errors.Is(err, registry.ErrPushRefused)
		msgs = append(msgs, err.Error())
	}
	slices.Sort(msgs)
	switch {
	case refused:
		c.Status, c.Reason = metav1.ConditionFalse, imagesv1alpha1.ReasonPushRefused
		c.Message = fmt.Sprintf("the registry refused to push or delete keep tags with these credentials; give spec.retention.pushSecretRef a Secret that may push: %s", joinCapped(msgs, 2))
	case len(failures) > 0:
		c.Status, c.Reason = metav1.ConditionFalse, imagesv1alpha1.ReasonRetentionFailed
		c.Message = fmt.Sprintf("%d keep %s not in place: %s", len(failures), plural(len(failures), "tag"), joinCapped(msgs, 2))
	case protect:
		c.Status, c.Reason = metav1.ConditionTrue, imagesv1alpha1.ReasonDigestsKept
		c.Message = fmt.Sprintf("%d %s kept by a tag %s<digest>: garbage collection of untagged manifests spares them", wanted, plural(wanted, "digest"), imagesv1alpha1.KeepTagPrefix)
	default:
		c.Status, c.Reason = metav1.ConditionTrue, imagesv1alpha1.ReasonDigestsKept
		c.Message = fmt.Sprintf("spec.retention.protect is off: %d keep %s still to delete", len(status.KeepTags), plural(len(status.KeepTags), "tag"))
	}
	meta.SetStatusCondition(&status.Conditions, c)
}

// keepTagsFinalizer holds a deleted ImagePin until the keep tags it
// pushed are deleted. It is added before the first tag is pushed, and
// removed once none is left, or keepTagsGiveUp after the deletion: a
// namespace being deleted may have lost the credentials already, and must
// not be held for ever for a tag.
const keepTagsFinalizer = "images.imagepin.dev/keep-tags"

// keepTagsGiveUp is how long a deleted ImagePin is held for its keep
// tags; keepTagsRetry how often it tries meanwhile.
const (
	keepTagsGiveUp = 5 * time.Minute
	keepTagsRetry  = 30 * time.Second
)

// ensureFinalizer adds keepTagsFinalizer to pin, if missing.
func (r *ImagePinReconciler) ensureFinalizer(ctx context.Context, pin *imagesv1alpha1.ImagePin) error {
	if controllerutil.ContainsFinalizer(pin, keepTagsFinalizer) {
		return nil
	}
	before := pin.DeepCopy()
	controllerutil.AddFinalizer(pin, keepTagsFinalizer)
	if err := r.Patch(ctx, pin, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("add finalizer %s (to delete the keep tags with the ImagePin): %w", keepTagsFinalizer, err)
	}
	return nil
}

// dropFinalizer removes keepTagsFinalizer from pin, if there.
func (r *ImagePinReconciler) dropFinalizer(ctx context.Context, pin *imagesv1alpha1.ImagePin) error {
	if !controllerutil.ContainsFinalizer(pin, keepTagsFinalizer) {
		return nil
	}
	before := pin.DeepCopy()
	controllerutil.RemoveFinalizer(pin, keepTagsFinalizer)
	return r.Patch(ctx, pin, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
}

// finalize deletes the keep tags a deleted pin pushed, with the
// credentials of the workloads it selects (or its pushSecretRef), then
// lets it go; what could not be deleted by keepTagsGiveUp is named in a
// Warning event and left in the registry.
func (r *ImagePinReconciler) finalize(ctx context.Context, pin *imagesv1alpha1.ImagePin) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(pin, keepTagsFinalizer) {
		return ctrl.Result{}, nil
	}
	sel, err := selection.Compile(&pin.Spec)
	if err != nil {
		sel = &selection.Selection{Interval: selection.DefaultInterval, RetentionCheck: selection.DefaultRetentionCheck}
		if rs := pin.Spec.Retention; rs != nil && rs.PushSecretRef != nil {
			sel.PushSecret = rs.PushSecretRef.Name
		}
	}
	letGo := *sel
	letGo.Protect = false
	held := r.Clock.Since(pin.DeletionTimestamp.Time)
	giveUp := held >= keepTagsGiveUp
	obs, err := r.credentialsOfWorkloads(ctx, pin, sel)
	if err != nil && !giveUp {
		return ctrl.Result{}, err
	}
	status := pin.Status.DeepCopy()
	r.retain(ctx, pin, &letGo, obs, status, r.Clock.Now(), true)
	left := slices.ContainsFunc(status.KeepTags, func(k imagesv1alpha1.KeepTag) bool { return k.Pushed })
	if left && !giveUp {
		if err := r.patchStatus(ctx, pin, status); err != nil {
			r.flushEvents(pin, false)
			return ctrl.Result{}, err
		}
		r.flushEvents(pin, true)
		return ctrl.Result{RequeueAfter: min(keepTagsRetry, keepTagsGiveUp-held)}, nil
	}
	r.flushEvents(pin, true)
	if left {
		var tags []string
		for _, k := range status.KeepTags {
			if k.Pushed {
				tags = append(tags, k.Image+":"+k.Tag)
			}
		}
		r.claims.set(client.ObjectKeyFromObject(pin), nil)
		r.event(pin, corev1.EventTypeWarning, EventKeepTagsLeft,
			fmt.Sprintf("the ImagePin is deleted and %d keep %s could not be deleted within %s; they stay in the registry: %s",
				len(tags), plural(len(tags), "tag"), keepTagsGiveUp, joinCapped(tags, 5)))
	}
	return ctrl.Result{}, client.IgnoreNotFound(r.dropFinalizer(ctx, pin))
}

// credentialsOfWorkloads is an observation of the containers pin selects
// with their credentials only: nothing is resolved.
func (r *ImagePinReconciler) credentialsOfWorkloads(ctx context.Context, pin *imagesv1alpha1.ImagePin, sel *selection.Selection) (observation, error) {
	var obs observation
	workloads, err := workload.List(ctx, r.Client, pin.Namespace, r.servedKinds(sel.Kinds()), sel.Labels())
	if err != nil {
		return obs, err
	}
	for _, w := range workloads {
		for _, t := range w.Templates {
			kc, err := r.Keychains.ForPod(ctx, pin.Namespace, t.Spec)
			if err != nil {
				return obs, err
			}
			for _, c := range append(slices.Clone(t.Spec.InitContainers), t.Spec.Containers...) {
				obs.containers = append(obs.containers, containerObs{image: selection.ImageKey(c.Image), keychain: kc})
			}
		}
	}
	return obs, nil
}

// pendingEvents are events about what a check did, told once its status
// is stored: a check whose write conflicts is retried, and would tell
// them again.
type pendingEvents struct {
	mu sync.Mutex
	by map[types.NamespacedName][]pendingEvent
}

type pendingEvent struct{ kind, reason, note string }

// eventAfterWrite is event, told by flushEvents once pin's status is
// stored.
func (r *ImagePinReconciler) eventAfterWrite(pin *imagesv1alpha1.ImagePin, kind, reason, note string) {
	r.pending.mu.Lock()
	defer r.pending.mu.Unlock()
	if r.pending.by == nil {
		r.pending.by = map[types.NamespacedName][]pendingEvent{}
	}
	key := client.ObjectKeyFromObject(pin)
	r.pending.by[key] = append(r.pending.by[key], pendingEvent{kind, reason, note})
}

// flushEvents tells pin's pending events (stored) or drops them.
func (r *ImagePinReconciler) flushEvents(pin *imagesv1alpha1.ImagePin, stored bool) {
	r.pending.mu.Lock()
	key := client.ObjectKeyFromObject(pin)
	evs := r.pending.by[key]
	delete(r.pending.by, key)
	r.pending.mu.Unlock()
	if !stored {
		return
	}
	for _, e := range evs {
		r.event(pin, e.kind, e.reason, e.note)
	}
}
