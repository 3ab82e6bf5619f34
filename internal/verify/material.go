package verify

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// materialTTL is how long a Secret's or ConfigMap's key is reused before
// it is read again: a rotated key takes effect within it.
const materialTTL = 30 * time.Second

// maxMaterial bounds one key or trusted root read from an object.
const maxMaterial = 1 << 20

// Loader reads the keys and trusted root spec.verify names, and compiles
// policies. Objects are read from the API server (the manager's cache
// keeps no Secret data but pull secrets', and no ConfigMaps), each at
// most once per materialTTL; compiled policies are reused while their
// spec and material are unchanged.
type Loader struct {
	// Reader reads Secrets and ConfigMaps: the manager's API reader.
	Reader client.Reader
	Clock  clock.PassiveClock

	mu       sync.Mutex
	objects  map[string]readObject
	policies map[[32]byte]*Policy
}

type readObject struct {
	at   time.Time
	data map[string][]byte
	err  error
}

// Policy compiles spec for an ImagePin in namespace; cluster is true for a
// ClusterImagePin, whose references must each name a namespace. An
// ImagePin reads its own namespace only: trust material, like pull
// credentials, never crosses namespaces. Errors are *ConfigError.
func (l *Loader) Policy(ctx context.Context, spec *imagesv1alpha1.VerifySpec, namespace string, cluster bool) (*Policy, error) {
	if spec == nil {
		return nil, nil
	}
	var m Material
	for i, k := range spec.Keys {
		field := fmt.Sprintf("keys[%d]", i)
		switch {
		case k.PEM != "":
			m.Keys = append(m.Keys, []byte(k.PEM))
		case k.SecretKeyRef != nil:
			b, err := l.read(ctx, &corev1.Secret{}, field+".secretKeyRef", *k.SecretKeyRef, namespace, cluster)
			if err != nil {
				return nil, err
			}
			m.Keys = append(m.Keys, b)
		case k.ConfigMapKeyRef != nil:
			b, err := l.read(ctx, &corev1.ConfigMap{}, field+".configMapKeyRef", *k.ConfigMapKeyRef, namespace, cluster)
			if err != nil {
				return nil, err
			}
			m.Keys = append(m.Keys, b)
		default:
			return nil, &ConfigError{Field: field, Err: fmt.Errorf("give pem, secretKeyRef or configMapKeyRef")}
		}
	}
	if spec.TrustedRoot != nil {
		b, err := l.read(ctx, &corev1.ConfigMap{}, "trustedRoot", *spec.TrustedRoot, namespace, cluster)
		if err != nil {
			return nil, err
		}
		m.RootJSON = b
	}
	specJSON, _ := json.Marshal(spec)
	h := sha256.New()
	h.Write(specJSON)
	for _, k := range m.Keys {
		_, _ = fmt.Fprintf(h, "\x00%d:%s", len(k), k)
	}
	_, _ = fmt.Fprintf(h, "\x00root:%s", m.RootJSON)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	l.mu.Lock()
	p, ok := l.policies[sum]
	l.mu.Unlock()
	if ok {
		return p, nil
	}
	p, err := Compile(spec, m)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	if l.policies == nil || len(l.policies) >= 1000 {
		l.policies = map[[32]byte]*Policy{}
	}
	l.policies[sum] = p
	l.mu.Unlock()
	return p, nil
}

// read returns one key of a Secret or ConfigMap (data or binaryData).
func (l *Loader) read(ctx context.Context, obj client.Object, field string, ref imagesv1alpha1.ObjectKeyRef, namespace string, cluster bool) ([]byte, error) {
	ns := ref.Namespace
	switch {
	case cluster && ns == "":
		return nil, &ConfigError{Field: field + ".namespace", Err: fmt.Errorf("a ClusterImagePin must name the namespace of %s", ref.Name)}
	case !cluster && ns != "" && ns != namespace:
		return nil, &ConfigError{Field: field + ".namespace", Err: fmt.Errorf("an ImagePin reads keys of its own namespace %s only, not of %s", namespace, ns)}
	case ns == "":
		ns = namespace
	}
	kind := "Secret"
	if _, ok := obj.(*corev1.ConfigMap); ok {
		kind = "ConfigMap"
	}
	key := kind + "/" + ns + "/" + ref.Name
	now := l.now()
	l.mu.Lock()
	o, ok := l.objects[key]
	l.mu.Unlock()
	if !ok || now.Sub(o.at) >= materialTTL {
		o = readObject{at: now}
		o.err = l.Reader.Get(ctx, client.ObjectKey{Namespace: ns, Name: ref.Name}, obj)
		switch v := obj.(type) {
		case *corev1.Secret:
			o.data = v.Data
		case *corev1.ConfigMap:
			o.data = map[string][]byte{}
			for k, s := range v.Data {
				o.data[k] = []byte(s)
			}
			for k, b := range v.BinaryData {
				o.data[k] = b
			}
		}
		if apierrors.IsNotFound(o.err) {
			o.err = fmt.Errorf("%s %s/%s not found", kind, ns, ref.Name)
		}
		l.mu.Lock()
		if l.objects == nil || len(l.objects) >= 1000 {
			l.objects = map[string]readObject{}
		}
		l.objects[key] = o
		l.mu.Unlock()
	}
	if o.err != nil {
		return nil, &ConfigError{Field: field, Err: o.err}
	}
	b, ok := o.data[ref.Key]
	switch {
	case !ok:
		return nil, &ConfigError{Field: field, Err: fmt.Errorf("%s %s/%s has no key %q", kind, ns, ref.Name, ref.Key)}
	case len(b) > maxMaterial:
		return nil, &ConfigError{Field: field, Err: fmt.Errorf("%s %s/%s key %q is larger than %d bytes", kind, ns, ref.Name, ref.Key, maxMaterial)}
	}
	return b, nil
}

func (l *Loader) now() time.Time {
	if l.Clock == nil {
		return time.Now()
	}
	return l.Clock.Now()
}
