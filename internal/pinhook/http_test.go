package pinhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/workload"
)

// admissionReview wraps an object in an AdmissionReview as the API server
// sends it.
func admissionReview(kind, operation string, object string) string {
	group := "apps"
	if k := workload.KindNamed(imagesv1alpha1.WorkloadKind(kind)); k != nil {
		group = k.GVK.Group
	}
	return fmt.Sprintf(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":%q,"version":"v1","kind":%q},"resource":{"group":%q,"version":"v1","resource":"x"},"namespace":%q,"operation":%q,"object":%s}}`,
		group, kind, group, hookNS, operation, object)
}

// Malformed AdmissionReviews sent to the webhook's HTTP handler, as the
// manager serves it, are answered with an error, never a panic (panics
// are not recovered here, so one fails the test) and never a patch.
func TestServeHTTPMalformedReviews(t *testing.T) {
	e := hookEnvFor(t)
	wh := (&webhook.Admission{Handler: e.h}).WithRecoverPanic(false)

	many := make([]string, 0, 20000)
	for i := range cap(many) {
		many = append(many, fmt.Sprintf(`{"name":"c%d","image":"REG/app:v1"}`, i))
	}
	tooBig := `{"spec":{"template":{"spec":{"containers":[{"name":"a","image":"` + strings.Repeat("a", 8<<20) + `"}]}}}}`

	tests := []struct {
		name string
		body string
		code int32
		// contentType defaults to application/json.
		contentType string
	}{
		{name: "not JSON", body: `{"apiVersion":`, code: http.StatusBadRequest},
		{name: "binary", body: "\x00\xff\xfe", code: http.StatusBadRequest},
		{name: "empty body", body: "", code: http.StatusBadRequest},
		{name: "not an AdmissionReview", body: `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}`, code: http.StatusBadRequest},
		{name: "empty AdmissionReview", body: `{}`, code: http.StatusBadRequest},
		{name: "AdmissionReview without a request", body: `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, code: http.StatusBadRequest},
		{name: "wrong content type", body: admissionReview("Deployment", "CREATE", seedObject("Deployment", `{}`, "REG/app:v1")), contentType: "text/plain", code: http.StatusBadRequest},
		{name: "object is not JSON of the kind", body: admissionReview("Deployment", "CREATE", `"a string"`), code: http.StatusBadRequest},
		{name: "object is an array", body: admissionReview("Pod", "CREATE", `[{"spec":{}}]`), code: http.StatusBadRequest},
		{name: "object missing", body: admissionReview("Deployment", "CREATE", `null`), code: http.StatusBadRequest},
		{name: "object of the wrong kind", body: admissionReview("Deployment", "CREATE", seedObject("Pod", `{}`, "REG/app:v1")), code: http.StatusBadRequest},
		{name: "wrong field type", body: admissionReview("Deployment", "CREATE", `{"spec":{"replicas":"two"}}`), code: http.StatusBadRequest},
		{name: "duplicate field", body: admissionReview("Pod", "CREATE", `{"spec":{"containers":[{"name":"a","image":"REG/app:v1"}]},"spec":{}}`), code: http.StatusBadRequest},
		{name: "no operation", body: strings.Replace(admissionReview("Pod", "CREATE", `{}`), `"operation":"CREATE",`, "", 1), code: http.StatusBadRequest},
		{name: "huge object", body: admissionReview("Deployment", "CREATE", tooBig), code: http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := serve(t, wh, e, tt.body, tt.contentType)
			if resp.Allowed || resp.Result == nil || resp.Result.Code != tt.code || resp.Result.Message == "" || len(resp.Patch) > 0 {
				t.Fatalf("response allowed=%v result=%+v patch=%s, want refused with code %d and a message", resp.Allowed, resp.Result, resp.Patch, tt.code)
			}
		})
	}

	// A large object below the limit is served: each of its 20000
	// containers pinned by its own replace.
	t.Run("large object", func(t *testing.T) {
		obj := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"},"spec":{"containers":[` + strings.Join(many, ",") + `]}}`
		resp := serve(t, wh, e, admissionReview("Pod", "CREATE", obj), "")
		if !resp.Allowed || resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("response allowed=%v result=%+v, want a patch", resp.Allowed, resp.Result)
		}
		var ops []map[string]any
		if err := json.Unmarshal(resp.Patch, &ops); err != nil || len(ops) != len(many) {
			t.Fatalf("%d patch operations (%v), want %d", len(ops), err, len(many))
		}
	})
}

func serve(t *testing.T, wh http.Handler, e *hookEnv, body, contentType string) admissionv1.AdmissionResponse {
	t.Helper()
	if contentType == "" {
		contentType = "application/json"
	}
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(http.MethodPost, Path, http.NoBody)
	} else {
		r = httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(e.expand([]byte(body))))
	}
	r.Header.Set("Content-Type", contentType)
	w := httptest.NewRecorder()
	wh.ServeHTTP(w, r)
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(w.Body.Bytes(), &review); err != nil || review.Response == nil {
		t.Fatalf("HTTP %d, body %.200q: not an AdmissionReview response (%v)", w.Code, w.Body.String(), err)
	}
	return *review.Response
}
