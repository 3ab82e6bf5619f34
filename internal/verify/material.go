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

// readObject is one key of one object as read: only the key's bytes are
// kept (a Secret made by "cosign generate-key-pair k8s://…" holds the
// private key and its password too), or that the object or the key is
// not there. A failure to read (the API server slow or refusing) is not
// kept: the next check reads again.
type readObject struct {
	at      time.Time
	value   []byte
	missing error
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
	key := kind + "/" + ns + "/" + ref.Name + "/" + ref.Key
	now := l.now()
	l.mu.Lock()
	o, ok := l.objects[key]
	l.mu.Unlock()
	if !ok || now.Sub(o.at) >= materialTTL {
		err := l.Reader.Get(ctx, client.ObjectKey{Namespace: ns, Name: ref.Name}, obj)
		switch {
		case apierrors.IsNotFound(err):
			o = readObject{at: now, missing: fmt.Errorf("%s %s/%s not found", kind, ns, ref.Name)}
		case err != nil:
			return nil, &ConfigError{Field: field, Err: fmt.Errorf("read %s %s/%s: %w", kind, ns, ref.Name, err)}
		default:
			o = readObject{at: now}
			var found bool
			switch v := obj.(type) {
			case *corev1.Secret:
				o.value, found = v.Data[ref.Key]
			case *corev1.ConfigMap:
				var str string
				if str, found = v.Data[ref.Key]; found {
					o.value = []byte(str)
				} else {
					o.value, found = v.BinaryData[ref.Key]
				}
			}
			if !found {
				o.missing = fmt.Errorf("%s %s/%s has no key %q", kind, ns, ref.Name, ref.Key)
			}
		}
		l.mu.Lock()
		if l.objects == nil {
			l.objects = map[string]readObject{}
		}
		for k, old := range l.objects {
			if now.Sub(old.at) >= materialTTL {
				delete(l.objects, k) // nothing outlives its TTL
			}
		}
		l.objects[key] = o
		l.mu.Unlock()
	}
	switch {
	case o.missing != nil:
		return nil, &ConfigError{Field: field, Err: o.missing}
	case len(o.value) > maxMaterial:
		return nil, &ConfigError{Field: field, Err: fmt.Errorf("%s %s/%s key %q is larger than %d bytes", kind, ns, ref.Name, ref.Key, maxMaterial)}
	}
	return o.value, nil
}

func (l *Loader) now() time.Time {
	if l.Clock == nil {
		return time.Now()
	}
	return l.Clock.Now()
}
