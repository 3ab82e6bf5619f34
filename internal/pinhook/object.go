package pinhook

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	kjson "sigs.k8s.io/json"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/workload"
)

// object is a decoded workload or Pod.
type object struct {
	obj client.Object
	// templates are its pod specs, with their JSON pointers: one for a
	// built-in kind, one per replica spec for a configured kind with
	// several.
	templates []workload.Template
	// templateMutable is true for the kinds whose pod template may change
	// after creation (a change rolls out): an UPDATE may pin any of their
	// images. A Job's template is immutable and a bare Pod's images are
	// its running containers': an UPDATE pins only the images it changes.
	templateMutable bool
}

func (o object) meta() client.Object { return o.obj }

// containers lists the image fields of every pod spec of the object, each
// named by its template's key and "/" first where it has one (a
// PyTorchJob's "Worker/pytorch"), with the index of its template.
func (o object) containers() []templateContainer {
	var out []templateContainer
	for i, t := range o.templates {
		for _, c := range containersOf(t.Spec, t.Pointer) {
			if t.Key != "" {
				c.name = t.Key + "/" + c.name
			}
			out = append(out, templateContainer{c, i})
		}
	}
	return out
}

// templateContainer is an image field and the index of its template.
type templateContainer struct {
	containerRef
	template int
}

// decode reads the objects the webhook pins; kind is empty for others. It
// decodes as the API server does (field names case-sensitive) and refuses
// duplicate fields (of the built-in kinds: a custom kind's object decodes
// as unstructured JSON, the last of duplicates kept) and an object of
// another kind than the request's, so that the paths the patch names are
// those of the object as sent.
func decode(kind string, raw []byte) (object, imagesv1alpha1.WorkloadKind, error) {
	k := workload.KindNamed(imagesv1alpha1.WorkloadKind(kind))
	if k == nil || !k.Admission {
		return object{}, "", nil
	}
	obj := k.New()
	// The kind the object names is checked below, against the request's.
	obj.GetObjectKind().SetGroupVersionKind(schema.GroupVersionKind{})
	o := object{obj: obj, templateMutable: k.TemplateMutable}
	if trimmed := bytes.TrimSpace(raw); len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		return object{}, "", fmt.Errorf("decode %s: the request carries no object", kind)
	}
	strict, err := kjson.UnmarshalStrict(raw, o.obj, kjson.DisallowDuplicateFields)
	if err != nil {
		return object{}, "", fmt.Errorf("decode %s: %w", kind, err)
	}
	if len(strict) > 0 {
		return object{}, "", fmt.Errorf("decode %s: %w", kind, errors.Join(strict...))
	}
	if got := o.obj.GetObjectKind().GroupVersionKind().Kind; got != "" && got != kind {
		return object{}, "", fmt.Errorf("decode %s: the object is a %s", kind, got)
	}
	if o.templates = k.Templates(obj); len(o.templates) == 0 {
		// No pod template of its own (a Rollout with workloadRef), or not
		// one a pod spec decodes from: nothing this webhook pins, and not
		// its place to refuse.
		return object{}, "", nil
	}
	return o, k.Name, nil
}

type containerRef struct {
	// name is the container's name, "init:"-prefixed for an init
	// container: the key that pairs it with the old object's.
	name  string
	image *string
	// pointer is the JSON pointer of the image field in the object.
	pointer string
}

// containersOf lists the image fields the webhook may pin in a pod spec:
// init and regular containers and image volumes (named "volume:<name>");
// specPointer is the spec's JSON pointer.
// Ephemeral containers are left out: they are added through the Pod's
// ephemeralcontainers subresource, and an update of the Pod itself that
// changed one would be refused by the API server.
func containersOf(spec *corev1.PodSpec, specPointer string) []containerRef {
	var out []containerRef
	at := func(list string, i int) string { return specPointer + "/" + list + "/" + strconv.Itoa(i) + "/image" }
	for i := range spec.InitContainers {
		out = append(out, containerRef{"init:" + spec.InitContainers[i].Name, &spec.InitContainers[i].Image, at("initContainers", i)})
	}
	for i := range spec.Containers {
		out = append(out, containerRef{spec.Containers[i].Name, &spec.Containers[i].Image, at("containers", i)})
	}
	// Image volumes (Kubernetes 1.33+) are pinned like containers.
	for i := range spec.Volumes {
		if v := spec.Volumes[i].Image; v != nil {
			out = append(out, containerRef{"volume:" + spec.Volumes[i].Name, &v.Reference, specPointer + "/volumes/" + strconv.Itoa(i) + "/image/reference"})
		}
	}
	return out
}

// imagesByName maps the container names of an object's pod specs (as
// containers names them) to their images.
func imagesByName(o object) map[string]string {
	out := map[string]string{}
	for _, c := range o.containers() {
		out[c.name] = *c.image
	}
	return out
}
