package pinhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/drift"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/registry/registrytest"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/testenv"
	"github.com/imagepin/imagepin/internal/workload"
)

// The handler on its own, without an API server: ImagePins from a fake
// client, tags from the in-process registry. "REG" in an object stands for
// the registry's host, whose port changes from run to run.

const (
	hookNS = "ns"
	// overrideImage has an override in the ImagePin: pinned without a
	// registry.
	overrideImage = "override.example/app:v1"
	// badOverrideImage is selected and has an override, but is not a
	// reference imagepin can pin.
	badOverrideImage = "override.example/App:v1"
)

var overrideDigest = "sha256:" + strings.Repeat("0", 64)

type hookEnv struct {
	h      *Handler
	reg    *registrytest.Registry
	digest string // of REG/app:v1
}

var (
	sharedHookOnce sync.Once
	sharedHook     *hookEnv
)

// hookEnvFor returns one handler per test process: a fuzz target's
// function runs many times and must not start a registry each time.
func hookEnvFor(t testing.TB) *hookEnv {
	t.Helper()
	sharedHookOnce.Do(func() {
		reg := registrytest.New() // lives as long as the process
		resolver, err := registry.New(registry.Options{InsecureRegistries: []string{reg.Host}, Timeout: 2 * time.Second, MaxStale: time.Hour, QPS: 1e6, Burst: 1e6})
		if err != nil {
			t.Fatal(err)
		}
		// Only what the in-process registry or an override answers is
		// selected: a fuzzed image elsewhere would be a network lookup.
		selectAll := []string{reg.Host + "/*", overrideImage, badOverrideImage}
		pins := []*imagesv1alpha1.ImagePin{
			// Labelled policy=fail: refused when an image cannot be pinned.
			{ObjectMeta: metav1.ObjectMeta{Namespace: hookNS, Name: "a-strict"}, Spec: imagesv1alpha1.ImagePinSpec{
				Selector:      &metav1.LabelSelector{MatchLabels: map[string]string{"policy": "fail"}},
				Mode:          imagesv1alpha1.ModePin,
				FailurePolicy: imagesv1alpha1.FailurePolicyFail,
				Images:        &imagesv1alpha1.ImageFilter{Include: selectAll},
			}},
			// Everything else in the namespace, from the in-process
			// registry or with an override.
			{ObjectMeta: metav1.ObjectMeta{Namespace: hookNS, Name: "b-all"}, Spec: imagesv1alpha1.ImagePinSpec{
				Mode:   imagesv1alpha1.ModePin,
				Images: &imagesv1alpha1.ImageFilter{Include: selectAll},
				Overrides: []imagesv1alpha1.ImageOverride{
					{Image: overrideImage, Digest: imagesv1alpha1.Digest(overrideDigest)},
					{Image: badOverrideImage, Digest: imagesv1alpha1.Digest(overrideDigest)},
				},
			}},
		}
		b := fake.NewClientBuilder().WithScheme(testenv.Scheme())
		for _, p := range pins {
			b = b.WithObjects(p)
		}
		c := b.Build()
		sharedHook = &hookEnv{
			h:   &Handler{Reader: c, Resolver: resolver, Keychains: &registry.Keychains{Reader: c}, Budget: 2 * time.Second},
			reg: reg,
		}
		sharedHook.digest = reg.Push(t, "app:v1")
	})
	if sharedHook == nil {
		t.Fatal("the handler's environment did not start")
	}
	return sharedHook
}

func (e *hookEnv) expand(raw []byte) []byte {
	return bytes.ReplaceAll(raw, []byte("REG"), []byte(e.reg.Host))
}

func (e *hookEnv) request(kind string, raw, old []byte) admission.Request {
	req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: "uid", Kind: requestKind(kind), Namespace: hookNS, Operation: admissionv1.Create,
		Object: runtime.RawExtension{Raw: e.expand(raw)},
	}}
	if len(old) > 0 {
		req.Operation = admissionv1.Update
		req.OldObject = runtime.RawExtension{Raw: e.expand(old)}
	}
	return req
}

