package workload

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Kind is everything imagepin knows of one kind of object that holds a pod
// spec: the controller's listing, pods and owner walk, the cache, the
// writes, the webhook's decoding and patch paths and `imagepin pin` all
// read it from here. Adding a built-in kind is one entry in kinds (plus
// its RBAC marker in controllers and, for a workload, its value in the
// API's WorkloadKind enum).
type Kind struct {
	// Name is the object's kind, and the ImagePin's name for it in
	// spec.kinds.
	Name imagesv1alpha1.WorkloadKind
	GVK  schema.GroupVersionKind
	// Specs are where its pod specs live. A built-in kind has one, with no
	// wildcard; a configured kind may have several, and wildcards where a
	// map or list of replica specs holds several templates.
	Specs []SpecPath
	// TemplateMutable: its pod template may change after creation, and a
	// change rolls out. A Job's may not; a bare Pod's images are what its
	// containers run.
	TemplateMutable bool
	// Workload: an ImagePin selects it (spec.kinds) and the controller
	// lists, reports and, when its template is mutable, writes it.
	Workload bool
	// Admission: the webhook pins it.
	Admission bool
	// Via are the kinds between it and its pods, from it down, when its
	// pods are not its own: Deployment → ReplicaSet → Pod, CronJob → Job
	// → Pod. Pods owned by any of them count as its pods.
	Via []*Kind
	// Type and ListType are its Go types, whose pointers are a
	// client.Object and a client.ObjectList; nil for a kind imagepin reads
	// as unstructured objects (a custom resource: no Go types compiled in).
	Type, ListType reflect.Type
	// Optional: its API may be absent from a cluster (a CRD): imagepin then
	// leaves it out and keeps the other kinds going.
	Optional bool
	// Configured: named by the admin (--workload-kind), not built in.
	Configured bool
	// TemplateLabel is the pod label whose value names the template a pod
	// was created from (its key's last part, case aside): Kubeflow's
	// training.kubeflow.org/replica-type, JobSet's
	// jobset.sigs.k8s.io/replicatedjob-name.
	TemplateLabel string
	// flag is the --workload-kind value a configured kind was read from.
	flag string
	// TemplateRef is where an object of the kind without a pod spec of its
	// own names the workload it takes one from ({apiVersion, kind, name}):
	// a Rollout's spec.workloadRef.
	TemplateRef []string
}

// The kinds imagepin knows. Order is the order status reports them in.
var (
	replicaSet = kind[appsv1.ReplicaSet, appsv1.ReplicaSetList]("ReplicaSet", appsv1.SchemeGroupVersion, "spec.template.spec", true, false, false, nil)
	job        = kind[batchv1.Job, batchv1.JobList](imagesv1alpha1.KindJob, batchv1.SchemeGroupVersion, "spec.template.spec", false, true, true, nil)

	rollout = func() *Kind {
		k := customKind(imagesv1alpha1.KindRollout, schema.GroupVersion{Group: "argoproj.io", Version: "v1alpha1"}, "spec.template.spec", true, true, true, replicaSet)
		k.TemplateRef = []string{"spec", "workloadRef"}
		return k
	}()

	builtin = []*Kind{
		kind[appsv1.Deployment, appsv1.DeploymentList](imagesv1alpha1.KindDeployment, appsv1.SchemeGroupVersion, "spec.template.spec", true, true, true, replicaSet),
		kind[appsv1.StatefulSet, appsv1.StatefulSetList](imagesv1alpha1.KindStatefulSet, appsv1.SchemeGroupVersion, "spec.template.spec", true, true, true, nil),
		kind[appsv1.DaemonSet, appsv1.DaemonSetList](imagesv1alpha1.KindDaemonSet, appsv1.SchemeGroupVersion, "spec.template.spec", true, true, true, nil),
		job,
		kind[batchv1.CronJob, batchv1.CronJobList](imagesv1alpha1.KindCronJob, batchv1.SchemeGroupVersion, "spec.jobTemplate.spec.template.spec", true, true, true, job),
		// Pinned at admission only: a bare Pod (one a controller owns
		// comes from its template, already pinned).
		kind[corev1.Pod, corev1.PodList]("Pod", corev1.SchemeGroupVersion, "spec", false, false, true, nil),
		// Pinned by `imagepin pin` only.
		kind[corev1.PodTemplate, corev1.PodTemplateList]("PodTemplate", corev1.SchemeGroupVersion, "template.spec", true, false, false, nil),
		kind[corev1.ReplicationController, corev1.ReplicationControllerList]("ReplicationController", corev1.SchemeGroupVersion, "spec.template.spec", true, false, false, nil),
		replicaSet,
		// Argo Rollouts: a Deployment-like CRD whose ReplicaSets run its
		// pods. Optional: a cluster without its CRD still runs imagepin.
		rollout,
	}

	// kinds are the built-in kinds, then those configured (Configure).
	kinds = builtin
)

// customKind describes a kind read as unstructured objects, optional.
func customKind(name imagesv1alpha1.WorkloadKind, gv schema.GroupVersion, path string, mutable, workload, admission bool, via *Kind) *Kind {
	return &Kind{
		Name: name, GVK: gv.WithKind(string(name)), Specs: []SpecPath{{Fields: strings.Split(path, ".")}},
		TemplateMutable: mutable, Workload: workload, Admission: admission, Via: viaOf(via),
		Optional: true,
	}
}

