package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	kauth "github.com/google/go-containerregistry/pkg/authn/kubernetes"
	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// Keychains builds the credentials a workload's images are resolved with:
// the pull secrets its pod spec names and those of its service account,
// read from the namespace of the workload only, through a cache reader (the
// manager's informer cache: no API call per resolution), plus optionally the
// cloud keychains (ECR, GCR/Artifact Registry, ACR) of the manager's own
// identity, each asked only about its own cloud's registries. The docker
// config file of the manager is never used.
type Keychains struct {
	// Reader reads ServiceAccounts and Secrets; the manager passes its cache.
	Reader client.Reader
	// Cloud adds the ECR, Google and ACR keychains.
	Cloud bool

	once  sync.Once
	cloud []*cloudKeychain // made once, so their tokens are reused
}

// CredentialsKey names what ForPod's keychain for spec depends on in
// spec: its service account and pull secrets. Pod specs with one key
// (the templates of one workload, nearly always) share one keychain.
func CredentialsKey(spec *corev1.PodSpec) string {
	var b strings.Builder
	b.WriteString(spec.ServiceAccountName)
	for _, s := range spec.ImagePullSecrets {
		b.WriteString("\x00" + s.Name)
	}
	return b.String()
}

// ForPod returns the keychain for a pod spec in namespace. Pull secrets that
// do not exist are skipped, as the kubelet skips them. Each credential is
// offered only to the registry its docker config names. The resolver tries
// every matching pull secret in turn, then the cloud identity, then
// anonymous access, as a kubelet does.
func (k *Keychains) ForPod(ctx context.Context, namespace string, spec *corev1.PodSpec) (authn.Keychain, error) {
	names := make([]string, 0, len(spec.ImagePullSecrets)+1)
	seen := map[string]bool{}
	add := func(refs []corev1.LocalObjectReference) {
		for _, r := range refs {
			if r.Name != "" && !seen[r.Name] {
				seen[r.Name] = true
				names = append(names, r.Name)
			}
		}
	}
	add(spec.ImagePullSecrets)

	saName := spec.ServiceAccountName
	if saName == "" {
		saName = "default"
	}
	var sa corev1.ServiceAccount
	switch err := k.Reader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: saName}, &sa); {
	case err == nil:
		add(sa.ImagePullSecrets)
	case apierrors.IsNotFound(err):
	default:
		return nil, fmt.Errorf("read service account %s/%s: %w", namespace, saName, err)
	}

	kc := &podKeychain{}
	for _, n := range names {
		ps, _, err := k.secret(ctx, namespace, n, "pull secret")
		switch {
		case apierrors.IsNotFound(err):
			continue
		case errors.Is(err, errNotDockerConfig):
			// Each secret on its own, so that one malformed secret costs
			// only its own credentials, not every workload's resolution.
			log.FromContext(ctx).Info("skipping a pull secret that is not a valid docker config", "namespace", namespace, "secret", n, "reason", err.Error())
			continue
		case err != nil:
			return nil, err
		}
		kc.secrets = append(kc.secrets, ps)
	}
	if k.Cloud {
		k.once.Do(func() { k.cloud = defaultCloudKeychains() })
		kc.cloud = k.cloud
	}
	return kc, nil
}

// ForSecret returns the keychain of one Secret in namespace, on its own:
// no service account's, no cloud identity's. A Secret that is missing or
// not a docker config is an error that says so (spec.retention's
// pushSecretRef names one).
func (k *Keychains) ForSecret(ctx context.Context, namespace, name string) (authn.Keychain, error) {
	ps, typ, err := k.secret(ctx, namespace, name, "push secret")
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("push secret %s/%s not found", namespace, name)
	case err != nil:
		return nil, err
	case typ != corev1.SecretTypeDockerConfigJson && typ != corev1.SecretTypeDockercfg:
		return nil, fmt.Errorf("push secret %s/%s is not of type %s: %w", namespace, name, corev1.SecretTypeDockerConfigJson, errNotDockerConfig)
	}
	return &podKeychain{secrets: []pullSecret{ps}}, nil
}

