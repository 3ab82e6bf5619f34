package registry

import (
	"context"
	"fmt"
	"io"

	ecr "github.com/awslabs/amazon-ecr-credential-helper/ecr-login"
	"github.com/chrismellard/docker-credential-acr-env/pkg/credhelper"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/authn/k8schain"
	kauth "github.com/google/go-containerregistry/pkg/authn/kubernetes"
	"github.com/google/go-containerregistry/pkg/v1/google"
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
// identity. The docker config file of the manager is never used.
type Keychains struct {
	// Reader reads ServiceAccounts and Secrets; the manager passes its cache.
	Reader client.Reader
	// Cloud adds the ECR, Google and ACR keychains.
	Cloud bool
}

// ForPod returns the keychain for a pod spec in namespace. Pull secrets that
// do not exist are skipped, as the kubelet skips them. Each credential is
// offered only to the registry its docker config names.
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

	secrets := make([]corev1.Secret, 0, len(names))
	for _, n := range names {
		var s corev1.Secret
		switch err := k.Reader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: n}, &s); {
		case err == nil:
			secrets = append(secrets, s)
		case apierrors.IsNotFound(err):
		default:
			return nil, fmt.Errorf("read pull secret %s/%s: %w", namespace, n, err)
		}
	}
	// Each secret on its own, so that one malformed secret costs only its
	// own credentials, not every workload's resolution.
	chain := make([]authn.Keychain, 0, len(secrets)+len(cloudKeychains))
	for _, s := range secrets {
		kc, err := kauth.NewFromPullSecrets(ctx, []corev1.Secret{s})
		if err != nil {
			log.FromContext(ctx).Info("skipping a pull secret that is not a valid docker config", "namespace", namespace, "secret", s.Name, "reason", err.Error())
			continue
		}
		chain = append(chain, kc)
	}
	if k.Cloud {
		chain = append(chain, cloudKeychains...)
	}
	return authn.NewMultiKeychain(chain...), nil
}

var cloudKeychains = []authn.Keychain{
	google.Keychain,
	authn.NewKeychainFromHelper(ecr.NewECRHelper(ecr.WithLogger(io.Discard))),
	authn.NewKeychainFromHelper(credhelper.NewACRCredentialsHelper()),
}

// CLIKeychain is the keychain of `imagepin pin`: the user's docker config
// (~/.docker/config.json and its credential helpers) and the cloud keychains.
func CLIKeychain(ctx context.Context) (authn.Keychain, error) {
	return k8schain.NewNoClient(ctx)
}
