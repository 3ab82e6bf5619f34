package workload

import (
	"reflect"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// CacheOptions keeps the manager's cache to what the controller reads:
// managedFields and kubectl's last-applied annotation are stripped from
// everything; of workloads, and of the kinds between them and their pods,
// what selection and the owner walk read (keepWhatSelectionReads); of
// Secrets only the docker config of pull secrets (dockerconfigjson and
// legacy dockercfg). The slimmed objects are held packed (packed.go).
// Pods are not read through the cache: the PodStore holds them.
func CacheOptions() cache.Options {
	// A packed object is unpacked afresh for every read: the cache's own
	// deep copy of it would be a second copy for nothing.
	fresh := ptr.To(true)
	byObject := map[client.Object]cache.ByObject{
		&corev1.Secret{}: {Transform: keepDockerConfigOnly},
		// Their status grows with the workloads they select.
		&imagesv1alpha1.ImagePin{}:        {Transform: keepStatusCompact},
		&imagesv1alpha1.ClusterImagePin{}: {Transform: keepStatusCompact},
	}
	for _, k := range kinds {
		if cachedSlim(k) {
			byObject[k.New()] = cache.ByObject{Transform: keepWhatSelectionReads, UnsafeDisableDeepCopy: fresh}
		}
	}
	// The informers of those kinds hold their objects packed (packed.go).
	return cache.Options{DefaultTransform: stripForCache, ByObject: byObject, NewInformer: newInformer}
}

// cachedSlim reports whether the cache holds the objects of kind k slimmed
// to what imagepin reads: the workload kinds and the kinds between them
// and their pods, but pods (PodStore). An optional kind (a CRD) may not be
// served: it keeps the default transform rather than name an API the
// cache cannot find.
func cachedSlim(k *Kind) bool {
	return !k.isPod() && (k.Workload || slices.Contains(vias, k)) && !k.Optional
}

func stripForCache(obj any) (any, error) {
	if u, ok := obj.(*unstructured.Unstructured); ok && u != nil {
		// A custom workload kind (a Rollout, a configured kind) is cached
		// as unstructured: the same slimming, by its spec paths.
		if k := unstructuredWorkloadKind(u); k != nil {
			return slimUnstructured(u, k), nil
		}
	}
	if o, ok := obj.(client.Object); ok && !isNilPointer(obj) {
		o.SetManagedFields(ownFieldsOnly(o.GetManagedFields()))
		if a := o.GetAnnotations(); a != nil {
			if _, ok := a[corev1.LastAppliedConfigAnnotation]; ok {
				delete(a, corev1.LastAppliedConfigAnnotation)
				o.SetAnnotations(a)
			}
		}
	}
	return obj, nil
}

// keepWhatSelectionReads keeps of a workload what the controller reads:
// identity, generation, labels, owners and imagepin's own managedFields
// entry, and of its pod spec the containers' names and images, the pull
// secrets and the service account. Of a kind the owner walk from a pod to
// its workload passes, and no workload itself (a ReplicaSet), it keeps
// identity and owners. Writes are
// patches of the image fields alone, never of a cached object, so nothing
// else is needed; a cached Deployment shrinks from its whole spec and
// status to a few hundred bytes.
func keepWhatSelectionReads(obj any) (any, error) {
	in := reflect.ValueOf(obj)
	if in.Kind() != reflect.Pointer || in.IsNil() {
		return obj, nil
	}
	var k *Kind
	for _, c := range kinds {
		if in.Elem().Type() == c.Type {
			k = c
			break
		}
	}
	if k == nil {
		return stripForCache(obj)
	}
	out := reflect.New(k.Type)
	out.Elem().FieldByName("TypeMeta").Set(in.Elem().FieldByName("TypeMeta"))
	m, _ := in.Elem().FieldByName("ObjectMeta").Interface().(metav1.ObjectMeta)
	if k.Workload {
		m = slimMeta(m)
	} else {
		// A kind only on the way from a workload to its pods (a
		// ReplicaSet) is read for its owner and nothing else.
		m = metav1.ObjectMeta{
			Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
			DeletionTimestamp: m.DeletionTimestamp, OwnerReferences: m.OwnerReferences,
		}
	}
	out.Elem().FieldByName("ObjectMeta").Set(reflect.ValueOf(m))
	slim := out.Interface().(client.Object)
	if dst, src := k.PodSpec(slim), k.PodSpec(obj.(client.Object)); k.Workload && dst != nil && src != nil {
		*dst = slimPodSpec(src)
	}
	return slim, nil
}

func slimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion, Generation: m.Generation,
		CreationTimestamp: m.CreationTimestamp, DeletionTimestamp: m.DeletionTimestamp,
		Labels: m.Labels, OwnerReferences: m.OwnerReferences,
		ManagedFields: ownFieldsOnly(m.ManagedFields),
	}
}

