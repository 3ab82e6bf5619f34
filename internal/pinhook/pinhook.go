// Package pinhook is the mutating admission webhook: it pins the images of
// workloads and bare Pods as they are applied, when an ImagePin in Pin or
// Follow mode in their namespace selects them, with the same selection,
// filters, overrides and resolver as the controller.
//
// CREATE pins; an UPDATE pins any image of a kind whose pod template may
// change (Deployment, StatefulSet, DaemonSet, CronJob), and of a Job or a
// bare Pod only the images the request itself changes (planImage). Every
// request is answered within one budget (DefaultBudget), below the
// webhook's timeoutSeconds.
package pinhook

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
)

// Path is where the webhook is served.
const Path = "/mutate-imagepin"

// DefaultBudget bounds the resolutions of one admission request, all of
// them together: images are resolved concurrently, and what has not
// answered within the budget is reported per the ImagePin's failurePolicy.
// It is well below the webhook's timeoutSeconds (5), so that the answer
// (pinned, a warning, or failurePolicy: Fail's refusal) reaches the API
// server before it gives up and admits unchanged under the webhook's own
// failurePolicy: Ignore.
const DefaultBudget = 2 * time.Second

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
	// Budget bounds the work of one request (credentials and every
	// resolution that misses the cache, together); DefaultBudget if 0.
	// Keep it below the webhook's timeoutSeconds.
	Budget time.Duration
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
	budget := h.Budget
	if budget <= 0 {
		budget = DefaultBudget
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()

	if req.Kind.Kind == "" || req.Operation == "" {
		return admission.Errored(http.StatusBadRequest, errors.New("not an admission request: it names no kind or no operation")), decisionUnchanged
	}
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed("imagepin pins on create and update only"), decisionUnchanged
	}
	if req.SubResource != "" {
		// pods/ephemeralcontainers, …/status: not the workload's images.
		return admission.Allowed("imagepin does not pin through subresource " + req.SubResource), decisionUnchanged
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
	if obj.meta().GetDeletionTimestamp() != nil {
		// The garbage collector removing a finalizer, say: nothing to roll out.
		return admission.Allowed("being deleted"), decisionUnchanged
	}
	old, known := oldImages(req)
	if req.Operation == admissionv1.Update && !obj.templateMutable && !known {
		return admission.Allowed("cannot tell which images this update changes"), decisionUnchanged
	}
	pin, sel, err := h.selectingPin(ctx, req.Namespace, kind, obj.meta().GetLabels())
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), decisionUnchanged
	}
	if pin == nil {
		return admission.Allowed("no ImagePin in Pin or Follow mode selects this object"), decisionUnchanged
	}

	overrides := map[string]string{}
	for _, o := range pin.Spec.Overrides {
		overrides[o.Image] = string(o.Digest)
	}
	type planned struct {
		pointer string
		imagePlan
	}
	var plans []planned
	var toResolve []string
	for _, c := range containersOf(obj.podSpec(), obj.specPointer) {
		prev, hadOld := old[c.name]
		p, ok := planImage(imageInput{
			image:           *c.image,
			selected:        *c.image != "" && sel.SelectsImage(*c.image),
			update:          req.Operation == admissionv1.Update,
			templateMutable: obj.templateMutable,
			old:             prev,
			hadOld:          hadOld,
			override:        overrides[selection.StripDigest(*c.image)],
		})
		if !ok {
			continue
		}
		plans = append(plans, planned{c.pointer, p})
		if p.digest == "" {
			toResolve = append(toResolve, p.ref)
		}
	}
	if len(plans) == 0 {
		return admission.Allowed("nothing to pin"), decisionUnchanged
	}

	var resolved map[string]resolution
	var failures []string
	if len(toResolve) > 0 {
		kc, err := h.Keychains.ForPod(ctx, req.Namespace, obj.podSpec())
		if err != nil {
			if ctx.Err() == nil {
				return admission.Errored(http.StatusInternalServerError, err), decisionUnchanged
			}
			// The budget ran out reading credentials: the policy decides.
			failures = append(failures, fmt.Sprintf("credentials not read within the webhook's budget of %s: %v", budget, err))
		} else {
			resolved = h.resolveAll(ctx, toResolve, kc, sel.Interval, budget)
		}
	}

	var patches []jsonpatch.JsonPatchOperation
	for _, p := range plans {
		digest := p.digest
		if digest == "" {
			r, ok := resolved[p.ref]
			if !ok {
				continue // credentials failed: reported once above
			}
			if r.err != nil {
				failures = append(failures, r.err.Error())
				continue
			}
			digest = r.digest
		}
		pinned, err := selection.PinnedImage(p.ref, digest)
		if err != nil {
			failures = append(failures, err.Error())
			continue
		}
		// Only the image is replaced, at the path it was read from:
		// re-encoding the whole object would drop the fields this build's
		// API types do not know (a newer API server's) and rewrite others.
		patches = append(patches, jsonpatch.NewOperation("replace", p.pointer, pinned))
	}
	return answer(pin, failures, patches)
}

// answer applies the ImagePin's failurePolicy to what could not be pinned:
// Fail refuses the request, Ignore admits it with a warning per image.
func answer(pin *imagesv1alpha1.ImagePin, failures []string, patches []jsonpatch.JsonPatchOperation) (admission.Response, string) {
	var warnings []string
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

// oldImages maps the old object's container names to their images on an
// UPDATE; known is false when there is no old object or it does not
// decode.
func oldImages(req admission.Request) (images map[string]string, known bool) {
	if req.Operation != admissionv1.Update || len(req.OldObject.Raw) == 0 {
		return nil, false
	}
	prev, kind, err := decode(req.Kind.Kind, req.OldObject.Raw)
	if err != nil || kind == "" {
		return nil, false
	}
	return imagesByName(prev.podSpec()), true
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