// podSpecPaths is where each kind the webhook pins keeps its pod spec, as
// a JSON pointer.
var podSpecPointers = map[string]string{
	"Deployment":  "/spec/template/spec",
	"StatefulSet": "/spec/template/spec",
	"DaemonSet":   "/spec/template/spec",
	"Job":         "/spec/template/spec",
	"CronJob":     "/spec/jobTemplate/spec/template/spec",
	"Pod":         "/spec",
}

var imagePointer = regexp.MustCompile(`^(.*)/(initContainers|containers)/(0|[1-9][0-9]*)/image$`)

// checkResponse holds the properties of every answer: an error is a 400 for
// a malformed object (never an allowed patch of garbage), and a patch only
// replaces image fields with the same reference pinned, and applies.
func checkResponse(t *testing.T, kind string, raw []byte, resp admission.Response) {
	t.Helper()
	_, pinned := podSpecPointers[kind]
	if (pinned && !json.Valid(raw)) || kind == "" {
		if resp.Allowed || resp.Result == nil || resp.Result.Code != http.StatusBadRequest || len(resp.Patches) > 0 {
			t.Fatalf("a malformed %q request was answered allowed=%v result=%+v with %d patches, want a 400", kind, resp.Allowed, resp.Result, len(resp.Patches))
		}
	}
	if !resp.Allowed {
		if resp.Result == nil {
			t.Fatalf("a refusal without a result: %+v", resp)
		}
		if len(resp.Patches) > 0 {
			t.Fatalf("a refusal carries a patch: %+v", resp.Patches)
		}
		switch resp.Result.Code {
		case http.StatusBadRequest, http.StatusForbidden:
		default:
			t.Fatalf("refused with code %d (%s), want 400 for a bad object or 403 for a refusal", resp.Result.Code, resp.Result.Message)
		}
		if resp.Result.Message == "" {
			t.Fatal("a refusal without a message")
		}
		return
	}
	if len(resp.Patches) == 0 {
		return
	}
	if !pinned {
		t.Fatalf("a %s, which imagepin does not pin, was patched: %+v", kind, resp.Patches)
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("patched an object that is not JSON: %v", err)
	}
	// What is written into image fields first, then that nothing else is
	// touched.
	for _, op := range resp.Patches {
		if m := imagePointer.FindStringSubmatch(op.Path); m == nil || m[1] != podSpecPointers[kind] {
			continue
		}
		to, ok := op.Value.(string)
		if !ok {
			t.Fatalf("patch sets %s to %#v, not a string", op.Path, op.Value)
		}
		from, ok := pointerValue(doc, op.Path).(string)
		if !ok {
			t.Fatalf("patch replaces %s, which is not a string in the object", op.Path)
		}
		// Only an override re-pins an image that names a digest.
		if base := drift.StripDigest(from); strings.Contains(from, "@") && ((base != overrideImage && base != badOverrideImage) || drift.DigestOfImage(to) != overrideDigest) {
			t.Fatalf("patch re-pins %q, which names a digest already, to %q", from, to)
		}
		if _, err := name.NewDigest(to); err != nil {
			t.Fatalf("patch writes %q, not a digest reference: %v", to, err)
		}
		if want, err := selection.PinnedImage(drift.StripDigest(from), drift.DigestOfImage(to)); err != nil || want != to {
			t.Fatalf("patch writes %q for %q, want that image pinned (%q, %v)", to, from, want, err)
		}
	}
	for _, op := range resp.Patches {
		if m := imagePointer.FindStringSubmatch(op.Path); op.Operation != "replace" || m == nil || m[1] != podSpecPointers[kind] {
			t.Fatalf("patch operation %s %s on a %s: imagepin replaces images only; whole patch: %+v", op.Operation, op.Path, kind, resp.Patches)
		}
	}
	ops, err := json.Marshal(resp.Patches)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := jsonpatch.DecodePatch(ops)
	if err != nil {
		t.Fatalf("the patch does not decode: %v\n%s", err, ops)
	}
	patched, err := patch.Apply(raw)
	if err != nil {
		t.Fatalf("the patch does not apply: %v\n%s", err, ops)
	}
	if _, _, err := decode(kind, patched); err != nil {
		t.Fatalf("the patched object does not decode: %v", err)
	}
}

