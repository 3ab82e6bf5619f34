// Package cluster starts the local cluster the end-to-end tests, `make
// dev-cluster` and `make demo` run on, from the binaries `make` builds into
// bin/: etcd and kube-apiserver (through envtest, with the ServiceAccount
// admission plugin on, as in a real cluster), kube-controller-manager, the
// distribution registry with htpasswd auth and TLS from a generated CA, the
// node simulator (package nodesim) standing in for the scheduler and the
// kubelets, and the imagepin manager as its own process with its admission
// webhook registered. Stop stops every process Start started.
package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/imagepin/imagepin/e2e/nodesim"
	"github.com/imagepin/imagepin/internal/testenv"
)

// PullSecret is the name of the docker-registry Secret Start puts in each
// namespace of Options.Namespaces, and that namespace's default
// ServiceAccount names, as a cluster admin sets up a private registry.
const PullSecret = "regcred"

// Options say how to start the cluster.
type Options struct {
	// Dir holds the kubeconfig, the logs, the certificates and the
	// registry's data. It is created if missing.
	Dir string
	// RegistryAddr is where the registry listens ("127.0.0.1:<port>");
	// empty picks a free port.
	RegistryAddr string
	// Manager is the imagepin binary; empty builds one into Dir.
	Manager string
	// ManagerArgs are added to the manager's flags.
	ManagerArgs []string
	// Namespaces get the pull secret on their default ServiceAccount;
	// "default" when empty. They are created if missing.
	Namespaces []string
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// Cluster is a running local cluster.
type Cluster struct {
	// Env is the control plane; Env.Config is an admin's rest config.
	Env *testenv.Env
	// Client is an admin client with the built-in types and ImagePin.
	Client client.Client
	// Kubeconfig is an admin kubeconfig file.
	Kubeconfig string
	// Registry is the distribution registry.
	Registry *testenv.Registry
	// DockerConfig is a directory holding a config.json with the
	// registry's credentials, for crane and other push tools.
	DockerConfig string
	// Manager is the imagepin manager process.
	Manager *Manager
	// Nodes are the simulated nodes.
	Nodes *nodesim.Simulator
	// AuditLog is the API server's audit log of the manager's requests
	// (JSON lines, level Metadata).
	AuditLog string
	// Receiver is the manager's push-notification receiver
	// ("http://127.0.0.1:<port>"): the registry notifies its
	// /hooks/distribution endpoint of every push. ReceiverToken
	// authenticates the distribution and generic endpoints.
	Receiver, ReceiverToken string

	opts              Options
	log               io.Writer
	managerKubeconfig string
	stopKCM           func()
	stopNodes         context.CancelFunc
	nodesDone         chan error
	webhook           *testenv.WebhookServing
	receiverAddr      string
	receiverSecrets   string
}

// Start starts everything. On error it stops what it started.
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.Dir == "" {
		return nil, errors.New("cluster: Options.Dir is required")
	}
	if len(o.Namespaces) == 0 {
		o.Namespaces = []string{"default"}
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	if o.Dir, err = filepath.Abs(o.Dir); err != nil {
		return nil, err
	}
	c = &Cluster{opts: o, log: o.Log}
	if c.log == nil {
		c.log = io.Discard
	}
	defer func() {
		if err != nil {
			c.Stop()
			c = nil
		}
	}()

	if o.Manager == "" {
		c.logf("building the imagepin manager")
		if o.Manager, err = testenv.BuildImagepin(ctx, o.Dir); err != nil {
			return c, err
		}
		c.opts.Manager = o.Manager
	}

	c.logf("starting etcd and kube-apiserver from %s", testenv.AssetsDir())
	if err := c.startControlPlane(); err != nil {
		return c, err
	}
	c.logf("starting kube-controller-manager")
	if c.stopKCM, err = c.Env.StartControllerManager(o.Dir, "serviceaccount-controller"); err != nil {
		return c, err
	}

	if err := c.makeReceiverSecrets(); err != nil {
		return c, err
	}
	c.logf("starting the registry (htpasswd auth, TLS, notifications to imagepin's receiver)")
	if c.Registry, err = testenv.StartRegistryWith(testenv.RegistryOptions{
		Dir: filepath.Join(o.Dir, "registry"), Addr: o.RegistryAddr,
		NotifyURL: c.Receiver + "/hooks/distribution", NotifyToken: c.ReceiverToken,
		AccessLog: true, // which manager asked what: its User-Agent
	}); err != nil {
		return c, err
	}
	if err := c.writeDockerConfig(); err != nil {
		return c, err
	}
	for _, ns := range o.Namespaces {
		if err := c.AddPullSecret(ctx, ns); err != nil {
			return c, err
		}
	}

	c.logf("starting the node simulator")
	if err := c.startNodes(); err != nil {
		return c, err
	}

	c.logf("starting the imagepin manager")
	if err := c.makeWebhookCerts(); err != nil {
		return c, err
	}
	if c.Manager, err = c.StartManager(ctx, ManagerOptions{Name: "imagepin", Receiver: true}); err != nil {
		return c, err
	}
	if err := c.registerWebhook(ctx); err != nil {
		return c, err
	}
	return c, c.writeEnv()
}

func (c *Cluster) logf(format string, args ...any) {
	_, _ = fmt.Fprintf(c.log, format+"\n", args...)
}

func (c *Cluster) startControlPlane() error {
	assets := testenv.AssetsDir()
	for _, bin := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			return fmt.Errorf("control plane binary %s not found in %s (run `make control-plane`): %w", bin, assets, err)
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(testenv.RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                testenv.Scheme(),
	}
	// envtest turns the ServiceAccount admission plugin off because it runs
	// no controller that makes ServiceAccounts; this cluster runs one, so
	// pods get their ServiceAccount's pull secrets as in a real cluster.
	api := env.ControlPlane.GetAPIServer()
	api.Configure().Disable("disable-admission-plugins")
	// An audit log of every request the manager's service account makes:
	// the RBAC test compares it with what config/rbac grants.
	c.AuditLog = filepath.Join(c.opts.Dir, "audit.log")
	policy := filepath.Join(c.opts.Dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return err
	}
	api.Configure().Set("audit-policy-file", policy).Set("audit-log-path", c.AuditLog)
	// Set before starting: Start can fail after etcd and kube-apiserver
	// run (installing the CRDs, say), and Stop must stop them then too.
	c.Env = &testenv.Env{Env: env, Scheme: env.Scheme}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("start the control plane from %s: %w", assets, err)
	}
	c.Env.Config = cfg
	if c.Client, err = client.New(cfg, client.Options{Scheme: env.Scheme}); err != nil {
		return err
	}
	if c.Kubeconfig, err = c.Env.Kubeconfig(c.opts.Dir); err != nil {
		return err
	}
	return c.installRBAC()
}

