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
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/authn"
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
	"github.com/imagepin/imagepin/internal/verify"
	"github.com/imagepin/imagepin/internal/workload"
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

// +kubebuilder:webhook:path=/mutate-imagepin,mutating=true,failurePolicy=ignore,sideEffects=None,groups="";apps;batch;argoproj.io,resources=pods;deployments;statefulsets;daemonsets;jobs;cronjobs;rollouts,verbs=create;update,versions=v1;v1alpha1,name=pin.images.imagepin.dev,admissionReviewVersions=v1,timeoutSeconds=5,reinvocationPolicy=IfNeeded

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
	// Every decision from zero, so that the first refusal after a start
	// is an increase an alert sees.
	for _, d := range []string{decisionPinned, decisionUnchanged, decisionWarned, decisionRefused} {
		admissionDecisions.WithLabelValues(d)
	}
}

// Handler pins images at admission.
type Handler struct {
	// Reader reads ImagePins (the manager's cache).
	Reader client.Reader
	// Resolver is the process's shared resolver.
	Resolver *registry.Resolver
	// Keychains builds the object's credentials.
	Keychains *registry.Keychains
	// Verifier and VerifyLoader verify signatures for an ImagePin with
	// spec.verify (the controller's, whose cache they share); nil refuses
	// or warns about every image such an ImagePin writes.
	Verifier     *verify.Verifier
	VerifyLoader *verify.Loader
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
	if k := workload.KindNamed(imagesv1alpha1.WorkloadKind(req.Kind.Kind)); k == nil || k.GVK.Group != req.Kind.Group {
		// (Or a kind of another group by the same name: a Knative Service
		// configured, a core Service sent.)
		return admission.Allowed("imagepin does not pin " + req.Kind.Kind), decisionUnchanged
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
	pins, err := h.imagePins(ctx, req.Namespace)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), decisionUnchanged
	}
	clusterPins, err := selection.ClusterPinsIn(ctx, h.Reader, req.Namespace)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), decisionUnchanged
	}

	// Each container is pinned by its own writer (selection's Writer's
	// rule): the ImagePin that selects the object and that image.
	type planned struct {
		pointer  string
		template int
		imagePlan
		pin *imagesv1alpha1.ImagePin
	}
	var plans []planned
	// Tags to resolve, per template: each with its own credentials.
	toResolve := map[int][]string{}
	var ttl time.Duration
	selected := false
	writers := selection.WritersOf(pins, clusterPins, kind, obj.meta().GetLabels())
	for _, c := range obj.containers() {
		if *c.image == "" {
			continue
		}
		pin, sel := writers.For(*c.image)
		if pin == nil {
			continue
		}
		selected = true
		prev, hadOld := old[c.name]
		p, ok := planImage(imageInput{
			image:           *c.image,
			selected:        true,
			update:          req.Operation == admissionv1.Update,
			templateMutable: obj.templateMutable,
			old:             prev,
			hadOld:          hadOld,
			override:        sel.Override(*c.image),
		})
		if !ok {
			continue
		}
		plans = append(plans, planned{c.pointer, c.template, p, pin})
		if p.digest == "" {
			toResolve[c.template] = append(toResolve[c.template], p.ref)
			if ttl == 0 || sel.Interval < ttl {
				ttl = sel.Interval
			}
		}
	}
	if !selected {
		return admission.Allowed("no ImagePin or ClusterImagePin in Pin or Follow mode selects this object"), decisionUnchanged
	}
	if len(plans) == 0 {
		return admission.Allowed("nothing to pin"), decisionUnchanged
	}

	// Templates with the same credentials (service account and pull
	// secrets: nearly always all of them) resolve together, concurrently.
	// Signatures are read with the same credentials.
	resolved := map[int]map[string]resolution{}
	keychains := map[int]authn.Keychain{}
	var credentialsErr error
	groups := map[string][]int{}
	needKeychain := map[int]bool{}
	for ti := range toResolve {
		needKeychain[ti] = true
	}
	for _, p := range plans {
		if p.pin.Spec.Verify != nil || p.override {
			needKeychain[p.template] = true
		}
	}
	for _, ti := range slices.Sorted(maps.Keys(needKeychain)) {
		key := registry.CredentialsKey(obj.templates[ti].Spec)
		groups[key] = append(groups[key], ti)
	}
	for _, key := range slices.Sorted(maps.Keys(groups)) {
		tis := groups[key]
		kc, err := h.Keychains.ForPod(ctx, req.Namespace, obj.templates[tis[0]].Spec)
		if err != nil {
			if ctx.Err() == nil {
				return admission.Errored(http.StatusInternalServerError, err), decisionUnchanged
			}
			// The budget ran out reading credentials: the policy decides.
			credentialsErr = fmt.Errorf("credentials not read within the webhook's budget of %s: %w", budget, err)
			break
		}
		var refs []string
		for _, ti := range tis {
			refs = append(refs, toResolve[ti]...)
			keychains[ti] = kc
		}
		res := h.resolveAll(ctx, refs, kc, ttl, budget)
		for _, ti := range tis {
			resolved[ti] = res
		}
	}
	verifier := h.verifier(req.Namespace)

	var patches []jsonpatch.JsonPatchOperation
	var failures []failure
	var notes []string // warnings that refuse nothing
	for _, p := range plans {
		digest := p.digest
		if digest == "" {
			r, ok := resolved[p.template][p.ref]
			if !ok {
				failures = append(failures, failure{p.pin, credentialsErr.Error()})
				continue
			}
			if r.err != nil {
				failures = append(failures, failure{p.pin, r.err.Error()})
				continue
			}
			digest = r.digest
		}
		if p.override {
			// An override the controller found gone from the registry
			// (garbage collected) would not pull: its writer's policy
			// decides. Answered from what the controller's checks
			// learnt, in this replica's resolver or in the ImagePin's
			// status (any replica's webhook reads it); admission asks the
			// registry nothing about it.
			kc, ok := keychains[p.template]
			if statusSaysGone(p.pin, p.ref, digest) || (ok && h.Resolver.KnownGone(ctx, p.ref, digest, kc)) {
				failures = append(failures, failure{p.pin, fmt.Sprintf("%s: the override's digest %s is no longer in the registry (garbage collected), and a pod would fail to pull it", p.ref, digest)})
				continue
			}
		}
		if p.pin.Spec.Verify != nil {
			kc, ok := keychains[p.template]
			if !ok {
				failures = append(failures, failure{p.pin, fmt.Sprintf("%s@%s: signatures not verified: %v", p.ref, digest, credentialsErr)})
				continue
			}
			if msg := verifier.check(ctx, p.pin, p.ref, digest, kc); msg != "" {
				if !p.kept {
					failures = append(failures, failure{p.pin, msg})
					continue
				}
				// A re-apply of the tag keeps the digest the workload
				// runs: nothing new is admitted, and admitting it
				// unpinned would let the tag's unverified digest in.
				notes = append(notes, warning("imagepin: kept the digest the workload runs, "+msg))
			}
		}
		pinned, err := selection.PinnedImage(p.ref, digest)
		if err != nil {
			failures = append(failures, failure{p.pin, err.Error()})
			continue
		}
		// Only the image is replaced, at the path it was read from:
		// re-encoding the whole object would drop the fields this build's
		// API types do not know (a newer API server's) and rewrite others.
		patches = append(patches, jsonpatch.NewOperation("replace", p.pointer, pinned))
	}
	return answer(failures, patches, notes...)
}

