package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// ArgoRolloutsVersion is the Argo Rollouts `make` builds into
// bin/argo-rollouts-<version>; keep it in step with the Makefile's
// ARGO_ROLLOUTS_VERSION and hack/tools/argo-rollouts/go.mod.
const ArgoRolloutsVersion = "v1.10.0"

// ArgoRolloutsDir is where `make` puts Argo Rollouts' controller and CRDs.
func ArgoRolloutsDir() string {
	return filepath.Join(RepoRoot(), "bin", "argo-rollouts-"+ArgoRolloutsVersion)
}

// InstallArgoRolloutsCRDs installs Argo Rollouts' CRDs (Rollout,
// AnalysisRun, …) of the pinned version. A missing file is an error, never a
// skip: run `make test`, which builds them.
func (e *Env) InstallArgoRolloutsCRDs() error {
	_, err := envtest.InstallCRDs(e.Config, envtest.CRDInstallOptions{
		Paths:              []string{filepath.Join(ArgoRolloutsDir(), "crds")},
		ErrorIfPathMissing: true,
	})
	if err != nil {
		return fmt.Errorf("install Argo Rollouts' CRDs from %s (run `make test`, which copies them there): %w", ArgoRolloutsDir(), err)
	}
	return nil
}

// StartArgoRollouts runs Argo Rollouts' controller against the control
// plane, logging into dir; its CRDs must be installed. It stops with the
// returned function.
func (e *Env) StartArgoRollouts(dir string) (stop func(), err error) {
	bin := filepath.Join(ArgoRolloutsDir(), "rollouts-controller")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("rollouts-controller not found in %s (run `make test`, which builds it): %w", ArgoRolloutsDir(), err)
	}
	kubeconfig, err := e.Kubeconfig(dir)
	if err != nil {
		return nil, err
	}
	metrics, err := freePort()
	if err != nil {
		return nil, err
	}
	healthz, err := freePort()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "rollouts-controller.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin,
		"--kubeconfig="+kubeconfig,
		"--leader-elect=false",
		"--metricsPort="+strconv.Itoa(metrics),
		"--healthzPort="+strconv.Itoa(healthz),
		"--loglevel=info",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("start rollouts-controller: %w", err)
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

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}
