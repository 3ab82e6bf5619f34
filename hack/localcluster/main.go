// Command localcluster runs the local control plane the demo and local
// development use, from the binaries `make` builds into bin/: etcd and
// kube-apiserver (through envtest) and kube-controller-manager, so that
// Deployments make ReplicaSets and Pods. It can install CRDs, writes an
// admin kubeconfig, prints its path and runs until interrupted, then stops
// every process it started.
//
// No kubelet runs here: Pods stay Pending until a node simulator (see
// issue 7) binds them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func run() error {
	assets := flag.String("assets", "bin/k8s/v1.37.2", "directory holding etcd, kube-apiserver and kube-controller-manager")
	crds := flag.String("crds", "", "directory of CRDs to install at start; empty installs none")
	kubeconfig := flag.String("kubeconfig-out", "tmp/localcluster/kubeconfig", "where to write the admin kubeconfig")
	withKCM := flag.Bool("controller-manager", true, "also run kube-controller-manager")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	env := &envtest.Environment{BinaryAssetsDirectory: *assets}
	if *crds != "" {
		env.CRDDirectoryPaths = []string{*crds}
		env.ErrorIfCRDPathMissing = true
	}
	if _, err := env.Start(); err != nil {
		return fmt.Errorf("start etcd and kube-apiserver from %s: %w", *assets, err)
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "localcluster: stop control plane:", err)
		}
	}()

	admin, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("add admin user: %w", err)
	}
	raw, err := admin.KubeConfig()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*kubeconfig), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(*kubeconfig, raw, 0o600); err != nil {
		return err
	}

	var kcm *exec.Cmd
	if *withKCM {
		if kcm, err = startControllerManager(*assets, *kubeconfig); err != nil {
			return err
		}
	}

	abs, _ := filepath.Abs(*kubeconfig)
	fmt.Printf("local cluster up at %s\nKUBECONFIG=%s\n", env.Config.Host, abs)

	var kcmDone <-chan error
	if kcm != nil {
		done := make(chan error, 1)
		go func() { done <- kcm.Wait() }()
		kcmDone = done
	}
	select {
	case <-ctx.Done():
	case err := <-kcmDone:
		return fmt.Errorf("kube-controller-manager exited (see its log beside the kubeconfig): %w", err)
	}
	if kcm != nil {
		_ = kcm.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-kcmDone:
			// SIGTERM makes it exit non-zero: the expected end.
			_ = err
		case <-time.After(10 * time.Second):
			_ = kcm.Process.Kill()
		}
	}
	return nil
}

// startControllerManager runs the controllers that turn workloads into Pods;
// the ones that need a cloud, node agents or service-account keys are left
// out.
func startControllerManager(assets, kubeconfig string) (*exec.Cmd, error) {
	bin := filepath.Join(assets, "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		return nil, errors.New("kube-controller-manager not found in " + assets + " (run `make control-plane`)")
	}
	logFile, err := os.Create(filepath.Join(filepath.Dir(kubeconfig), "kube-controller-manager.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin,
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig,
		"--authorization-kubeconfig="+kubeconfig,
		"--controllers=deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller,job-controller,cronjob-controller,garbage-collector-controller",
		"--leader-elect=false",
		"--secure-port=0",
		"--concurrent-deployment-syncs=5",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The controller manager dies with this process, even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kube-controller-manager: %w", err)
	}
	return cmd, nil
}
