package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/drift"
	"github.com/imagepin/imagepin/internal/selection"
)

// FieldManager is the field manager of every workload write.
const FieldManager = "imagepin"

// maxReverts is how many times another actor may set an image back before
// imagepin stops writing that workload until the ImagePin's spec changes.
const maxReverts = 3

// Write reasons, the reason label of imagepin_workload_writes_total and
// the events of writes.
const (
	writePin      = "Pin"
	writeFollow   = "Follow"
	writeOverride = "Override"
)

// imageWrite is one container image to set.
type imageWrite struct {
	container string
	init      bool
	from, to  string
	reason    string
}

// workloadWrite is every image to set in one workload.
type workloadWrite struct {
	kind   imagesv1alpha1.WorkloadKind
	name   string
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

// planWrites decides which container images to rewrite. It never writes a
// stale digest, leaves digest-only references and Jobs alone, and in Pin
// leaves a pinned image pinned whatever the tag does.
func planWrites(in planInput) []workloadWrite {
	if in.mode != imagesv1alpha1.ModePin && in.mode != imagesv1alpha1.ModeFollow {
		return nil
	}
	byWorkload := map[string]*workloadWrite{}
	var order []string
	for _, c := range in.obs.containers {
		w, ok := desiredImage(c, in)
		if !ok {
			continue
		}
		key := string(c.kind) + "/" + c.workload
		if byWorkload[key] == nil {
			byWorkload[key] = &workloadWrite{kind: c.kind, name: c.workload}
			order = append(order, key)
		}
		byWorkload[key].writes = append(byWorkload[key].writes, w)
	}
	sort.Strings(order)
	out := make([]workloadWrite, 0, len(order))
	for _, k := range order {
		out = append(out, *byWorkload[k])
	}
	return out
}

func desiredImage(c containerObs, in planInput) (imageWrite, bool) {
	// A Job's pod template is immutable: it is reported, not patched.
	if c.kind == imagesv1alpha1.KindJob {
		return imageWrite{}, false
	}
	current := c.image
	if c.pinned != "" {
		current += "@" + c.pinned
	}
	write := func(digest, reason string) (imageWrite, bool) {
		to, err := selection.PinnedImage(c.image, digest)
		if err != nil {
			// Not a reference imagepin can pin (its resolution fails and
			// is reported as Unresolvable) or not a sha256 digest: never
			// write a broken image.
			return imageWrite{}, false
		}
		if to == current {
			return imageWrite{}, false
		}
		return imageWrite{container: c.container, init: c.init, from: current, to: to, reason: reason}, true
	}
	if d, ok := in.overrides[c.image]; ok {
		return write(d, writeOverride)
	}
	if !c.hasTag || c.err != nil || c.result.Digest == "" {
		return imageWrite{}, false
	}
	resolved := c.result.Digest
	if c.pinned == "" {
		return write(resolved, writePin)
	}
	if in.mode != imagesv1alpha1.ModeFollow || drift.Same(resolved, c.pinned, in.platforms) {
		return imageWrite{}, false
	}
	seen, ok := in.firstSeen[c.image]
	if !ok || in.now.Sub(seen) < in.minAge {
		return imageWrite{}, false
	}
	return write(resolved, writeFollow)
}

// conflictState remembers, per workload, what imagepin last wrote and how
// often someone set it back, for one generation of the ImagePin.
type conflictState struct {
	generation  int64
	lastWritten map[string]string // container → image imagepin wrote
	// wroteGeneration is the workload's generation after imagepin's last
	// write: a cached copy older than that is not a revert, only late.
	wroteGeneration int64
	reverts         int
	blocked         bool
	manager         string
}

// applyWrites writes the planned images, skipping workloads another actor
// keeps reverting, and returns the workloads it stopped writing, each as
// "Kind/name by <managers>".
func (r *ImagePinReconciler) applyWrites(ctx context.Context, pin *imagesv1alpha1.ImagePin, plan []workloadWrite, obs observation) []string {
	current := map[string]string{}
	generations := map[string]int64{}
	for _, c := range obs.containers {
		img := c.image
		if c.pinned != "" {
			img += "@" + c.pinned
		}
		current[string(c.kind)+"/"+c.workload+"/"+c.container] = img
		generations[string(c.kind)+"/"+c.workload] = c.generation
	}

	r.conflictMu.Lock()
	defer r.conflictMu.Unlock()
	if r.conflicts == nil {
		r.conflicts = map[string]*conflictState{}
	}
	prefix := pin.Namespace + "/" + pin.Name + "/"
	for k, st := range r.conflicts {
		if strings.HasPrefix(k, prefix) && st.generation != pin.Generation {
			delete(r.conflicts, k) // a spec change: try again
		}
	}

	for _, w := range plan {
		key := prefix + string(w.kind) + "/" + w.name
		st := r.conflicts[key]
		if st == nil {
			st = &conflictState{generation: pin.Generation, lastWritten: map[string]string{}}
			r.conflicts[key] = st
		}
		if st.blocked {
			continue
		}
		if generations[string(w.kind)+"/"+w.name] < st.wroteGeneration {
			continue // the cache has not seen imagepin's own write yet
		}
		for _, iw := range w.writes {
			if last, ok := st.lastWritten[iw.container]; ok && last != current[string(w.kind)+"/"+w.name+"/"+iw.container] {
				st.reverts++
				break
			}
		}
		if st.reverts >= maxReverts {
			st.blocked = true
			st.manager = r.otherManager(ctx, pin.Namespace, w)
			r.event(pin, corev1.EventTypeWarning, "Conflict", fmt.Sprintf("stopped writing %s %s: its image was set back %d times by %s", w.kind, w.name, st.reverts, st.manager))
			continue
		}
		gen, err := r.writeImages(ctx, pin.Namespace, w)
		if err != nil {
			log.FromContext(ctx).Error(err, "write images", "kind", w.kind, "workload", w.name)
			r.event(pin, corev1.EventTypeWarning, "WriteFailed", fmt.Sprintf("%s %s: %v", w.kind, w.name, err))
			continue
		}
		st.wroteGeneration = gen
		for _, iw := range w.writes {
			st.lastWritten[iw.container] = iw.to
			workloadWrites.WithLabelValues(pin.Namespace, pin.Name, string(w.kind), iw.reason).Inc()
			r.event(pin, corev1.EventTypeNormal, "ImageWritten", fmt.Sprintf("%s %s container %s (%s): %s -> %s", w.kind, w.name, iw.container, iw.reason, iw.from, iw.to))
		}
	}

	var blocked []string
	for k, st := range r.conflicts {
		if strings.HasPrefix(k, prefix) && st.blocked {
			blocked = append(blocked, strings.TrimPrefix(k, prefix)+" by "+st.manager)
		}
	}
	sort.Strings(blocked)
	return blocked
}

func (r *ImagePinReconciler) event(pin *imagesv1alpha1.ImagePin, kind, reason, note string) {
	if r.Recorder != nil {
		r.Recorder.Eventf(pin, nil, kind, reason, "Write", "%s", truncateNote(note))
	}
}

// writeImages sets only the image fields of the listed containers with a
// server-side apply as field manager imagepin: other containers, fields and
// annotations are not part of the request.
func (r *ImagePinReconciler) writeImages(ctx context.Context, namespace string, w workloadWrite) (int64, error) {
	u := &unstructured.Unstructured{}
	var podSpecPath []string
	switch w.kind {
	case imagesv1alpha1.KindDeployment, imagesv1alpha1.KindStatefulSet, imagesv1alpha1.KindDaemonSet:
		u.SetAPIVersion("apps/v1")
		podSpecPath = []string{"spec", "template", "spec"}
	case imagesv1alpha1.KindCronJob:
		u.SetAPIVersion("batch/v1")
		podSpecPath = []string{"spec", "jobTemplate", "spec", "template", "spec"}
	default:
		return 0, fmt.Errorf("%s is not written", w.kind)
	}
	u.SetKind(string(w.kind))
	u.SetNamespace(namespace)
	u.SetName(w.name)
	var containers, inits []any
	for _, iw := range w.writes {
		entry := map[string]any{"name": iw.container, "image": iw.to}
		if iw.init {
			inits = append(inits, entry)
		} else {
			containers = append(containers, entry)
		}
	}
	if len(containers) > 0 {
		if err := unstructured.SetNestedSlice(u.Object, containers, append(podSpecPath, "containers")...); err != nil {
			return 0, err
		}
	}
	if len(inits) > 0 {
		if err := unstructured.SetNestedSlice(u.Object, inits, append(podSpecPath, "initContainers")...); err != nil {
			return 0, err
		}
	}
	// Apply fills u with the stored object.
	if err := r.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldManager), client.ForceOwnership); err != nil {
		return 0, err
	}
	return u.GetGeneration(), nil
}

