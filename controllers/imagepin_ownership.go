package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/workload"
)

// Field ownership of imagepin's writes: imagepin gives up what a write
// took, and reads a workload live to tell a change since the check from a
// refused write and to name who reverts it.

// stillAsRead reports whether the workload, read live, still names each
// written container's image where the check read it. The API server
// answers a JSON patch whose test fails with a bare 422, as it answers one
// it refuses for another reason: only the second is worth an event.
func (r *ImagePinReconciler) stillAsRead(ctx context.Context, namespace string, w workloadWrite) bool {
	u := r.readLive(ctx, namespace, w.kind, w.name, w.uid)
	if u == nil {
		return false
	}
	for _, iw := range w.writes {
		list, field := iw.field()
		spec, _ := workload.ValueAt(u.Object, iw.specPointer).(map[string]any)
		items, _ := spec[list].([]any)
		if iw.index >= len(items) {
			return false
		}
		item, _ := items[iw.index].(map[string]any)
		image, _, _ := unstructured.NestedString(item, field...)
		if item["name"] != iw.container || image != iw.stored {
			return false
		}
	}
	return true
}

// readLive reads the workload kind/name from the API server, not the cache
// (which keeps no managedFields but imagepin's own, and a slimmed spec);
// nil when it cannot, or when it is no longer the object with uid.
func (r *ImagePinReconciler) readLive(ctx context.Context, namespace string, kind imagesv1alpha1.WorkloadKind, name string, uid types.UID) *unstructured.Unstructured {
	k := workload.KindNamed(kind)
	if r.APIReader == nil || k == nil {
		return nil
	}
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(k.GVK)
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, u); err != nil || u.GetUID() != uid {
		return nil
	}
	return u
}

// releaseFields removes imagepin's entries from obj's managedFields, with
// obj's resourceVersion as a precondition, so that imagepin owns no field
// of it. The values imagepin wrote stay; the fields become unowned until
// someone applies them. obj must hold the stored managedFields.
func (r *ImagePinReconciler) releaseFields(ctx context.Context, obj client.Object) error {
	all := obj.GetManagedFields()
	keep := make([]metav1.ManagedFieldsEntry, 0, len(all))
	for _, e := range all {
		if e.Manager != FieldManager {
			keep = append(keep, e)
		}
	}
	// Nothing to release; or nothing would be left, which the API server
	// reads as "keep managedFields as they are".
	if len(keep) == len(all) || len(keep) == 0 {
		return nil
	}
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": obj.GetResourceVersion(),
		"managedFields":   keep,
	}})
	if err != nil {
		return err
	}
	return r.Patch(ctx, obj, client.RawPatch(types.MergePatchType, body), client.FieldOwner(FieldManager))
}

// releaseStaleFields releases the fields imagepin still owns in workloads
// it does not write this check: a write whose release failed, or a
// workload an older imagepin applied to. Reads the workload live, as the
// cache keeps no managedFields but imagepin's own.
func (r *ImagePinReconciler) releaseStaleFields(ctx context.Context, namespace string, obs observation, plan []workloadWrite) {
	if r.APIReader == nil {
		return
	}
	planned := map[types.UID]bool{}
	for _, w := range plan {
		planned[w.uid] = true
	}
	done := map[types.UID]bool{}
	for _, c := range obs.containers {
		if !c.ownsFields || planned[c.uid] || done[c.uid] || !templateMutable(c.kind) {
			continue
		}
		done[c.uid] = true
		obj := r.readLive(ctx, namespace, c.kind, c.workload, c.uid)
		if obj == nil {
			continue
		}
		if err := r.releaseFields(ctx, obj); err != nil {
			log.FromContext(ctx).V(1).Info("release field ownership", "kind", c.kind, "workload", c.workload, "reason", err.Error())
		}
	}
}

// otherManager names the field managers other than imagepin that own the
// image of the workload's containers, read live (the cache strips
// managedFields).
func (r *ImagePinReconciler) otherManager(ctx context.Context, namespace string, w workloadWrite) string {
	u := r.readLive(ctx, namespace, w.kind, w.name, w.uid)
	if u == nil {
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
