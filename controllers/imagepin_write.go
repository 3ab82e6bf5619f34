package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/drift"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/workload"
)

// FieldManager is the field manager of every workload write.
const FieldManager = workload.FieldManager

// Write reasons, the reason label of imagepin_workload_writes_total and
// the events of writes.
const (
	writePin      = "Pin"
	writeFollow   = "Follow"
	writeOverride = "Override"
)

// place is where an image is in a workload: which container, init
// container or image volume of which pod template.
type place struct {
	// container names the container, or the image volume.
	container string
	// template names the pod template among the workload's, for a kind
	// with several; specPointer is its JSON pointer in the workload.
	template    string
	specPointer string
	init        bool
	// volume is true for an image volume.
	volume bool
	// index is the position in containers, initContainers or volumes.
	index int
}

// imageWrite is one container image to set.
type imageWrite struct {
	place
	from, to string
	// stored is the image as the workload stores it, which the write
	// tests before it replaces it.
	stored string
	reason string
}

// workloadWrite is every image to set in one workload.
type workloadWrite struct {
	kind   imagesv1alpha1.WorkloadKind
	name   string
	uid    types.UID
	writes []imageWrite
}

// planInput is what planWrites decides from, as plain values.
type planInput struct {
	mode      imagesv1alpha1.Mode
	minAge    time.Duration
	overrides map[string]string // image (digest removed) → digest
	now       time.Time
	obs       observation
	// history gives, per image, when its current digest was first seen.
	firstSeen map[string]time.Time
	platforms drift.Platforms
}

// overrideGone reports whether the digest an override holds image to is
// one the registry said it no longer has: it is not written (Ready says
// why), and the workload runs what it runs.
func (in planInput) overrideGone(image, digest string) bool {
	return in.obs.available.gone(image, digest)
}

// planWrites decides which container images to rewrite. It never writes a
// stale digest, leaves digest-only references and Jobs alone, and in Pin
// leaves a pinned image pinned whatever the tag does. followDue is the
// earliest time a Follow write waiting for follow.minAge falls due (zero
// when none waits), so that the check that makes it runs then, not a
// tick later: a push event plus minAge, not an interval.
func planWrites(in planInput) (plan []workloadWrite, followDue time.Time) {
	if in.mode != imagesv1alpha1.ModePin && in.mode != imagesv1alpha1.ModeFollow {
		return nil, time.Time{}
	}
	byWorkload := map[string]*workloadWrite{}
	var order []string
	for _, c := range in.obs.containers {
		w, ok, due := desiredImage(c, in)
		if !due.IsZero() && (followDue.IsZero() || due.Before(followDue)) {
			followDue = due
		}
		if !ok {
			continue
		}
		key := string(c.kind) + "/" + c.workload
		if byWorkload[key] == nil {
			byWorkload[key] = &workloadWrite{kind: c.kind, name: c.workload, uid: c.uid}
			order = append(order, key)
		}
		byWorkload[key].writes = append(byWorkload[key].writes, w)
	}
	sort.Strings(order)
	plan = make([]workloadWrite, 0, len(order))
	for _, k := range order {
		plan = append(plan, *byWorkload[k])
	}
	return plan, followDue
}

// desiredImage is the write c needs, if any; due is when a Follow write
// waiting for minAge falls due.
func desiredImage(c containerObs, in planInput) (w imageWrite, ok bool, due time.Time) {
	// A Job's pod template is immutable: it is reported, not patched.
	if !templateMutable(c.kind) {
		return imageWrite{}, false, time.Time{}
	}
	current := c.image
	if c.pinned != "" {
		current += "@" + c.pinned
	}
	write := func(digest, reason string) (imageWrite, bool, time.Time) {
		if !c.mayWrite(in.obs.verifying, digest) {
			// spec.verify: only a digest that verified is written; Follow
			// stays on what it runs (drift Unverified says why).
			return imageWrite{}, false, time.Time{}
		}
		to, err := selection.PinnedImage(c.image, digest)
		if err != nil {
			// Not a reference imagepin can pin (its resolution fails and
			// is reported as Unresolvable) or not a sha256 digest: never
			// write a broken image.
			return imageWrite{}, false, time.Time{}
		}
		if to == current {
			return imageWrite{}, false, time.Time{}
		}
		return imageWrite{place: c.place, from: current, stored: c.raw, to: to, reason: reason}, true, time.Time{}
	}
	if d, ok := in.overrides[c.image]; ok {
		if in.overrideGone(c.image, d) {
			return imageWrite{}, false, time.Time{}
		}
		return write(d, writeOverride)
	}
	// An answer given while this tick's was still on its way (Behind) is
	// reported, never written: the check that follows its answer writes.
	if !c.hasTag || c.err != nil || c.result.Digest == "" || c.result.Behind {
		return imageWrite{}, false, time.Time{}
	}
	resolved := c.result.Digest
	if c.pinned == "" {
		return write(resolved, writePin)
	}
	if in.mode != imagesv1alpha1.ModeFollow || drift.Same(resolved, c.pinned, in.platforms) {
		return imageWrite{}, false, time.Time{}
	}
	seen, known := in.firstSeen[c.image]
	if !known {
		return imageWrite{}, false, time.Time{}
	}
	if in.now.Sub(seen) < in.minAge {
		return imageWrite{}, false, seen.Add(in.minAge)
	}
	return write(resolved, writeFollow)
}