// FieldManager is the field manager of imagepin's workload writes.
const FieldManager = "imagepin"

// ownFieldsOnly keeps the managedFields entries of imagepin itself: the
// controller releases fields it still owns (see controllers'
// releaseFields) and needs to see that it owns some without a live read.
// Other managers' entries are dropped; they are the bulk of managedFields.
func ownFieldsOnly(in []metav1.ManagedFieldsEntry) []metav1.ManagedFieldsEntry {
	var out []metav1.ManagedFieldsEntry
	for _, e := range in {
		if e.Manager == FieldManager {
			out = append(out, metav1.ManagedFieldsEntry{Manager: e.Manager, Operation: e.Operation})
		}
	}
	return out
}

// OwnsFields reports whether imagepin owns fields of obj, as far as obj's
// managedFields (or the cache's copy of them) tell.
func OwnsFields(obj metav1.Object) bool {
	for _, e := range obj.GetManagedFields() {
		if e.Manager == FieldManager {
			return true
		}
	}
	return false
}

func slimPodSpec(spec *corev1.PodSpec) corev1.PodSpec {
	return corev1.PodSpec{
		InitContainers:     slimContainers(spec.InitContainers),
		Containers:         slimContainers(spec.Containers),
		Volumes:            imageVolumes(spec.Volumes),
		ImagePullSecrets:   spec.ImagePullSecrets,
		ServiceAccountName: spec.ServiceAccountName,
	}
}

// imageVolumes keeps of a pod spec's volumes their names, and the source
// of image volumes: every volume stays, so that an image volume's index in
// the cache is its index in the object, which the controller's patch names.
func imageVolumes(in []corev1.Volume) []corev1.Volume {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.Volume, len(in))
	for i, v := range in {
		out[i] = corev1.Volume{Name: v.Name}
		if v.Image != nil {
			out[i].Image = v.Image
		}
	}
	return out
}

func slimContainers(in []corev1.Container) []corev1.Container {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.Container, len(in))
	for i, c := range in {
		out[i] = corev1.Container{Name: c.Name, Image: c.Image}
	}
	return out
}

// keepWhatDriftReads keeps of a Pod only what drift is computed from: its
// owner, node, phase and the images its containers report; what the
// PodStore holds.
func keepWhatDriftReads(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return stripForCache(obj)
	}
	slim := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, OwnerReferences: p.OwnerReferences, DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}
	slim.Status.InitContainerStatuses = slimStatuses(p.Status.InitContainerStatuses)
	slim.Status.ContainerStatuses = slimStatuses(p.Status.ContainerStatuses)
	return slim, nil
}

func slimStatuses(in []corev1.ContainerStatus) []corev1.ContainerStatus {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.ContainerStatus, len(in))
	for i, s := range in {
		out[i] = corev1.ContainerStatus{Name: s.Name, Image: s.Image, ImageID: s.ImageID, VolumeMounts: imageMounts(s.VolumeMounts)}
	}
	return out
}

func keepDockerConfigOnly(obj any) (any, error) {
	if s, ok := obj.(*corev1.Secret); ok {
		keep := ""
		switch s.Type {
		case corev1.SecretTypeDockerConfigJson:
			keep = corev1.DockerConfigJsonKey
		case corev1.SecretTypeDockercfg:
			keep = corev1.DockerConfigKey
		}
		// Any other Secret is held as metadata only: its data never
		// enters the manager's memory.
		for k := range s.Data {
			if k != keep {
				delete(s.Data, k)
			}
		}
		s.StringData = nil
	}
	return stripForCache(obj)
}

