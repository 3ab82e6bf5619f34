/*
Copyright 2026 The imagepin Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

// Command imagepin is the imagepin operator: without a subcommand it runs
// the manager (the ImagePin and ClusterImagePin controllers, metrics,
// health probes and, when enabled, the admission webhook and the push
// receiver); `imagepin pin` pins manifests in CI; `imagepin drift` (also
// the kubectl plugin `kubectl imagepin drift`) prints the drift across the
// cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"time"

	// The image has no CA bundle: these roots are used only when the
	// system has none, so that public registries' TLS is verified.
	_ "golang.org/x/crypto/x509roots/fallback"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/controllers"
	"github.com/imagepin/imagepin/internal/cli"
	"github.com/imagepin/imagepin/internal/driftcmd"
	"github.com/imagepin/imagepin/internal/pinhook"
	"github.com/imagepin/imagepin/internal/receiver"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/verify"
	"github.com/imagepin/imagepin/internal/workload"
)

// leaderElectionID names the Lease the managers of one installation share.
const leaderElectionID = "imagepin.images.imagepin.dev"

// leaderElectionIDOf is a shard's Lease: the replicas of one shard elect
// their leader among themselves, and shards run side by side.
func leaderElectionIDOf(shard string) string {
	if shard == "" {
		return leaderElectionID
	}
	return shard + "." + leaderElectionID
}

// validShard: a shard is a label value that also names its Lease, so a
// DNS label (lower case, digits, '-'), or empty.
func validShard(shard string) error {
	if shard == "" {
		return nil
	}
	if errs := validation.IsDNS1123Label(shard); len(errs) > 0 {
		return fmt.Errorf("--shard %q: %s", shard, strings.Join(errs, "; "))
	}
	return nil
}

func main() {
	// As the kubectl plugin kubectl-imagepin, the subcommand is os.Args[1]
	// too, and without one the binary says so: it never starts the manager.
	sub, args, plugin := driftcmd.Subcommand(os.Args)
	switch sub {
	case "pin":
		// A CI step holds little live data for a second or so: collect
		// more often and keep its peak small, unless GOGC says otherwise.
		if os.Getenv("GOGC") == "" {
			debug.SetGCPercent(50)
		}
		os.Exit(cli.Pin(context.Background(), args, os.Stdin, os.Stdout, os.Stderr))
	case "drift":
		os.Exit(driftcmd.Run(context.Background(), args, os.Stdout, os.Stderr))
	}
	if plugin {
		os.Exit(driftcmd.PluginUsage(os.Args, os.Stdout, os.Stderr))
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "imagepin:", err)
		os.Exit(1)
	}
}

// options are the manager's flags; README.md documents each.
type options struct {
	metricsAddr             string
	probeAddr               string
	pprofAddr               string
	leaderElect             bool
	leaderElectionNamespace string
	webhookCertDir          string
	webhookPort             int
	enableWebhooks          bool
	registry                registry.Options
	cloudKeychains          bool
	workers                 int
	shard                   string
	conflictBackoff         time.Duration
	workloadKinds           workload.KindFlag
	receiverAddr            string
	receiverCertDir         string
	receiverSecretDir       string
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func run(args []string) error {
	var o options
	// controller-runtime registers --kubeconfig on flag.CommandLine.
	fs := flag.CommandLine
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", `address the Prometheus metrics endpoint binds to; "0" disables it`)
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "address the /healthz and /readyz probes bind to")
	fs.StringVar(&o.pprofAddr, "pprof-bind-address", "", `address Go's profiles (/debug/pprof/) bind to, e.g. "127.0.0.1:6060"; off when empty`)
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "elect a leader so that only one of several managers reconciles")
	fs.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader-election Lease; defaults to the pod's namespace in a cluster")
	fs.StringVar(&o.webhookCertDir, "webhook-cert-dir", "", "directory holding the webhook's tls.crt and tls.key; defaults to <tmp>/k8s-webhook-server/serving-certs")
	fs.IntVar(&o.webhookPort, "webhook-port", webhook.DefaultPort, "port the admission webhook server listens on")
	fs.Float64Var(&o.registry.QPS, "registry-qps", registry.DefaultQPS, "requests per second imagepin sends to each registry host")
	fs.IntVar(&o.registry.Burst, "registry-burst", registry.DefaultBurst, "requests imagepin may send to one registry host in a burst")
	fs.DurationVar(&o.registry.Timeout, "registry-timeout", registry.DefaultTimeout, "deadline of one tag resolution, retries included, counted from its turn in the registry budget (--registry-qps)")
	fs.DurationVar(&o.registry.MaxStale, "registry-max-stale", registry.DefaultMaxStale, "how long after its last confirmation a digest is still reported when its registry fails; 0 never")
	fs.Var((*stringList)(&o.registry.InsecureRegistries), "insecure-registry", "registry host (host or host:port) reached over plain HTTP or TLS without verification; repeatable. The only registries ever reached over plain HTTP, loopback included")
	fs.Var((*registry.AllowedRegistriesFlag)(&o.registry.AllowedRegistries), "allowed-registries", registry.AllowedRegistriesUsage)
	fs.StringVar(&o.registry.CAFile, "registry-ca-file", "", "PEM file of CA certificates trusted for registries, added to the system roots (SSL_CERT_FILE also works)")
	fs.BoolVar(&o.cloudKeychains, "cloud-keychains", true, "also resolve with the manager's own ECR, Google and ACR credentials")
	fs.IntVar(&o.workers, "concurrent-checks", 8, "ImagePins checked at once, so that one slow registry does not delay the others")
	fs.StringVar(&o.shard, "shard", "", "reconcile only the ImagePins and ClusterImagePins labelled "+imagesv1alpha1.ShardLabel+"=<this value>, with a leader-election Lease of the shard's own; empty reconciles those without the label. The webhook pins for all of them")
	fs.DurationVar(&o.conflictBackoff, "conflict-backoff", time.Hour, "how long imagepin remembers reverts of its writes and first stops writing a workload reverted 3 times (doubling per block in a row, up to 24h)")
	fs.Var(&o.workloadKinds, "workload-kind", workload.KindFlagUsage)
	fs.StringVar(&o.receiverAddr, "receiver-bind-address", "0", `address the registry push-notification receiver binds to (e.g. ":9292"); "0" disables it`)
	fs.StringVar(&o.receiverCertDir, "receiver-cert-dir", "", "directory holding the receiver's tls.crt and tls.key; empty serves plain HTTP (TLS ended by an ingress)")
	fs.StringVar(&o.receiverSecretDir, "receiver-secret-dir", "/etc/imagepin/receiver", "directory (a mounted Secret) with one file per receiver endpoint holding its token or HMAC key; an endpoint without one is not served")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unknown command %q; run without arguments to start the manager, or see --help", fs.Arg(0))
	}
	if err := validShard(o.shard); err != nil {
		return err
	}
	o.enableWebhooks = !strings.EqualFold(os.Getenv("ENABLE_WEBHOOKS"), "false")
	// Before the manager reads the kind table (its cache, indexes and
	// watches).
	if err := workload.Configure(o.workloadKinds); err != nil {
		return err
	}

	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	return runManager(o)
}

func runManager(o options) error {
	setupLog := ctrl.Log.WithName("setup")

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(imagesv1alpha1.AddToScheme(scheme))

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: o.metricsAddr},
		HealthProbeBindAddress:  o.probeAddr,
		PprofBindAddress:        o.pprofAddr,
		LeaderElection:          o.leaderElect,
		LeaderElectionID:        leaderElectionIDOf(o.shard),
		LeaderElectionNamespace: o.leaderElectionNamespace,
		// Managers hand over at once when one stops cleanly.
		LeaderElectionReleaseOnCancel: true,
		WebhookServer: webhook.NewServer(webhook.Options{
			CertDir: o.webhookCertDir,
			Port:    o.webhookPort,
		}),
		Cache: workload.CacheOptions(),
		// Custom workload kinds (Argo Rollouts) are read as unstructured
		// objects: through the cache too, not one API list per check.
		Client: client.Options{Cache: &client.CacheOptions{Unstructured: true}},
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}

	o.registry.Metrics = registry.NewMetrics(ctrlmetrics.Registry)
	o.registry.UserAgent = "imagepin"
	if o.shard != "" {
		// A registry's access log tells the shards apart.
		o.registry.UserAgent = "imagepin shard/" + o.shard
	}
	resolver, err := registry.New(o.registry)
	if err != nil {
		return fmt.Errorf("registry resolver: %w", err)
	}
	// One for the controller and the webhook: the cloud keychains' tokens
	// are fetched once and shared.
	keychains := &registry.Keychains{Reader: mgr.GetClient(), Cloud: o.cloudKeychains}
	// One verifier too: a digest verified by a check is admitted from
	// its cache, and the other way round.
	verifier := verify.New(resolver, nil, verify.NewMetrics(ctrlmetrics.Registry))
	verifyLoader := &verify.Loader{Reader: mgr.GetAPIReader()}

	reconciler := &controllers.ImagePinReconciler{
		Client:    mgr.GetClient(),
		Resolver:  resolver,
		Keychains: keychains,
		Recorder:  mgr.GetEventRecorder("imagepin"),
		APIReader: mgr.GetAPIReader(),
		Workers:   o.workers,
		Shard:     o.shard,

		Verifier:     verifier,
		VerifyLoader: verifyLoader,

		ConflictBackoff: o.conflictBackoff,
	}
	if err := reconciler.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up the ImagePin controller: %w", err)
	}
	if err := (&controllers.ClusterImagePinReconciler{ImagePinReconciler: reconciler}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up the ClusterImagePin controller: %w", err)
	}
	if o.receiverAddr != "0" && o.receiverAddr != "" {
		if err := addReceiver(mgr, o, resolver, reconciler, verifier); err != nil {
			return err
		}
	}
	if o.enableWebhooks {
		mgr.GetWebhookServer().Register(pinhook.Path, &webhook.Admission{Handler: &pinhook.Handler{
			Reader:    mgr.GetClient(),
			Resolver:  resolver,
			Keychains: keychains,

			Verifier:     verifier,
			VerifyLoader: verifyLoader,
		}})
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("add health check: %w", err)
	}
	ready := healthz.Ping
	if o.enableWebhooks {
		ready = mgr.GetWebhookServer().StartedChecker()
	}
	if err := mgr.AddReadyzCheck("readyz", ready); err != nil {
		return fmt.Errorf("add readiness check: %w", err)
	}

	setupLog.Info("starting manager", "leaderElect", o.leaderElect, "webhooks", o.enableWebhooks, "receiver", o.receiverAddr)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	return nil
}

// addReceiver serves registries' push notifications on their own address.
// Every replica answers; a standby says 503, as only the leader checks.
func addReceiver(mgr ctrl.Manager, o options, resolver *registry.Resolver, reconciler *controllers.ImagePinReconciler, verifier *verify.Verifier) error {
	elected := mgr.Elected()
	rc, err := receiver.New(receiver.Options{
		Hinter:     resolver,
		Checker:    reconciler,
		Signatures: verifier,
		SecretDir:  o.receiverSecretDir,
		Leading: func() bool {
			select {
			case <-elected:
				return true
			default:
				return false
			}
		},
		Metrics: receiver.NewMetrics(ctrlmetrics.Registry),
	})
	if err != nil {
		return err
	}
	return mgr.Add(receiver.Server{Receiver: rc, Addr: o.receiverAddr, CertDir: o.receiverCertDir})
}