// applyWrites writes the planned images, skipping workloads another actor
// keeps reverting, and returns the workloads it stopped writing, each as
// "Kind/name by <managers> until <time>".
func (r *ImagePinReconciler) applyWrites(ctx context.Context, pin *imagesv1alpha1.ImagePin, plan []workloadWrite, obs observation) []string {
	now := r.Clock.Now()
	current := map[string]string{}
	generations := map[types.UID]int64{}
	live := map[types.UID]bool{}
	for _, c := range obs.containers {
		current[string(c.uid)+"/"+c.slot()] = c.raw
		generations[c.uid] = c.generation
		live[c.uid] = true
	}

	// The lock guards the table of ImagePins only: one ImagePin's state is
	// used by one check at a time (the work queue never hands one
	// ImagePin to two workers), so writes of other ImagePins never wait on
	// this one's API calls.
	r.conflictMu.Lock()
	states := r.conflictsOf(pin, live)
	r.conflictMu.Unlock()
	for _, w := range plan {
		st := states[w.uid]
		if st == nil {
			st = &conflictState{lastWritten: map[string]string{}}
			states[w.uid] = st
		}
		st.kind, st.name = w.kind, w.name
		if generations[w.uid] < st.wroteGeneration {
			continue // the cache has not seen imagepin's own write yet
		}
		containers := map[string]string{}
		for _, iw := range w.writes {
			containers[iw.slot()] = current[string(w.uid)+"/"+iw.slot()]
		}
		switch st.decide(containers, now, r.conflictBackoff()) {
		case stayBlocked:
			continue
		case nowBlocked:
			st.manager = r.otherManager(ctx, pin.Namespace, w)
			r.event(pin, corev1.EventTypeWarning, "Conflict", fmt.Sprintf("stopped writing %s %s until %s: its image was set back to the tag imagepin pinned (%d %s within %s, after %d %s before) by %s",
				w.kind, w.name, st.blockedUntil.UTC().Format(time.RFC3339), st.lastReverts, plural(st.lastReverts, "time"), r.conflictBackoff(), st.blocks-1, plural(st.blocks-1, "block"), st.manager))
			continue
		}
		gen, err := r.writeImages(ctx, pin.Namespace, w)
		if err != nil {
			if apierrors.IsNotFound(err) || apierrors.IsConflict(err) || (apierrors.IsInvalid(err) && !r.stillAsRead(ctx, pin.Namespace, w)) {
				// Deleted or changed since it was read: the change
				// triggers another check, which decides again.
				log.FromContext(ctx).V(1).Info("workload changed before the write; deciding again on the next check", "kind", w.kind, "workload", w.name, "reason", err.Error())
				continue
			}
			log.FromContext(ctx).Error(err, "write images", "kind", w.kind, "workload", w.name)
			r.event(pin, corev1.EventTypeWarning, "WriteFailed", fmt.Sprintf("%s %s: %v", w.kind, w.name, err))
			continue
		}
		st.wroteGeneration = gen
		for _, iw := range w.writes {
			st.lastWritten[iw.slot()] = iw.to
			workloadWrites.WithLabelValues(pin.Namespace, pin.Name, string(w.kind), iw.reason).Inc()
			r.event(pin, corev1.EventTypeNormal, "ImageWritten", fmt.Sprintf("%s %s %s (%s): %s -> %s", w.kind, w.name, iw.what(), iw.reason, iw.from, iw.to))
		}
	}

	var blocked []string
	for _, st := range states {
		if st.blockedAt(now) {
			blocked = append(blocked, fmt.Sprintf("%s/%s by %s until %s", st.kind, st.name, st.manager, st.blockedUntil.UTC().Format(time.RFC3339)))
		}
	}
	sort.Strings(blocked)
	return blocked
}

func (r *ImagePinReconciler) event(pin *imagesv1alpha1.ImagePin, kind, reason, note string) {
	if r.Recorder != nil {
		target, note := eventTarget(pin, note)
		r.Recorder.Eventf(target, nil, kind, reason, "Write", "%s", truncateNote(note))
	}
}

// eventTarget is the object an event about pin is about: a ClusterImagePin
// for the ImagePin it acts as in a namespace (the note then names the
// namespace), else pin.
func eventTarget(pin *imagesv1alpha1.ImagePin, note string) (client.Object, string) {
	name, ok := selection.ClusterPinName(pin)
	if !ok {
		return pin, note
	}
	cp := &imagesv1alpha1.ClusterImagePin{}
	cp.Name, cp.UID = name, pin.UID
	return cp, pin.Namespace + ": " + note
}

