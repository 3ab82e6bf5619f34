// Package pinhook is the mutating admission webhook: it pins the images of
// workloads and bare Pods as they are applied, when an ImagePin in Pin or
// Follow mode in their namespace selects them, with the same selection,
// filters, overrides and resolver as the controller.
package pinhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	kjson "sigs.k8s.io/json"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/drift"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
)

// Path is where the webhook is served.
const Path = "/mutate-imagepin"

// DefaultTimeout is the most a resolution that misses the cache may take
// inside an admission request.
const DefaultTimeout = 2 * time.Second

// +kubebuilder:webhook:path=/mutate-imagepin,mutating=true,failurePolicy=ignore,sideEffects=None,groups="";apps;batch,resources=pods;deployments;statefulsets;daemonsets;jobs;cronjobs,verbs=create;update,versions=v1,name=pin.images.imagepin.dev,admissionReviewVersions=v1,timeoutSeconds=5,reinvocationPolicy=IfNeeded

// Decisions, the decision label of imagepin_admission_decisions_total.
const (
	decisionPinned    = "pinned"
	decisionUnchanged = "unchanged"
	decisionWarned    = "warned"
	decisionRefused   = "refused"
)

var (
	admissionLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "imagepin_admission_duration_seconds",
		Help:    "Time to answer an admission request, by decision.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5},
	}, []string{"decision"})
	admissionDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "imagepin_admission_decisions_total",
		Help: "Admission requests by decision: pinned, unchanged, warned (admitted unpinned), refused.",
	}, []string{"decision"})
)

func init() {
	ctrlmetrics.Registry.MustRegister(admissionLatency, admissionDecisions)
}

// Handler pins images at admission.
type Handler struct {
	// Reader reads ImagePins (the manager's cache).
	Reader client.Reader
	// Resolver is the process's shared resolver.
	Resolver *registry.Resolver
	// Keychains builds the object's credentials.
	Keychains *registry.Keychains
	// Timeout bounds a resolution that misses the cache; DefaultTimeout if 0.
	Timeout time.Duration
}

// Handle answers one admission request.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	resp, decision := h.handle(ctx, req)
	admissionLatency.WithLabelValues(decision).Observe(time.Since(start).Seconds())
	admissionDecisions.WithLabelValues(decision).Inc()
	return resp
}

func (h *Handler) handle(ctx context.Context, req admission.Request) (admission.Response, string) {
	if req.Kind.Kind == "" || req.Operation == "" {
		return admission.Errored(http.StatusBadRequest, errors.New("not an admission request: it names no kind or no operation")), decisionUnchanged
	}
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed("imagepin pins on create and update only"), decisionUnchanged
	}
	obj, kind, err := decode(req.Kind.Kind, req.Object.Raw)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err), decisionUnchanged
	}
	if kind == "" {
		return admission.Allowed("imagepin does not pin " + req.Kind.Kind), decisionUnchanged
	}
	if kind == selection.KindPod && metav1.GetControllerOf(obj.meta()) != nil {
		return admission.Allowed("owned by a controller, whose template is pinned"), decisionUnchanged
	}
	pin, sel, err := h.selectingPin(ctx, req.Namespace, kind, obj.meta().GetLabels())
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), decisionUnchanged
	}
	if pin == nil {
		return admission.Allowed("no ImagePin in Pin or Follow mode selects this object"), decisionUnchanged
	}

	var old map[string]string
	if req.Operation == admissionv1.Update && len(req.OldObject.Raw) > 0 {
		if prev, _, err := decode(req.Kind.Kind, req.OldObject.Raw); err == nil {
			old = pinnedImages(prev.podSpec())
		}
	}
	kc, err := h.Keychains.ForPod(ctx, req.Namespace, obj.podSpec())
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), decisionUnchanged
	}
	overrides := map[string]string{}
	for _, o := range pin.Spec.Overrides {
		overrides[o.Image] = string(o.Digest)
	}

	var warnings, failures []string
	var patches []jsonpatch.JsonPatchOperation
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	for _, c := range containersOf(obj.podSpec(), obj.specPointer) {
		// Not selected, or already naming a digest (pinned: idempotent; or
		// malformed: the API server's to refuse, not imagepin's to mend).
		if *c.image == "" || !sel.SelectsImage(*c.image) || strings.Contains(*c.image, "@") {
			continue
		}
		ref := *c.image
		digest, ok := overrides[ref]
		if !ok {
			// Re-applying a manifest that names the tag keeps the digest
			// the workload already runs: no rollout for an unchanged spec.
			if prev, found := old[c.name]; found && selection.StripDigest(prev) == ref {
				digest = drift.DigestOfImage(prev)
			}
		}
		if digest == "" {
			res, err := h.Resolver.Resolve(ctx, registry.Request{Image: ref, Keychain: kc, TTL: sel.Interval, Timeout: timeout})
			if err != nil {
				failures = append(failures, fmt.Sprintf("%s: %v", ref, err))
				continue
			}
			digest = res.Digest
		}
		pinned, err := selection.PinnedImage(ref, digest)
		if err != nil {
			failures = append(failures, err.Error())
			continue
		}
		// Only the image is replaced, at the path it was read from:
		// re-encoding the whole object would drop the fields this build's
		// API types do not know (a newer API server's) and rewrite others.
		patches = append(patches, jsonpatch.NewOperation("replace", c.pointer, pinned))
	}
	if len(failures) > 0 {
		if pin.Spec.FailurePolicy == imagesv1alpha1.FailurePolicyFail {
			return admission.Denied(warning(fmt.Sprintf("ImagePin %s (failurePolicy: Fail) could not pin %s", pin.Name, strings.Join(failures, "; ")))), decisionRefused
		}
		for _, f := range failures {
			warnings = append(warnings, warning(fmt.Sprintf("imagepin: admitted unpinned, %s", f)))
		}
	}
	if len(patches) == 0 {
		resp := admission.Allowed("nothing to pin").WithWarnings(warnings...)
		if len(warnings) > 0 {
			return resp, decisionWarned
		}
		return resp, decisionUnchanged
	}
	resp := admission.Patched("", patches...).WithWarnings(warnings...)
	if len(warnings) > 0 {
		return resp, decisionWarned
	}
	return resp, decisionPinned
}