// imageMounts keeps the mounts whose status says which image digest a
// volume runs.
func imageMounts(in []corev1.VolumeMountStatus) []corev1.VolumeMountStatus {
	var out []corev1.VolumeMountStatus
	for _, m := range in {
		if m.VolumeStatus != nil && m.VolumeStatus.Image != nil {
			out = append(out, corev1.VolumeMountStatus{Name: m.Name, VolumeStatus: &corev1.VolumeStatus{Image: m.VolumeStatus.Image}})
		}
	}
	return out
}

func isNilPointer(obj any) bool {
	v := reflect.ValueOf(obj)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// unstructuredWorkloadKind returns the custom workload kind u is an object
// of, or nil.
func unstructuredWorkloadKind(u *unstructured.Unstructured) *Kind {
	gvk := u.GroupVersionKind()
	for _, k := range kinds {
		if k.Type == nil && k.Workload && k.GVK.GroupKind() == gvk.GroupKind() {
			return k
		}
	}
	return nil
}

// slimUnstructured keeps of a custom workload what keepWhatSelectionReads
// keeps of a built-in one: identity, generation, labels, owners, imagepin's
// own managedFields entry, what its TemplateRef names, and of each pod
// spec the image fields, pull secrets and service account, at the same
// place (a list of replica specs keeps its length, so that the pointers
// the controller's patch names are the object's).
func slimUnstructured(u *unstructured.Unstructured, k *Kind) *unstructured.Unstructured {
	m := slimMeta(metav1.ObjectMeta{
		Name: u.GetName(), Namespace: u.GetNamespace(), UID: u.GetUID(), ResourceVersion: u.GetResourceVersion(),
		Generation: u.GetGeneration(), CreationTimestamp: u.GetCreationTimestamp(), DeletionTimestamp: u.GetDeletionTimestamp(),
		Labels: u.GetLabels(), OwnerReferences: u.GetOwnerReferences(), ManagedFields: u.GetManagedFields(),
	})
	meta, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&m)
	if err != nil {
		return u // not slimmed, never lost
	}
	slim := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": u.GetAPIVersion(), "kind": u.GetKind(), "metadata": meta,
	}}
	if len(k.TemplateRef) > 0 {
		if ref, found, _ := unstructured.NestedFieldCopy(u.Object, k.TemplateRef...); found {
			_ = unstructured.SetNestedField(slim.Object, ref, k.TemplateRef...)
		}
	}
	for _, p := range k.Specs {
		expand(u.Object, p.Fields, nil, nil, func(at, _ []string, raw map[string]any) {
			if spec := slimRawPodSpec(raw); spec != nil {
				placeAt(u.Object, slim.Object, at, spec)
			}
		})
	}
	return slim
}

// placeAt sets value at the path at (fields and list indices) in dst,
// making on the way the maps and lists src has there: a list keeps src's
// length and its items their names, so that a JSON pointer into src
// points at the same place in dst.
func placeAt(src, dst map[string]any, at []string, value any) {
	var s, d any = src, dst
	for i, step := range at {
		last := i == len(at)-1
		switch dv := d.(type) {
		case map[string]any:
			sv, _ := s.(map[string]any)
			if last {
				dv[step] = value
				return
			}
			if dv[step] == nil {
				dv[step] = shapeOf(sv[step])
			}
			s, d = sv[step], dv[step]
		case []any:
			sv, _ := s.([]any)
			n, err := strconv.Atoi(step)
			if err != nil || n >= len(dv) || n >= len(sv) {
				return
			}
			if last {
				dv[n] = value
				return
			}
			s, d = sv[n], dv[n]
		default:
			return
		}
	}
}

// shapeOf is an empty value of v's shape: a list of v's length whose items
// keep only their names, or a map.
func shapeOf(v any) any {
	l, ok := v.([]any)
	if !ok {
		return map[string]any{}
	}
	out := make([]any, len(l))
	for i, item := range l {
		m := map[string]any{}
		if im, ok := item.(map[string]any); ok {
			if name, ok := im["name"]; ok {
				m["name"] = name
			}
		}
		out[i] = m
	}
	return out
}

// slimRawPodSpec keeps of an unstructured pod spec what slimPodSpec keeps
// of a typed one, by way of the typed one; nil when it is not a pod spec.
func slimRawPodSpec(raw map[string]any) map[string]any {
	var spec corev1.PodSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &spec); err != nil {
		return nil
	}
	slim := slimPodSpec(&spec)
	out, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&slim)
	if err != nil {
		return nil
	}
	return out
}