// errNotDockerConfig: a Secret whose data is no docker config.
var errNotDockerConfig = errors.New("not a valid docker config")

// secret reads the Secret namespace/name as credentials, called role in
// what it says, and its type.
func (k *Keychains) secret(ctx context.Context, namespace, name, role string) (pullSecret, corev1.SecretType, error) {
	var s corev1.Secret
	if err := k.Reader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &s); err != nil {
		if apierrors.IsNotFound(err) {
			return pullSecret{}, "", err
		}
		return pullSecret{}, "", fmt.Errorf("read %s %s/%s: %w", role, namespace, name, err)
	}
	skc, err := kauth.NewFromPullSecrets(ctx, []corev1.Secret{s})
	if err != nil {
		return pullSecret{}, s.Type, fmt.Errorf("%s %s/%s: %w: %w", role, namespace, name, errNotDockerConfig, err)
	}
	return pullSecret{name: fmt.Sprintf("%s %s/%s", role, namespace, name), kc: skc}, s.Type, nil
}

type pullSecret struct {
	name string
	kc   authn.Keychain
}

// podKeychain is a workload's pull secrets and the manager's cloud
// identity.
type podKeychain struct {
	secrets []pullSecret
	cloud   []*cloudKeychain
}

func (p *podKeychain) credentialsFor(ctx context.Context, repo name.Repository) ([]credential, error) {
	var out []credential
	for _, s := range p.secrets {
		cfg, err := configOf(ctx, s.kc, repo)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		if !empty(cfg) {
			// Known by its value: a pull secret's credential is static.
			out = append(out, fixed(valueID(cfg)+" @"+repo.RegistryStr(), "the "+s.name, cfg))
		}
	}
	return append(out, cloudCredentials(p.cloud, repo)...), nil
}

// Resolve returns the first credential for target, for callers that use
// the keychain outside the resolver.
func (p *podKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	return firstOf(p, target)
}

// CLIKeychain is the keychain of `imagepin pin`: the user's docker config
// (~/.docker/config.json and its credential helpers), and the cloud
// keychains, each asked only about its own cloud's registries, so that a
// public image is resolved anonymously and no cloud SDK is woken for it.
func CLIKeychain(context.Context) (authn.Keychain, error) {
	return &cliKeychain{docker: newRefreshing("docker config", authn.DefaultKeychain, nil), cloud: defaultCloudKeychains()}, nil
}

type cliKeychain struct {
	docker *refreshing
	cloud  []*cloudKeychain
}

func (c *cliKeychain) credentialsFor(_ context.Context, repo name.Repository) ([]credential, error) {
	return append([]credential{c.docker.credential(repo)}, cloudCredentials(c.cloud, repo)...), nil
}

func (c *cliKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	return firstOf(c, target)
}

// firstOf is the first non-empty credential a source has for target.
func firstOf(s credentialSource, target authn.Resource) (authn.Authenticator, error) {
	var repo name.Repository
	switch t := target.(type) {
	case name.Repository:
		repo = t
	case name.Tag:
		repo = t.Context()
	case name.Digest:
		repo = t.Context()
	case name.Registry:
		repo = t.Repo("_")
	default:
		r, err := name.NewRepository(target.String())
		if err != nil {
			return authn.Anonymous, nil //nolint:nilerr // not a repository: no credentials to offer, anonymous as the kubelet
		}
		repo = r
	}
	creds, err := s.credentialsFor(context.Background(), repo)
	if err != nil {
		return nil, err
	}
	for _, c := range creds {
		if cfg, err := c.get(context.Background()); err == nil && !empty(cfg) {
			return authn.FromConfig(cfg), nil
		}
	}
	return authn.Anonymous, nil
}