// ManagerNamespace and ManagerServiceAccount are where config/default
// installs the manager, and the identity it runs as here too.
const (
	ManagerNamespace      = "imagepin-system"
	ManagerServiceAccount = "imagepin-controller-manager"
	ManagerUser           = "system:serviceaccount:" + ManagerNamespace + ":" + ManagerServiceAccount
)

const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["` + ManagerUser + `"]
- level: None
`

// installRBAC applies the RBAC objects of config/default (its namespace,
// service account, roles and bindings, exactly as a user installs them)
// and writes a kubeconfig that authenticates as that service account, for
// the manager: it runs with the permissions config/rbac grants, no more.
func (c *Cluster) installRBAC() error {
	out, err := exec.Command(filepath.Join(testenv.AssetsDir(), "kubectl"), "kustomize", filepath.Join(testenv.RepoRoot(), "config", "default")).Output()
	if err != nil {
		return fmt.Errorf("kubectl kustomize config/default: %w", err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("config/default: %w", err)
		}
		switch u.GetKind() {
		case "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			if err := c.Client.Create(context.Background(), &u); err != nil {
				return fmt.Errorf("install %s %s: %w", u.GetKind(), u.GetName(), err)
			}
		}
	}
	user, err := c.Env.Env.AddUser(envtest.User{Name: ManagerUser, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ManagerNamespace}}, nil)
	if err != nil {
		return err
	}
	raw, err := user.KubeConfig()
	if err != nil {
		return err
	}
	c.managerKubeconfig = filepath.Join(c.opts.Dir, "manager.kubeconfig")
	return os.WriteFile(c.managerKubeconfig, raw, 0o600)
}

// writeDockerConfig writes DockerConfig/config.json, as `docker login`
// would, and the registry's CA next to it.
func (c *Cluster) writeDockerConfig() error {
	c.DockerConfig = filepath.Join(c.opts.Dir, "docker")
	if err := os.MkdirAll(c.DockerConfig, 0o700); err != nil {
		return err
	}
	r := c.Registry
	return os.WriteFile(filepath.Join(c.DockerConfig, "config.json"), testenv.DockerConfigJSON(r.Host, r.User, r.Password), 0o600)
}

// AddPullSecret creates namespace ns if missing, puts the registry's
// credentials in it as the Secret PullSecret, and names that Secret in the
// namespace's default ServiceAccount once kube-controller-manager has made
// it.
func (c *Cluster) AddPullSecret(ctx context.Context, ns string) error {
	if err := c.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	r := c.Registry
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: PullSecret, Namespace: ns},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: testenv.DockerConfigJSON(r.Host, r.User, r.Password)},
	}
	if err := c.Client.Create(ctx, secret); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create pull secret in %s: %w", ns, err)
	}
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		sa := &corev1.ServiceAccount{}
		if err := c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "default"}, sa); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		for _, ref := range sa.ImagePullSecrets {
			if ref.Name == PullSecret {
				return true, nil
			}
		}
		sa.ImagePullSecrets = append(sa.ImagePullSecrets, corev1.LocalObjectReference{Name: PullSecret})
		if err := c.Client.Update(ctx, sa); err != nil {
			return false, client.IgnoreAlreadyExists(ignoreConflict(err))
		}
		return true, nil
	})
}

func ignoreConflict(err error) error {
	if apierrors.IsConflict(err) {
		return nil
	}
	return err
}

func (c *Cluster) startNodes() error {
	sim, err := nodesim.New(c.Env.Config, nodesim.Options{Transport: c.Registry.Transport(), Log: logr.Discard()})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.Nodes, c.stopNodes, c.nodesDone = sim, cancel, make(chan error, 1)
	go func() { c.nodesDone <- sim.Run(ctx) }()
	return wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-c.nodesDone:
			c.nodesDone <- err
			return false, fmt.Errorf("node simulator stopped: %w", err)
		default:
		}
		var nodes corev1.NodeList
		err := c.Client.List(ctx, &nodes)
		return err == nil && len(nodes.Items) >= 3, nil
	})
}

func (c *Cluster) makeWebhookCerts() (err error) {
	c.webhook, err = testenv.NewWebhookServing(filepath.Join(c.opts.Dir, "webhook-certs"), "imagepin webhook CA")
	return err
}

// registerWebhook installs config/webhook's MutatingWebhookConfiguration,
// pointed at the manager on 127.0.0.1 with the CA that signed its
// certificate, and waits until the API server calls it.
func (c *Cluster) registerWebhook(ctx context.Context) error {
	cfg, err := c.webhook.Configuration("imagepin-mutating-webhook-configuration")
	if err != nil {
		return err
	}
	if err := c.Client.Create(ctx, cfg); err != nil {
		return fmt.Errorf("register the webhook: %w", err)
	}
	return nil
}

// writeEnv writes Dir/env, a shell file exporting what a user of the
// cluster needs: KUBECONFIG, REGISTRY, DOCKER_CONFIG, REGISTRY_CA and
// IMAGEPIN_METRICS.
func (c *Cluster) writeEnv() error {
	env := fmt.Sprintf(`export KUBECONFIG=%q
