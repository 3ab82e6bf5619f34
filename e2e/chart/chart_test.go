// Package chart tests charts/imagepin with the real helm binary (built
// into bin/ from the module proxy) against envtest's real API server.
package chart

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

// HelmVersion is the helm `make` builds into bin/helm-<version>; keep it
// in step with the Makefile's HELM_VERSION.
const HelmVersion = "v4.3.1"

var chartDir = filepath.Join(testenv.RepoRoot(), "charts", "imagepin")

// helm runs bin/helm with args, in a home of its own, against kubeconfig
// (if set), and returns stdout, stderr and its error.
func helm(t *testing.T, kubeconfig string, args ...string) (string, string, error) {
	t.Helper()
	bin := filepath.Join(testenv.RepoRoot(), "bin", "helm-"+HelmVersion)
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("helm not found at %s (run `make test`, which builds it): %v", bin, err)
	}
	home := t.TempDir()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+home+"/config", "HELM_CACHE_HOME="+home+"/cache", "HELM_DATA_HOME="+home+"/data")
	if kubeconfig != "" {
		cmd.Env = append(cmd.Env, "KUBECONFIG="+kubeconfig)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

func mustHelm(t *testing.T, kubeconfig string, args ...string) string {
	t.Helper()
	out, errOut, err := helm(t, kubeconfig, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func TestHelmLintIsClean(t *testing.T) {
	for _, set := range [][]string{nil, {"--set", "webhook.enabled=true"}, {"--set", "webhook.enabled=true,webhook.certificate.source=certManager,metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true"}} {
		out := mustHelm(t, "", append([]string{"lint", "--strict", chartDir}, set...)...)
		if !strings.Contains(out, "0 chart(s) failed") {
			t.Errorf("helm lint %v:\n%s", set, out)
		}
	}
}

// docs splits a multi-document YAML stream into objects by kind/name.
func docs(t *testing.T, stream string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, d := range strings.Split(stream, "\n---") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			t.Fatalf("%v in:\n%s", err, d)
		}
		if m == nil {
			continue
		}
		md, _ := m["metadata"].(map[string]any)
		out[fmt.Sprintf("%s/%s", m["kind"], md["name"])] = m
	}
	return out
}

func readYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(bytes.TrimPrefix(raw, []byte("---\n")), &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// One source of truth: what the chart renders of RBAC, CRDs and the
// webhook's rules is config/'s, generated from the code's markers.
func TestTemplateRendersWhatConfigHolds(t *testing.T) {
	out := mustHelm(t, "", "template", "imagepin", chartDir, "--namespace", "imagepin-system", "--include-crds",
		"--set", "webhook.enabled=true,metrics.prometheusRule.enabled=true,metrics.serviceMonitor.enabled=true,metrics.dashboard.enabled=true")
	got := docs(t, out)
	config := filepath.Join(testenv.RepoRoot(), "config")
	for _, tc := range []struct{ object, file, field string }{
		{"ClusterRole/imagepin-manager", "rbac/role.yaml", "rules"},
		{"Role/imagepin-leader-election", "rbac/leader_election_role.yaml", "rules"},
		{"CustomResourceDefinition/imagepins.images.imagepin.dev", "crd/bases/images.imagepin.dev_imagepins.yaml", "spec"},
		{"CustomResourceDefinition/clusterimagepins.images.imagepin.dev", "crd/bases/images.imagepin.dev_clusterimagepins.yaml", "spec"},
	} {
		obj := got[tc.object]
		if obj == nil {
			t.Errorf("helm template renders no %s", tc.object)
			continue
		}
		want := readYAML(t, filepath.Join(config, tc.file))
		if !reflect.DeepEqual(obj[tc.field], want[tc.field]) {
			t.Errorf("%s.%s differs from config/%s", tc.object, tc.field, tc.file)
		}
	}
	wh := got["MutatingWebhookConfiguration/imagepin"]
	generated := readYAML(t, filepath.Join(config, "webhook", "manifests.yaml"))
	gw := generated["webhooks"].([]any)[0].(map[string]any)
	if wh == nil {
		t.Fatal("no MutatingWebhookConfiguration rendered")
	}
	w := wh["webhooks"].([]any)[0].(map[string]any)
	if !reflect.DeepEqual(w["rules"], gw["rules"]) || w["name"] != gw["name"] {
		t.Errorf("the webhook's rules differ from config/webhook/manifests.yaml")
	}
	for _, kind := range []string{"PrometheusRule/imagepin", "ServiceMonitor/imagepin", "ConfigMap/imagepin-dashboard", "PodDisruptionBudget/imagepin", "Secret/imagepin-webhook-cert"} {
		if got[kind] == nil {
			t.Errorf("no %s rendered", kind)
		}
	}
	dep := got["Deployment/imagepin"]
	sc := dep["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)["securityContext"].(map[string]any)
	if sc["allowPrivilegeEscalation"] != false || sc["readOnlyRootFilesystem"] != true {
		t.Errorf("the manager's security context is not restricted: %v", sc)
	}
}

func TestBadValuesAreRefusedByTheSchema(t *testing.T) {
	for _, tc := range []struct{ set, says string }{
		{"replicas=0", "replicas"},
		{"registry.timeout=ten seconds", "timeout"},
		{"webhook.certificate.source=vault", "source"},
		{"webhook.failurePolicy=Retry", "failurePolicy"},
		{"registrry.qps=5", "registrry"},
		{"webhook.enabled=true,webhook.certificate.source=secret", "secretName"},
	} {
		_, errOut, err := helm(t, "", "template", "imagepin", chartDir, "--set", tc.set)
		if err == nil {
			t.Errorf("--set %s was accepted", tc.set)
			continue
		}
		if !strings.Contains(errOut, "schema") || !strings.Contains(errOut, tc.says) {
			t.Errorf("--set %s refused without naming %s in a schema error:\n%s", tc.set, tc.says, errOut)
		}
	}
}

// helm install onto the real API server creates what it should, with the
// webhook's caBundle the CA of its serving certificate; upgrade keeps the
// certificate; uninstall leaves the CRDs and the ImagePins.
func TestInstallUpgradeUninstall(t *testing.T) {
	ctx := context.Background()
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	kubeconfig, err := env.Kubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, admissionregistrationv1.AddToScheme, apiextensionsv1.AddToScheme, imagesv1alpha1.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	k8s, err := client.New(env.Config, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	// envtest installs the CRDs itself: remove them, so that the chart's
	// are the ones installed.
	for _, name := range []string{"imagepins.images.imagepin.dev", "clusterimagepins.images.imagepin.dev"} {
		crd := &apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: name}}
		_ = k8s.Delete(ctx, crd)
		// Deleting a CRD finishes later (its objects are removed first):
		// wait, or it would take the chart's CRD of the same name with it.
		deadline := time.Now().Add(30 * time.Second)
		for k8s.Get(ctx, client.ObjectKeyFromObject(crd), crd) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("CRD %s is still there 30s after its deletion", name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	install := []string{"--namespace", "imagepin-system", "--set", "webhook.enabled=true"}
	mustHelm(t, kubeconfig, append([]string{"install", "imagepin", chartDir, "--create-namespace"}, install...)...)
	for _, obj := range []client.Object{
		&apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: "imagepins.images.imagepin.dev"}},
		&apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: "clusterimagepins.images.imagepin.dev"}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "imagepin-system", Name: "imagepin"}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "imagepin-system", Name: "imagepin"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "imagepin-system", Name: "imagepin-webhook"}},
	} {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			t.Errorf("after helm install: %T %s: %v", obj, obj.GetName(), err)
		}
	}
	caBundle, tlsCrt := webhookTrust(t, k8s)

	// An ImagePin, to outlive an uninstall.
	pin := &imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"}}
	if err := k8s.Create(ctx, pin); err != nil {
		t.Fatal(err)
	}

	mustHelm(t, kubeconfig, append([]string{"upgrade", "imagepin", chartDir, "--set", "replicas=3"}, install...)...)
	ca2, crt2 := webhookTrust(t, k8s)
	if !bytes.Equal(caBundle, ca2) || !bytes.Equal(tlsCrt, crt2) {
		t.Error("helm upgrade replaced the generated webhook certificate")
	}
	var d appsv1.Deployment
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: "imagepin-system", Name: "imagepin"}, &d); err != nil || *d.Spec.Replicas != 3 {
		t.Errorf("the upgrade did not take: %v %v", err, d.Spec.Replicas)
	}

	mustHelm(t, kubeconfig, "uninstall", "imagepin", "--namespace", "imagepin-system")
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(&d), &appsv1.Deployment{}); err == nil {
		t.Error("the Deployment outlived helm uninstall")
	}
	if err := k8s.Get(ctx, client.ObjectKey{Name: "imagepins.images.imagepin.dev"}, &apiextensionsv1.CustomResourceDefinition{}); err != nil {
		t.Errorf("helm uninstall removed the ImagePin CRD: %v", err)
	}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(pin), &imagesv1alpha1.ImagePin{}); err != nil {
		t.Errorf("helm uninstall removed an ImagePin: %v", err)
	}
}