// selectingPin returns the ImagePin of the namespace that pins an object
// (selection.Writer), or nil.
func (h *Handler) selectingPin(ctx context.Context, namespace string, kind imagesv1alpha1.WorkloadKind, labels map[string]string) (*imagesv1alpha1.ImagePin, *selection.Selection, error) {
	var pins imagesv1alpha1.ImagePinList
	if err := h.Reader.List(ctx, &pins, client.InNamespace(namespace)); err != nil {
		return nil, nil, fmt.Errorf("list ImagePins in %s: %w", namespace, err)
	}
	pin, sel := selection.Writer(pins.Items, kind, labels)
	return pin, sel, nil
}

// object is a decoded workload or Pod.
type object struct {
	obj  client.Object
	spec *corev1.PodSpec
	// specPointer is the JSON pointer of the pod spec in the object.
	specPointer string
}

func (o object) meta() client.Object      { return o.obj }
func (o object) podSpec() *corev1.PodSpec { return o.spec }

// decode reads the objects the webhook pins; kind is empty for others. It
// decodes as the API server does (field names case-sensitive) and refuses
// duplicate fields and an object of another kind than the request's, so
// that the paths the patch names are those of the object as sent.
func decode(kind string, raw []byte) (object, imagesv1alpha1.WorkloadKind, error) {
	var o object
	var k imagesv1alpha1.WorkloadKind
	switch kind {
	case "Deployment":
		d := &appsv1.Deployment{}
		o, k = object{d, &d.Spec.Template.Spec, "/spec/template/spec"}, imagesv1alpha1.KindDeployment
	case "StatefulSet":
		d := &appsv1.StatefulSet{}
		o, k = object{d, &d.Spec.Template.Spec, "/spec/template/spec"}, imagesv1alpha1.KindStatefulSet
	case "DaemonSet":
		d := &appsv1.DaemonSet{}
		o, k = object{d, &d.Spec.Template.Spec, "/spec/template/spec"}, imagesv1alpha1.KindDaemonSet
	case "Job":
		d := &batchv1.Job{}
		o, k = object{d, &d.Spec.Template.Spec, "/spec/template/spec"}, imagesv1alpha1.KindJob
	case "CronJob":
		d := &batchv1.CronJob{}
		o, k = object{d, &d.Spec.JobTemplate.Spec.Template.Spec, "/spec/jobTemplate/spec/template/spec"}, imagesv1alpha1.KindCronJob
	case "Pod":
		d := &corev1.Pod{}
		o, k = object{d, &d.Spec, "/spec"}, selection.KindPod
	default:
		return object{}, "", nil
	}
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
	return o, k, nil
}

type containerRef struct {
	name  string
	image *string
	// pointer is the JSON pointer of the image field in the object.
	pointer string
}

// containersOf lists every image field of a pod spec: init, regular and
// ephemeral containers; specPointer is the spec's JSON pointer.
func containersOf(spec *corev1.PodSpec, specPointer string) []containerRef {
	var out []containerRef
	at := func(list string, i int) string { return specPointer + "/" + list + "/" + strconv.Itoa(i) + "/image" }
	for i := range spec.InitContainers {
		out = append(out, containerRef{"init:" + spec.InitContainers[i].Name, &spec.InitContainers[i].Image, at("initContainers", i)})
	}
	for i := range spec.Containers {
		out = append(out, containerRef{spec.Containers[i].Name, &spec.Containers[i].Image, at("containers", i)})
	}
	for i := range spec.EphemeralContainers {
		out = append(out, containerRef{"ephemeral:" + spec.EphemeralContainers[i].Name, &spec.EphemeralContainers[i].Image, at("ephemeralContainers", i)})
	}
	return out
}

// pinnedImages maps container names to the images of an old object that
// carry a digest.
func pinnedImages(spec *corev1.PodSpec) map[string]string {
	out := map[string]string{}
	for _, c := range containersOf(spec, "") {
		if drift.DigestOfImage(*c.image) != "" {
			out[c.name] = *c.image
		}
	}
	return out
}

// maxWarning keeps a warning well inside what the API server relays.
const maxWarning = 1024

// warning makes a message fit an HTTP Warning header: the API server drops a
// warning with control characters (registries end error bodies with a
// newline), and limits their size.
func warning(msg string) string {
	msg = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, msg)
	msg = strings.Join(strings.Fields(msg), " ")
	if len(msg) > maxWarning {
		cut := maxWarning
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "…"
	}
	return msg
}