// pointerValue returns what a JSON pointer of object keys and array
// indexes (no escapes) names in doc, or nil.
func pointerValue(doc any, pointer string) any {
	cur := doc
	for _, tok := range strings.Split(pointer, "/")[1:] {
		switch v := cur.(type) {
		case map[string]any:
			cur = v[tok]
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(v) {
				return nil
			}
			cur = v[i]
		default:
			return nil
		}
	}
	return cur
}

var hookKinds = []string{"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet", "Secret", "", "deployment"}

// seedObject is a well-formed object of kind with the images given as
// containers, labelled.
func seedObject(kind string, labels string, images ...string) string {
	var cs []string
	for i, img := range images {
		cs = append(cs, fmt.Sprintf(`{"name":"c%d","image":%q}`, i, img))
	}
	pod := fmt.Sprintf(`{"containers":[%s],"initContainers":[{"name":"init","image":"REG/app:v1"}]}`, strings.Join(cs, ","))
	meta := fmt.Sprintf(`"metadata":{"name":"x","namespace":"ns","labels":%s}`, labels)
	tmpl := fmt.Sprintf(`{"metadata":{"labels":%s},"spec":%s}`, labels, pod)
	switch kind {
	case "Pod":
		return fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod",%s,"spec":%s}`, meta, pod)
	case "CronJob":
		return fmt.Sprintf(`{"apiVersion":"batch/v1","kind":"CronJob",%s,"spec":{"schedule":"* * * * *","jobTemplate":{"spec":{"template":%s}}}}`, meta, tmpl)
	case "Job":
		return fmt.Sprintf(`{"apiVersion":"batch/v1","kind":"Job",%s,"spec":{"template":%s}}`, meta, tmpl)
	default:
		return fmt.Sprintf(`{"apiVersion":"apps/v1","kind":%q,%s,"spec":{"replicas":2,"selector":{"matchLabels":%s},"template":%s,"aNewerField":{"x":1}}}`, kind, meta, labels, tmpl)
	}
}

// FuzzHandle sends arbitrary objects of every kind through Handle: it never
// panics, refuses what does not decode with a 400, and any patch it
// returns replaces images only, with pinned references, and applies.
func FuzzHandle(f *testing.F) {
	for _, kind := range hookKinds {
		for _, obj := range []string{
			seedObject(kind, `{"app":"web"}`, "REG/app:v1", "REG/app:v1@"+strings.Repeat("a", 64), "REG/ghost:nope", overrideImage, badOverrideImage, "nginx:1.27"),
			seedObject(kind, `{"policy":"fail"}`, "REG/app:v1", badOverrideImage),
			seedObject(kind, `{}`, "REG/App:v1", "REG/app:", "REG//app:v1", "REG/app:v1 "),
			`{}`, `null`, `[]`, `"x"`, `{"spec":null}`, `{"spec":{"template":{"spec":{"containers":[null,{"image":7}]}}}}`,
			`{"spec":{"template":{"spec":{"containers":[{"image":"REG/app:v1"}]}}},"spec":{}}`,
			`{"Spec":{"Template":{"Spec":{"Containers":[{"Image":"REG/app:v1"}]}}}}`,
			`{"spec":{"containers":[{"name":"a","image":"REG/app:v1"}]},"kind":"Deployment"}`,
			`{"metadata":{"ownerReferences":[{"controller":true,"apiVersion":"v1","kind":"X","name":"y","uid":"z"}]},"spec":{"containers":[{"image":"REG/app:v1"}]}}`,
			`{"spec":{"replicas":1.5}}`, `{`, ``, "\x00",
		} {
			f.Add(kind, []byte(obj), []byte(nil))
		}
		// An update that re-applies the tag keeps the running digest.
		f.Add(kind, []byte(seedObject(kind, `{"app":"web"}`, "REG/app:v1")),
			[]byte(seedObject(kind, `{"app":"web"}`, "REG/app:v1@sha256:"+strings.Repeat("1", 64))))
		f.Add(kind, []byte(seedObject(kind, `{"app":"web"}`, "REG/app:v1")), []byte(`{not json`))
	}
	f.Fuzz(func(t *testing.T, kind string, raw, old []byte) {
		e := hookEnvFor(t)
		req := e.request(kind, raw, old)
		resp := e.h.Handle(context.Background(), req)
		checkResponse(t, kind, req.Object.Raw, resp)
	})
}

