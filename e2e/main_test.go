package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imagepin/imagepin/e2e/cluster"
	"github.com/imagepin/imagepin/internal/testenv"
)

// local is the cluster the story runs on: control plane, registry, nodes
// and the imagepin manager, as `make dev-cluster` starts them.
var local *cluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "imagepin-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	local, err = cluster.Start(ctx, cluster.Options{Dir: dir})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the local cluster:", err)
		return 1
	}
	code := m.Run()
	local.Stop()
	if code != 0 {
		// What the manager said is the first thing to read on a failure.
		for _, name := range []string{"imagepin.log", "kube-controller-manager.log"} {
			if out, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
				fmt.Fprintf(os.Stderr, "\n--- last lines of %s ---\n%s\n", name, tail(string(out), 60))
			}
		}
	}
	_ = os.RemoveAll(dir)
	return code
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// kubectlAt runs the kubectl from bin/ against kubeconfig, as a user does,
// and returns its standard output; it fails the test if kubectl fails.
func kubectlAt(t *testing.T, kubeconfig string, stdin []byte, args ...string) string {
	t.Helper()
	stdout, stderr, err := runKubectl(kubeconfig, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return stdout
}

func runKubectl(kubeconfig string, stdin []byte, args ...string) (stdout, stderr string, err error) {
	bin := filepath.Join(testenv.AssetsDir(), "kubectl")
	cmd := exec.Command(bin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Dir = testenv.RepoRoot()
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}