// failure is an image its writer could not pin.
type failure struct {
	pin *imagesv1alpha1.ImagePin
	msg string
}

// answer applies each writer's failurePolicy to the images it could not
// pin: an image whose writer says Fail refuses the request, the others are
// admitted with a warning per image.
func answer(failures []failure, patches []jsonpatch.JsonPatchOperation, notes ...string) (admission.Response, string) {
	warnings := notes
	var refusals []string
	var refusing []string
	for _, f := range failures {
		if f.pin.Spec.FailurePolicy == imagesv1alpha1.FailurePolicyFail {
			refusals = append(refusals, f.msg)
			if !slices.Contains(refusing, f.pin.Name) {
				refusing = append(refusing, f.pin.Name)
			}
			continue
		}
		warnings = append(warnings, warning(fmt.Sprintf("imagepin: admitted unpinned, %s", f.msg)))
	}
	if len(refusals) > 0 {
		return admission.Denied(warning(fmt.Sprintf("ImagePin %s (failurePolicy: Fail) could not pin %s", strings.Join(refusing, ", "), strings.Join(refusals, "; ")))), decisionRefused
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
	return imagesByName(prev), true
}

// imagePins lists the ImagePins of namespace, from the cache.
func (h *Handler) imagePins(ctx context.Context, namespace string) ([]imagesv1alpha1.ImagePin, error) {
	var pins imagesv1alpha1.ImagePinList
	if err := h.Reader.List(ctx, &pins, client.InNamespace(namespace)); err != nil {
		return nil, fmt.Errorf("list ImagePins in %s: %w", namespace, err)
	}
	return pins.Items, nil
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

// statusSaysGone reports whether pin's status history says the registry no
// longer has digest of image.
func statusSaysGone(pin *imagesv1alpha1.ImagePin, image, digest string) bool {
	key := selection.ImageKey(image)
	for _, img := range pin.Status.Images {
		if img.Image != key {
			continue
		}
		for _, h := range img.History {
			if string(h.Digest) == digest && h.Available != nil && !*h.Available {
				return true
			}
		}
	}
	return false
}