func kind[T, L any](name imagesv1alpha1.WorkloadKind, gv schema.GroupVersion, path string, mutable, workload, admission bool, via *Kind) *Kind {
	k := &Kind{
		Name: name, GVK: gv.WithKind(string(name)), Specs: []SpecPath{{Fields: strings.Split(path, ".")}},
		TemplateMutable: mutable, Workload: workload, Admission: admission, Via: viaOf(via),
		Type: reflect.TypeFor[T](), ListType: reflect.TypeFor[L](),
	}
	if _, ok := reflect.New(k.Type).Interface().(client.Object); !ok {
		panic(fmt.Sprintf("workload kind %s: %s is not a client.Object", name, k.Type))
	}
	if _, ok := reflect.New(k.ListType).Interface().(client.ObjectList); !ok {
		panic(fmt.Sprintf("workload kind %s: %s is not a client.ObjectList", name, k.ListType))
	}
	if _, err := fieldSteps(k.Type, k.Specs[0].Fields); err != nil {
		panic(fmt.Sprintf("workload kind %s: %v", name, err))
	}
	return k
}

func viaOf(k *Kind) []*Kind {
	if k == nil {
		return nil
	}
	return []*Kind{k}
}

// Kinds returns every kind imagepin knows, in status order.
func Kinds() []*Kind { return kinds }

// SelectableKinds returns the names of the kinds an ImagePin selects, in
// status order: what an ImagePin selects when spec.kinds is empty.
func SelectableKinds() []imagesv1alpha1.WorkloadKind { return slices.Clone(selectable) }

// KindOrder is a selectable kind's place in status order (-1 for another):
// for sorting, without building the list for every comparison.
func KindOrder(name imagesv1alpha1.WorkloadKind) int { return slices.Index(selectable, name) }

var selectable = selectableOf(kinds)

func selectableOf(kinds []*Kind) []imagesv1alpha1.WorkloadKind {
	var out []imagesv1alpha1.WorkloadKind
	for _, k := range kinds {
		if k.Workload {
			out = append(out, k.Name)
		}
	}
	return out
}

// KindNamed returns the kind called name, or nil.
func KindNamed(name imagesv1alpha1.WorkloadKind) *Kind {
	for _, k := range kinds {
		if k.Name == name {
			return k
		}
	}
	return nil
}

// kindOfRef returns the kind an owner reference names, or nil.
func kindOfRef(apiVersion, name string) *Kind {
	for _, k := range kinds {
		if string(k.Name) == name && k.GVK.GroupVersion().String() == apiVersion {
			return k
		}
	}
	return nil
}

// New returns an empty object of the kind.
func (k *Kind) New() client.Object {
	if k.Type == nil {
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(k.GVK)
		return u
	}
	obj := reflect.New(k.Type).Interface().(client.Object)
	obj.GetObjectKind().SetGroupVersionKind(k.GVK)
	return obj
}

// NewList returns an empty list of the kind.
func (k *Kind) NewList() client.ObjectList {
	if k.ListType == nil {
		l := &unstructured.UnstructuredList{}
		l.SetGroupVersionKind(k.GVK.GroupVersion().WithKind(k.GVK.Kind + "List"))
		return l
	}
	return reflect.New(k.ListType).Interface().(client.ObjectList)
}

// PodSpec returns the (first) pod spec of obj, an object of the kind: in
// place for a typed kind, a decoded copy for an unstructured one (read it,
// do not write it); nil when obj is not of the kind, holds no pod spec there (a
// ReplicationController without a template, a Rollout with workloadRef),
// or what is there is not a pod spec.
func (k *Kind) PodSpec(obj client.Object) *corev1.PodSpec {
	if k.Type == nil {
		if ts := k.Templates(obj); len(ts) > 0 {
			return ts[0].Spec
		}
		return nil
	}
	v := reflect.ValueOf(obj)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Type() != k.Type || len(k.Specs) == 0 {
		return nil
	}
	steps, _ := fieldSteps(k.Type, k.Specs[0].Fields)
	v = v.Elem()
	for _, i := range steps {
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return nil
			}
			v = v.Elem()
		}
		v = v.Field(i)
	}
	return v.Addr().Interface().(*corev1.PodSpec)
}

var (
	fieldStepsMu sync.Mutex
	fieldStepsOf = map[string][]int{}
)

// fieldSteps finds, in struct type t, the fields reached by following the
// JSON names of path through structs and pointers to structs, which must
// end at a corev1.PodSpec: the index of each field in its struct.
func fieldSteps(t reflect.Type, path []string) ([]int, error) {
	key := t.String() + ":" + strings.Join(path, ".")
	fieldStepsMu.Lock()
	defer fieldStepsMu.Unlock()
	if steps, ok := fieldStepsOf[key]; ok {
		return steps, nil
	}
	var steps []int
	cur := t
	for _, name := range path {
		if cur.Kind() == reflect.Pointer {
			cur = cur.Elem()
		}
		i, ok := fieldByJSONName(cur, name)
		if !ok {
			return nil, fmt.Errorf("%s has no field %q on the way to %s", cur, name, strings.Join(path, "."))
		}
		steps = append(steps, i)
		cur = cur.Field(i).Type
	}
	if cur != reflect.TypeFor[corev1.PodSpec]() {
		return nil, fmt.Errorf("%s of %s is a %s, not a PodSpec", strings.Join(path, "."), t, cur)
	}
	fieldStepsOf[key] = steps
	return steps, nil
}

func fieldByJSONName(t reflect.Type, name string) (int, bool) {
	if t.Kind() != reflect.Struct {
		return 0, false
	}
	for i := range t.NumField() {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); tag == name {
			return i, true
		}
	}
	return 0, false
}