// writeImages sets only the image fields of the listed containers, then
// gives up the ownership of those fields the write took.
//
// The write is a JSON patch that tests each container's name and image
// where the check read them, so a workload changed since is never
// overwritten (the change triggers a new check). A patch is an update,
// not an apply: it never prunes fields imagepin applied before. Then
// imagepin removes its own managedFields entry, so it owns no field of
// the workload. Whoever applies the workload (kubectl, a GitOps tool)
// therefore keeps the whole of what it applies: a container it drops is
// removed, not left behind as name and image; its next apply, forced or
// not, never conflicts with imagepin; and it may set an image back, which
// the admission webhook pins again or the next check sees (and counts as
// a revert when it is the same tag).
func (r *ImagePinReconciler) writeImages(ctx context.Context, namespace string, w workloadWrite) (int64, error) {
	k := workload.KindNamed(w.kind)
	if k == nil {
		return 0, fmt.Errorf("unsupported workload kind %q", w.kind)
	}
	if !k.TemplateMutable {
		return 0, fmt.Errorf("%s is not written: its pod template is immutable", w.kind)
	}
	obj := k.New()
	obj.SetNamespace(namespace)
	obj.SetName(w.name)
	var ops []jsonPatchOp
	for _, iw := range w.writes {
		list, field := iw.field()
		at := iw.specPointer + "/" + list + "/" + strconv.Itoa(iw.index)
		image := at + "/" + strings.Join(field, "/")
		ops = append(ops,
			jsonPatchOp{Op: "test", Path: at + "/name", Value: iw.container},
			jsonPatchOp{Op: "test", Path: image, Value: iw.stored},
			jsonPatchOp{Op: "replace", Path: image, Value: iw.to})
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return 0, err
	}
	// The patch answers with the stored object, managedFields included.
	if err := r.Patch(ctx, obj, client.RawPatch(types.JSONPatchType, body), client.FieldOwner(FieldManager)); err != nil {
		return 0, err
	}
	err = r.releaseFields(ctx, obj)
	if apierrors.IsConflict(err) {
		// Another writer came between (the workload's controller noting
		// the new revision): read it again and release once more.
		if live := r.readLive(ctx, namespace, w.kind, w.name, w.uid); live != nil {
			err = r.releaseFields(ctx, live)
		}
	}
	if err != nil {
		// Harmless for now: the next check sees imagepin still owns fields
		// and releases them then.
		log.FromContext(ctx).V(1).Info("release field ownership after a write", "kind", w.kind, "workload", w.name, "reason", err.Error())
	}
	return obj.GetGeneration(), nil
}

// field is where the image of p is: the list in the pod spec, and the
// path of the image in the list's item.
func (p place) field() (list string, image []string) {
	switch {
	case p.volume:
		return "volumes", []string{"image", "reference"}
	case p.init:
		return "initContainers", []string{"image"}
	}
	return "containers", []string{"image"}
}

// slot names the container or image volume of p among a workload's.
func (p place) slot() string { return slot(p.template, p.container, p.volume) }

// what says what p names, for an event.
func (p place) what() string {
	name := slot(p.template, p.container, false)
	if p.volume {
		return "image volume " + name
	}
	return "container " + name
}

// slot names a container, or an image volume ("volume:" and its name: a
// volume may share a container's name), of a pod template (its key and
// "/" first, for a workload with several).
func slot(template, name string, volume bool) string {
	if volume {
		name = "volume:" + name
	}
	if template != "" {
		return template + "/" + name
	}
	return name
}

// templateMutable reports whether a kind's pod template may change after
// creation: a Job's may not, and is reported, never written.
func templateMutable(kind imagesv1alpha1.WorkloadKind) bool {
	k := workload.KindNamed(kind)
	return k != nil && k.TemplateMutable
}

type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// setConflict records which workloads imagepin stopped writing.
func setConflict(status *imagesv1alpha1.ImagePinStatus, generation int64, mode imagesv1alpha1.Mode, blocked []string) {
	if mode != imagesv1alpha1.ModePin && mode != imagesv1alpha1.ModeFollow {
		meta.RemoveStatusCondition(&status.Conditions, imagesv1alpha1.ConditionConflict)
		return
	}
	c := metav1.Condition{Type: imagesv1alpha1.ConditionConflict, ObservedGeneration: generation}
	if len(blocked) == 0 {
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, imagesv1alpha1.ReasonNoConflict, "nobody sets back the images imagepin writes"
	} else {
		c.Status, c.Reason = metav1.ConditionTrue, imagesv1alpha1.ReasonImageReverted
		c.Message = fmt.Sprintf("stopped writing %s: its image was set back to the tag imagepin pinned %d times within the backoff (or once right after an earlier block); imagepin tries again at the time given, or when this ImagePin's spec changes",
			joinCapped(blocked, 3), maxReverts)
	}
	meta.SetStatusCondition(&status.Conditions, c)
}
