// Package testenv starts the real control plane tests run against: etcd and
// kube-apiserver from bin/ (built by `make test`), through envtest, with the
// ImagePin CRD from config/crd/bases installed.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// KubernetesVersion is the version of the control plane `make` builds into
// bin/k8s/<version>; keep it in step with the Makefile's K8S_VERSION.
const KubernetesVersion = "v1.37.2"

// Env is a running control plane.
type Env struct {
	// Env is the envtest environment; tests that configure envtest
	// themselves (webhooks) wrap theirs here to use the helpers.
	Env    *envtest.Environment
	Config *rest.Config
	Scheme *runtime.Scheme
}

// RepoRoot returns the repository's root directory.
func RepoRoot() string {
	_, file, _, _ := goruntime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// AssetsDir returns where the control-plane binaries are: $KUBEBUILDER_ASSETS,
// or bin/k8s/<version> in the repository.
func AssetsDir() string {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir
	}
	return filepath.Join(RepoRoot(), "bin", "k8s", KubernetesVersion)
}

// Scheme returns a scheme with the built-in types and the ImagePin API.
func Scheme() *runtime.Scheme {
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(imagesv1alpha1.AddToScheme(scheme))
	return scheme
}

// Start starts etcd and kube-apiserver and installs the CRDs. A missing
// binary is an error, never a skip: run `make test`, which builds them.
func Start() (*Env, error) {
	assets := AssetsDir()
	for _, bin := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			return nil, fmt.Errorf("control plane binary %s not found in %s (run `make test`, which builds it): %w", bin, assets, err)
		}
	}
	scheme := Scheme()
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
	}
	// A pod's status says which digest an image volume mounted only with
	// this alpha gate (Kubernetes 1.35+): on, as on a cluster that wants
	// drift of image volumes reported.
	env.ControlPlane.GetAPIServer().Configure().Append("feature-gates", "ImageVolumeWithDigest=true")
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("start envtest control plane from %s: %w", assets, err)
	}
	return &Env{Env: env, Config: cfg, Scheme: scheme}, nil
}

// Kubeconfig writes a kubeconfig for a cluster admin into dir and returns
// its path, for tests that drive kubectl.
func (e *Env) Kubeconfig(dir string) (string, error) {
	admin, err := e.Env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return "", fmt.Errorf("add admin user: %w", err)
	}
	raw, err := admin.KubeConfig()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "kubeconfig")
	return path, os.WriteFile(path, raw, 0o600)
}

// StartControllerManager runs kube-controller-manager from the assets
// directory against the control plane, with the controllers that turn
// workloads into ReplicaSets, Jobs and Pods, so that a Deployment rolls out
// for real; extra names more controllers, as --controllers spells them. It
// stops with the returned function.
func (e *Env) StartControllerManager(dir string, extra ...string) (stop func(), err error) {
	kubeconfig, err := e.Kubeconfig(dir)
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(AssetsDir(), "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("kube-controller-manager not found in %s (run `make test`, which builds it): %w", AssetsDir(), err)
	}
	return startLogged(bin, filepath.Join(dir, "kube-controller-manager.log"),
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig,
		"--authorization-kubeconfig="+kubeconfig,
		"--controllers="+strings.Join(append([]string{"deployment-controller", "replicaset-controller", "statefulset-controller",
			"daemonset-controller", "job-controller", "cronjob-controller", "garbage-collector-controller"}, extra...), ","),
		"--leader-elect=false",
		"--secure-port=0",
	)
}

// startLogged runs bin with args, its output into logPath, killed if the
// test binary dies; stop sends SIGTERM, then SIGKILL after 10 s.
func startLogged(bin, logPath string, args ...string) (stop func(), err error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("start %s: %w", filepath.Base(bin), err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	return func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = logFile.Close()
	}, nil
}

// Stop stops the control plane.
func (e *Env) Stop() error {
	if e == nil || e.Env == nil {
		return errors.New("no control plane to stop")
	}
	return e.Env.Stop()
}