export REGISTRY=%q
export DOCKER_CONFIG=%q
export REGISTRY_CA=%q
export IMAGEPIN_METRICS=%q
`, c.Kubeconfig, c.Registry.Host, c.DockerConfig, c.Registry.CAFile, c.Manager.MetricsURL)
	return os.WriteFile(filepath.Join(c.opts.Dir, "env"), []byte(env), 0o600)
}

// makeReceiverSecrets picks the receiver's address and writes its token
// for the distribution and generic endpoints, as a mounted Secret would
// hold it.
func (c *Cluster) makeReceiverSecrets() error {
	port, err := testenv.FreePort()
	if err != nil {
		return err
	}
	c.receiverAddr = fmt.Sprintf("127.0.0.1:%d", port)
	c.Receiver = "http://" + c.receiverAddr
	token := make([]byte, 16)
	if _, err := rand.Read(token); err != nil {
		return err
	}
	c.ReceiverToken = hex.EncodeToString(token)
	c.receiverSecrets = filepath.Join(c.opts.Dir, "receiver-secrets")
	if err := os.MkdirAll(c.receiverSecrets, 0o700); err != nil {
		return err
	}
	for _, endpoint := range []string{"distribution", "generic"} {
		if err := os.WriteFile(filepath.Join(c.receiverSecrets, endpoint), []byte(c.ReceiverToken), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// Stop stops every process Start started, the last started first. It is
// safe on a partly started cluster.
func (c *Cluster) Stop() {
	if c == nil {
		return
	}
	if c.Manager != nil {
		c.Manager.Stop()
	}
	if c.stopNodes != nil {
		c.stopNodes()
		select {
		case err := <-c.nodesDone:
			if err != nil {
				c.logf("node simulator: %v", err)
			}
		case <-time.After(10 * time.Second):
			c.logf("node simulator: still stopping after 10s")
		}
	}
	if c.Registry != nil {
		_ = c.Registry.Stop()
	}
	if c.stopKCM != nil {
		c.stopKCM()
	}
	if c.Env != nil {
		_ = c.Env.Stop()
	}
}

// Manager is one running imagepin manager process.
type Manager = testenv.ManagerProcess

// Binary is the imagepin binary the managers run (its subcommands, drift
// and pin, included).
func (c *Cluster) Binary() string { return c.opts.Manager }

// ManagerOptions say how to run one more manager.
type ManagerOptions struct {
	// Name names the log file, Dir/<Name>.log.
	Name string
	// Args are added to the flags (after Options.ManagerArgs).
	Args []string
	// NoWebhook runs it with ENABLE_WEBHOOKS=false, so that several can run
	// at once (only one can serve the registered webhook's port).
	NoWebhook bool
	// APIServer, if set, is the "https://host:port" the manager reaches the
	// API server at instead (a proxy that a test can cut).
	APIServer string
	// Receiver serves the push-notification receiver the registry
	// notifies (one manager at a time: it has one address).
	Receiver bool
}

// StartManager starts an imagepin manager process as the manager's service
// account, serving the webhook registered for the cluster unless
// o.NoWebhook, and waits until it is ready.
func (c *Cluster) StartManager(ctx context.Context, o ManagerOptions) (*Manager, error) {
	kubeconfig := c.managerKubeconfig
	if o.APIServer != "" {
		raw, err := os.ReadFile(kubeconfig)
		if err != nil {
			return nil, err
		}
		kubeconfig = filepath.Join(c.opts.Dir, o.Name+".kubeconfig")
		from := []byte("server: " + strings.TrimSuffix(c.Env.Config.Host, "/"))
		if !bytes.Contains(raw, from) {
			return nil, fmt.Errorf("the manager's kubeconfig does not name %s", c.Env.Config.Host)
		}
		raw = bytes.ReplaceAll(raw, from, []byte("server: "+o.APIServer))
		if err := os.WriteFile(kubeconfig, raw, 0o600); err != nil {
			return nil, err
		}
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--webhook-cert-dir=" + c.webhook.CertDir,
		fmt.Sprintf("--webhook-port=%d", c.webhook.Port),
		"--registry-ca-file=" + c.Registry.CAFile,
		"--leader-election-namespace=" + ManagerNamespace,
		// Nothing here has a cloud identity; asking for one only waits.
		"--cloud-keychains=false",
	}
	if o.Receiver {
		args = append(args, "--receiver-bind-address="+c.receiverAddr, "--receiver-secret-dir="+c.receiverSecrets)
	}
	args = append(append(args, c.opts.ManagerArgs...), o.Args...)
	var env []string
	if o.NoWebhook {
		env = []string{"ENABLE_WEBHOOKS=false"}
	}
	return testenv.StartManagerProcess(ctx, o.Name, c.opts.Manager, filepath.Join(c.opts.Dir, o.Name+".log"), args, env)
}