// FuzzDecode: decode never panics on any bytes for any kind, and an object
// it accepts has a pod spec to read.
func FuzzDecode(f *testing.F) {
	for _, kind := range hookKinds {
		f.Add(kind, []byte(seedObject(kind, `{"app":"web"}`, "REG/app:v1")))
		f.Add(kind, []byte(`{"spec":{"template":{"spec":{"containers":[{"image":"a"}]}}}}`))
		f.Add(kind, []byte(`null`))
	}
	f.Fuzz(func(t *testing.T, kind string, raw []byte) {
		obj, k, err := decode(kind, raw)
		if err != nil {
			if k != "" {
				t.Fatalf("decode failed (%v) but named kind %q", err, k)
			}
			return
		}
		if _, known := podSpecPointers[kind]; !known {
			if k != "" {
				t.Fatalf("decode(%q) = kind %q, want none for a kind imagepin does not pin", kind, k)
			}
			return
		}
		if k == "" || obj.meta() == nil || len(obj.templates) == 0 {
			t.Fatalf("decode(%q) accepted the object without a kind, metadata or pod spec", kind)
		}
		for _, c := range obj.containers() {
			if !imagePointer.MatchString(c.pointer) {
				t.Fatalf("container %s has image pointer %q", c.name, c.pointer)
			}
		}
		_ = obj.meta().GetLabels()
	})
}

// Well-formed objects of every kind are pinned by a patch that replaces
// exactly their image fields.
func TestHandlePatchesOnlyImages(t *testing.T) {
	e := hookEnvFor(t)
	for kind, pointer := range podSpecPointers {
		t.Run(kind, func(t *testing.T) {
			raw := []byte(seedObject(kind, `{"app":"web"}`, "REG/app:v1", overrideImage, "nginx:1.27"))
			req := e.request(kind, raw, nil)
			resp := e.h.Handle(context.Background(), req)
			checkResponse(t, kind, req.Object.Raw, resp)
			got := map[string]any{}
			for _, op := range resp.Patches {
				got[op.Path] = op.Value
			}
			want := map[string]any{
				pointer + "/initContainers/0/image": e.reg.Image("app:v1") + "@" + e.digest,
				pointer + "/containers/0/image":     e.reg.Image("app:v1") + "@" + e.digest,
				pointer + "/containers/1/image":     overrideImage + "@" + overrideDigest,
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("patches %v\nwant    %v", got, want)
			}
		})
	}
}

// A resolver limited by --allowed-registries admits an image of another
// registry unpinned with a warning saying so (failurePolicy: Ignore), and
// sends it nothing.
func TestAdmissionWarnsOfARegistryNotAllowed(t *testing.T) {
	e := hookEnvFor(t)
	limited, err := registry.New(registry.Options{InsecureRegistries: []string{e.reg.Host}, AllowedRegistries: []string{"registry.example.com"}, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{Reader: e.h.Reader, Resolver: limited, Keychains: e.h.Keychains, Budget: 2 * time.Second}
	heads, gets := e.reg.ManifestRequests()
	req := e.request("Deployment", []byte(seedObject("Deployment", `{"app":"web"}`, "REG/app:v1")), nil)
	resp := h.Handle(context.Background(), req)
	if !resp.Allowed || len(resp.Patches) != 0 {
		t.Fatalf("allowed %v with %d patches; want admitted unpinned", resp.Allowed, len(resp.Patches))
	}
	if len(resp.Warnings) == 0 || !strings.Contains(strings.Join(resp.Warnings, "\n"), "is not in --allowed-registries; not contacted") {
		t.Fatalf("warnings %q do not say the registry is not allowed", resp.Warnings)
	}
	if h2, g2 := e.reg.ManifestRequests(); h2 != heads || g2 != gets {
		t.Fatalf("the registry not allowed got %d HEAD and %d GET", h2-heads, g2-gets)
	}
}

// requestKind is the kind a request names, with its group and version as
// the API server sends them for the table's kinds.
func requestKind(kind string) metav1.GroupVersionKind {
	gvk := metav1.GroupVersionKind{Kind: kind}
	if k := workload.KindNamed(imagesv1alpha1.WorkloadKind(kind)); k != nil {
		gvk.Group, gvk.Version = k.GVK.Group, k.GVK.Version
	}
	return gvk
}
