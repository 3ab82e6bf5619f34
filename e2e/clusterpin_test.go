package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

// Issue 16, as it will be checked: one ClusterImagePin in Pin mode pins
// Deployments in three namespaces and in a fourth created afterwards,
// leaves an excluded namespace alone and yields to an ImagePin in Observe
// mode where a namespace has one; `kubectl imagepin drift -A` shows a
// moved tag and a split replica set across namespaces in one table, and
// `--fail-on MixedReplicas` exits 1 while the split lasts.
func TestClusterImagePinThroughTheBinary(t *testing.T) {
	ctx := context.Background()
	const label = "imagepin-e2e"
	image := local.Registry.Host + "/cluster/app:v1"
	build1 := push(t, "cluster/app:v1", "cluster build 1")
	pinned := image + "@" + string(build1)

	labelled := func(ns string) {
		t.Helper()
		useNamespace(t, ns, true)
		var n corev1.Namespace
		if err := local.Client.Get(ctx, client.ObjectKey{Name: ns}, &n); err != nil {
			t.Fatal(err)
		}
		before := n.DeepCopy()
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		n.Labels[label] = "cluster"
		if err := local.Client.Patch(ctx, &n, client.MergeFrom(before)); err != nil {
			t.Fatal(err)
		}
	}
	selected := []string{"cpin-a", "cpin-b", "cpin-c"}
	for _, ns := range selected {
		labelled(ns)
		apply(t, ns, deploymentYAML("app", image, 1))
	}
	labelled("cpin-excluded")
	apply(t, "cpin-excluded", deploymentYAML("app", image, 1))
	// A team that opts out with an ImagePin in Observe mode; its replicas
	// pull the tag on every start, so that a re-push splits them.
	labelled("cpin-team")
	apply(t, "cpin-team", strings.Replace(deploymentYAML("app", image, 2), "        image: ", "        imagePullPolicy: Always\n        image: ", 1))
	apply(t, "cpin-team", imagePinYAML("Observe", "{matchLabels: {app: web}}"))

	apply(t, "default", fmt.Sprintf(`apiVersion: images.imagepin.dev/v1alpha1
kind: ClusterImagePin
metadata: {name: e2e-platform}
spec:
  namespaceSelector: {matchLabels: {%s: cluster}}
  excludeNamespaces: [cpin-excluded, kube-system, imagepin-system]
  selector: {matchLabels: {app: web}}
  mode: Pin
  interval: 10m
`, label))
	t.Cleanup(func() {
		_ = local.Client.Delete(ctx, &imagesv1alpha1.ClusterImagePin{ObjectMeta: metav1.ObjectMeta{Name: "e2e-platform"}})
	})
	imageIn := func(ns string) string {
		var d appsv1.Deployment
		if err := local.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "app"}, &d); err != nil {
			return err.Error()
		}
		return d.Spec.Template.Spec.Containers[0].Image
	}
	pinnedIn := func(namespaces ...string) func() error {
		return func() error {
			for _, ns := range namespaces {
				if got := imageIn(ns); got != pinned {
					return fmt.Errorf("%s/app names %s", ns, got)
				}
			}
			return nil
		}
	}
	poll(t, "the selected namespaces pinned", 60*time.Second, pinnedIn(selected...))

	// A namespace created afterwards is pinned too.
	labelled("cpin-later")
	apply(t, "cpin-later", deploymentYAML("app", image, 1))
	poll(t, "the namespace created afterwards pinned", 60*time.Second, pinnedIn("cpin-later"))
	for _, ns := range []string{"cpin-excluded", "cpin-team"} {
		if got := imageIn(ns); got != image {
			t.Errorf("%s/app names %s, want it left as %s", ns, got, image)
		}
	}
	waitPods(t, "cpin-team", "app", allRun(build1, 2))

	// The tag moves: the pinned namespaces show TagMoved; in the team's
	// namespace a replica that starts again pulls the new build, and the
	// replicas split.
	build2 := push(t, "cluster/app:v1", "cluster build 2")
	pods := waitPods(t, "cpin-team", "app", allRun(build1, 2))
	if err := local.Client.Delete(ctx, &pods[0]); err != nil {
		t.Fatal(err)
	}
	waitPods(t, "cpin-team", "app", func(ps []corev1.Pod) error {
		seen := map[string]int{}
		for _, p := range ps {
			seen[runningDigest(p)]++
		}
		if seen[string(build1)] != 1 || seen[string(build2)] != 1 {
			return fmt.Errorf("running %v", seen)
		}
		return nil
	})

	// One table across namespaces, through kubectl as a plugin.
	var out string
	poll(t, "drift -A to show the moved tag and the split", 60*time.Second, func() error {
		stdout, stderr, err := kubectlPlugin(t, "imagepin", "drift", "-A")
		if err != nil {
			return fmt.Errorf("%w: %s", err, stderr)
		}
		out = stdout
		for _, want := range []string{"cpin-a", "cpin-later", "TagMoved", "ClusterImagePin/e2e-platform", "cpin-team", "MixedReplicas", "ImagePin/web"} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("no %q in:\n%s", want, out)
			}
		}
		return nil
	})
	t.Logf("kubectl imagepin drift -A:\n%s", out)
	if strings.Contains(out, "cpin-excluded") {
		t.Errorf("the excluded namespace is in the table:\n%s", out)
	}
	if _, _, err := kubectlPlugin(t, "imagepin", "drift", "-A", "--fail-on", "MixedReplicas"); exitCode(err) != 1 {
		t.Errorf("--fail-on MixedReplicas while the split lasts: %v, want exit status 1", err)
	}

	// The split ends (the other replica starts again on the new build):
	// --fail-on passes.
	pods = waitPods(t, "cpin-team", "app", func([]corev1.Pod) error { return nil })
	for _, p := range pods {
		if runningDigest(p) == string(build1) {
			if err := local.Client.Delete(ctx, &p); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitPods(t, "cpin-team", "app", allRun(build2, 2))
	poll(t, "--fail-on MixedReplicas to pass once the split is over", 60*time.Second, func() error {
		if _, stderr, err := kubectlPlugin(t, "imagepin", "drift", "-n", "cpin-team", "--fail-on", "MixedReplicas"); err != nil {
			return fmt.Errorf("%w: %s", err, stderr)
		}
		return nil
	})
}

// kubectlPlugin runs kubectl with the imagepin binary on PATH as the
// plugin kubectl-imagepin.
func kubectlPlugin(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "plugins")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(local.Binary(), filepath.Join(dir, "kubectl-imagepin")); err != nil {
		t.Fatal(err)
	}
	// kubectl finds the plugin by the first words; the kubeconfig comes
	// from the environment.
	cmd := exec.Command(filepath.Join(testenv.AssetsDir(), "kubectl"), args...)
	cmd.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"), "KUBECONFIG="+local.Kubeconfig)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}