// webhookTrust returns the registration's caBundle and the serving
// certificate, after checking that the one verifies the other for the
// webhook Service's name.
func webhookTrust(t *testing.T, k8s client.Client) (caBundle, tlsCrt []byte) {
	t.Helper()
	ctx := context.Background()
	var wh admissionregistrationv1.MutatingWebhookConfiguration
	if err := k8s.Get(ctx, client.ObjectKey{Name: "imagepin"}, &wh); err != nil {
		t.Fatal(err)
	}
	caBundle = wh.Webhooks[0].ClientConfig.CABundle
	if len(caBundle) == 0 {
		t.Fatal("the MutatingWebhookConfiguration has no caBundle")
	}
	var secret corev1.Secret
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: "imagepin-system", Name: "imagepin-webhook-cert"}, &secret); err != nil {
		t.Fatal(err)
	}
	tlsCrt = secret.Data["tls.crt"]
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caBundle) {
		t.Fatal("the caBundle holds no certificate")
	}
	block, _ := pem.Decode(tlsCrt)
	if block == nil {
		t.Fatal("tls.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "imagepin-webhook.imagepin-system.svc"}); err != nil {
		t.Fatalf("the serving certificate does not verify against the caBundle: %v", err)
	}
	return caBundle, tlsCrt
}
