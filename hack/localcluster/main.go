// Command localcluster runs the local control plane the demo and local
// development use, from the binaries `make` builds into bin/: etcd and
// kube-apiserver (through envtest) and kube-controller-manager, so that
// Deployments make ReplicaSets and Pods. It can install CRDs, writes an
// admin kubeconfig into --dir, prints its path and runs until interrupted,
// then stops every process it started.
//
// No kubelet runs here: Pods stay Pending until a node simulator (see
// issue 7) binds them.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/imagepin/imagepin/internal/testenv"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func run() error {
	assets := flag.String("assets", testenv.AssetsDir(), "directory holding etcd, kube-apiserver and kube-controller-manager")
	crds := flag.String("crds", "", "directory of CRDs to install at start; empty installs none")
	dir := flag.String("dir", "tmp/localcluster", "directory for the admin kubeconfig and the logs")
	withKCM := flag.Bool("controller-manager", true, "also run kube-controller-manager")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}

	env := &envtest.Environment{BinaryAssetsDirectory: *assets}
	if *crds != "" {
		env.CRDDirectoryPaths = []string{*crds}
		env.ErrorIfCRDPathMissing = true
	}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("start etcd and kube-apiserver from %s: %w", *assets, err)
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "localcluster: stop control plane:", err)
		}
	}()

	cluster := &testenv.Env{Env: env, Config: cfg}
	kubeconfig, err := cluster.Kubeconfig(*dir)
	if err != nil {
		return err
	}
	if *withKCM {
		stopKCM, err := cluster.StartControllerManager(*dir)
		if err != nil {
			return err
		}
		defer stopKCM()
	}

	if abs, err := filepath.Abs(kubeconfig); err == nil {
		kubeconfig = abs
	}
	fmt.Printf("local cluster up at %s\nKUBECONFIG=%s\n", cfg.Host, kubeconfig)
	<-ctx.Done()
	return nil
}