// otherManager names the field managers other than imagepin that own the
// image of the workload's containers, read live (the cache strips
// managedFields).
func (r *ImagePinReconciler) otherManager(ctx context.Context, namespace string, w workloadWrite) string {
	if r.APIReader == nil {
		return "another field manager"
	}
	u := &unstructured.Unstructured{}
	switch w.kind {
	case imagesv1alpha1.KindCronJob:
		u.SetAPIVersion("batch/v1")
	default:
		u.SetAPIVersion("apps/v1")
	}
	u.SetKind(string(w.kind))
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: w.name}, u); err != nil {
		return "another field manager"
	}
	var names []string
	for _, mf := range u.GetManagedFields() {
		if mf.Manager == FieldManager || mf.FieldsV1 == nil {
			continue
		}
		if quoted := fmt.Sprintf("%q", mf.Manager); ownsAnImage(mf.FieldsV1.GetRawBytes(), w.writes) && !slices.Contains(names, quoted) {
			names = append(names, quoted)
		}
	}
	if len(names) == 0 {
		return "another field manager"
	}
	return "field manager " + strings.Join(names, ", ")
}

// ownsAnImage reports whether a managedFields entry owns the image of one of
// the written containers.
func ownsAnImage(raw []byte, writes []imageWrite) bool {
	var fields map[string]any
	if err := json.Unmarshal(raw, &fields); err != nil {
		return false
	}
	var found bool
	var walk func(m map[string]any)
	walk = func(m map[string]any) {
		for k, v := range m {
			child, _ := v.(map[string]any)
			for _, w := range writes {
				if k == fmt.Sprintf(`k:{"name":%q}`, w.container) {
					if _, ok := child["f:image"]; ok {
						found = true
					}
				}
			}
			if child != nil {
				walk(child)
			}
		}
	}
	walk(fields)
	return found
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
		c.Message = fmt.Sprintf("stopped writing %s after its image was set back %d times; imagepin tries again when this ImagePin's spec changes",
			joinCapped(blocked, 3), maxReverts)
	}
	meta.SetStatusCondition(&status.Conditions, c)
}
