package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imagepin/imagepin/internal/testenv"
)

// config/default installs on a real API server as `kubectl apply -k` does,
// and grants the manager's service account what the manager reads and
// writes, and no more.
func TestInstallFromConfigDefault(t *testing.T) {
	// A control plane of its own: the story's cluster runs nodes, which
	// would try to run the manager Deployment config/default makes.
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	kubeconfig, err := env.Kubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	kubectl := func(t *testing.T, stdin []byte, args ...string) string {
		t.Helper()
		return kubectlAt(t, kubeconfig, stdin, args...)
	}
	manifests := kubectl(t, nil, "kustomize", "config/default")
	kubectl(t, []byte(manifests), "apply", "--server-side", "-f", "-")

	for _, obj := range []string{
		"crd/imagepins.images.imagepin.dev",
		"namespace/imagepin-system",
		"clusterrole/imagepin-manager-role",
		"-n imagepin-system deployment/imagepin-controller-manager",
		"-n imagepin-system role/imagepin-leader-election-role",
	} {
		kubectl(t, nil, append([]string{"get", "-o", "name"}, strings.Fields(obj)...)...)
	}

	// The overlays with the webhook build, and the one without cert-manager
	// (whose CRDs this cluster lacks) is accepted by the API server.
	kubectl(t, nil, "kustomize", "config/with-webhook")
	withWebhook := kubectl(t, nil, "kustomize", "config/with-webhook-own-certs")
	if !strings.Contains(withWebhook, "kind: MutatingWebhookConfiguration") || !strings.Contains(withWebhook, "path: /mutate-imagepin") {
		t.Fatalf("config/with-webhook-own-certs has no webhook configuration:\n%s", withWebhook)
	}
	kubectl(t, []byte(withWebhook), "apply", "--server-side", "--dry-run=server", "-f", "-")
	// The overlay with the push-notification receiver serves it, from the
	// Secret imagepin-receiver, behind Service imagepin-receiver.
	withReceiver := kubectl(t, nil, "kustomize", "config/with-receiver")
	for _, want := range []string{"--receiver-bind-address=:9292", "--receiver-secret-dir=/etc/imagepin/receiver", "secretName: imagepin-receiver", "name: imagepin-receiver"} {
		if !strings.Contains(withReceiver, want) {
			t.Fatalf("config/with-receiver lacks %q:\n%s", want, withReceiver)
		}
	}
	kubectl(t, []byte(withReceiver), "apply", "--server-side", "--dry-run=server", "-f", "-")
	// The receiver's component added to the webhook's overlay keeps the
	// webhook's certificate, flags and port.
	both := t.TempDir()
	withWebhookDir, err := filepath.Rel(both, filepath.Join(testenv.RepoRoot(), "config", "with-webhook"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(both, "kustomization.yaml"), fmt.Appendf(nil, "resources: [%s]\ncomponents: [%s]\n",
		withWebhookDir, filepath.Join(filepath.Dir(withWebhookDir), "receiver")), 0o600); err != nil {
		t.Fatal(err)
	}
	composed := kubectl(t, nil, "kustomize", "--load-restrictor=LoadRestrictionsNone", both)
	for _, want := range []string{"--webhook-cert-dir=", "secretName: imagepin-webhook-server-cert", "containerPort: 9443", "--receiver-bind-address=:9292", "secretName: imagepin-receiver", "containerPort: 9292"} {
		if !strings.Contains(composed, want) {
			t.Fatalf("config/with-webhook with config/receiver lacks %q:\n%s", want, composed)
		}
	}

	sa := "system:serviceaccount:imagepin-system:imagepin-controller-manager"
	tests := []struct {
		verb, resource, namespace string
		want                      bool
	}{
		{"list", "imagepins.images.imagepin.dev", "", true},
		{"watch", "deployments.apps", "", true},
		{"list", "cronjobs.batch", "", true},
		{"patch", "imagepins.images.imagepin.dev --subresource=status", "", true},
		{"watch", "pods", "", true},
		{"list", "replicasets.apps", "", true},
		{"watch", "secrets", "", true},
		{"list", "serviceaccounts", "", true},
		// spec.verify's keys and trusted root, read live (list and watch
		// of Secrets, for pull secrets, could read them already).
		{"get", "secrets", "", true},
		{"get", "configmaps", "", true},
		{"list", "configmaps", "", false},
		{"create", "events.events.k8s.io", "", true},
		{"create", "leases.coordination.k8s.io", "imagepin-system", true},
		{"patch", "deployments.apps", "", true},
		{"patch", "cronjobs.batch", "", true},
		// Nothing it does not use.
		{"update", "deployments.apps", "", false},
		{"patch", "jobs.batch", "", false},
		{"delete", "deployments.apps", "", false},
		{"patch", "pods", "", false},
		{"delete", "imagepins.images.imagepin.dev", "", false},
		{"create", "secrets", "", false},
		{"update", "imagepins.images.imagepin.dev", "", false},
		{"create", "leases.coordination.k8s.io", "default", false},
		{"delete", "leases.coordination.k8s.io", "imagepin-system", false},
	}
	for _, tt := range tests {
		args := append([]string{"auth", "can-i", tt.verb}, strings.Fields(tt.resource)...)
		args = append(args, "--as", sa)
		if tt.namespace != "" {
			args = append(args, "-n", tt.namespace)
		} else {
			args = append(args, "--all-namespaces")
		}
		got := canI(t, kubeconfig, args)
		if got != tt.want {
			t.Errorf("service account can %s %s (namespace %q): %v, want %v", tt.verb, tt.resource, tt.namespace, got, tt.want)
		}
	}
}

// canI runs `kubectl auth can-i`, which exits 1 for "no".
func canI(t *testing.T, kubeconfig string, args []string) bool {
	t.Helper()
	bin := filepath.Join(testenv.AssetsDir(), "kubectl")
	out, err := exec.Command(bin, append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
	answer := strings.TrimSpace(string(out))
	switch {
	case err == nil && answer == "yes":
		return true
	case answer == "no" || strings.HasPrefix(answer, "no\n") || strings.HasPrefix(answer, "no -"):
		return false
	}
	t.Fatalf("kubectl %s: %v: %s", strings.Join(args, " "), err, answer)
	return false
}
