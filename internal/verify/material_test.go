package verify

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

// TestMain starts the control plane only when a test asks for it
// (needCluster): the Loader's tests read Secrets and ConfigMaps from the
// real API server; the others need none.
func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if cluster.env != nil {
		if err := cluster.env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop the control plane:", err)
		}
	}
	os.Exit(code)
}

var cluster struct {
	once sync.Once
	err  error
	env  *envtest.Environment
	c    client.Client
}

// needCluster starts, once per test binary, etcd and kube-apiserver from
// bin/k8s (testenv.AssetsDir), and returns a client of the API server
// (what the manager's API reader is: no cache).
func needCluster(t testing.TB) client.Client {
	t.Helper()
	cluster.once.Do(func() {
		ctrl.SetLogger(logr.Discard())
		env := &envtest.Environment{BinaryAssetsDirectory: testenv.AssetsDir(), Scheme: testenv.Scheme()}
		cfg, err := env.Start()
		if err != nil {
			cluster.err = fmt.Errorf("start the control plane from %s (run `make test`, which builds it): %w", testenv.AssetsDir(), err)
			return
		}
		cluster.env = env
		cluster.c, cluster.err = client.New(cfg, client.Options{Scheme: env.Scheme})
	})
	if cluster.err != nil {
		t.Fatalf("control plane: %v", cluster.err)
	}
	return cluster.c
}

// namespaces counts the namespaces made, so that a test run again in one
// binary (-count) makes new ones.
var namespaces atomic.Int32

// namespace creates a namespace for one test, named base-<n>, and the
// objects given in it, and returns its name.
func namespace(t testing.TB, c client.Client, base string, objs ...client.Object) string {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("%s-%d", base, namespaces.Add(1))
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		o.SetNamespace(name)
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	return name
}

func secret(name string, data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}
}

func configMap(name string, data map[string]string, binary map[string][]byte) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data, BinaryData: binary}
}

func secretKey(ns, name, key string) imagesv1alpha1.KeySource {
	return imagesv1alpha1.KeySource{SecretKeyRef: &imagesv1alpha1.ObjectKeyRef{Namespace: ns, Name: name, Key: key}}
}

func configMapKey(ns, name, key string) imagesv1alpha1.KeySource {
	return imagesv1alpha1.KeySource{ConfigMapKeyRef: &imagesv1alpha1.ObjectKeyRef{Namespace: ns, Name: name, Key: key}}
}

func TestLoader(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	a, b, e := newKey(t), newKey(t), newKey(t)
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	rootJSON := trustedRootJSON(t, vs)
	shop := namespace(t, c, "shop",
		secret("cosign", map[string][]byte{"cosign.pub": pemOf(t, a)}),
		configMap("keys", map[string]string{"b.pub": string(pemOf(t, b))}, map[string][]byte{"e.pub": pemOf(t, e)}),
		configMap("sigstore", map[string]string{"trusted_root.json": string(rootJSON)}, nil),
	)
	other := namespace(t, c, "other", secret("cosign", map[string][]byte{"cosign.pub": pemOf(t, b)}))
	l := &Loader{Reader: c}
	spec := func(keys ...imagesv1alpha1.KeySource) *imagesv1alpha1.VerifySpec {
		return &imagesv1alpha1.VerifySpec{Keys: keys}
	}

	t.Run("a Secret's key", func(t *testing.T) {
		p, err := l.Policy(ctx, spec(secretKey("", "cosign", "cosign.pub")), shop, false)
		if err != nil {
			t.Fatal(err)
		}
		if p.ID != keyPolicy(t, a).ID {
			t.Error("the Secret's key is not the one trusted")
		}
	})

	t.Run("a ConfigMap's keys, data and binaryData, and an inline one", func(t *testing.T) {
		p, err := l.Policy(ctx, spec(configMapKey(shop, "keys", "b.pub"), configMapKey("", "keys", "e.pub"), imagesv1alpha1.KeySource{PEM: string(pemOf(t, a))}), shop, false)
		if err != nil {
			t.Fatal(err)
		}
		if p.ID != keyPolicy(t, b, e, a).ID {
			t.Error("the ConfigMap's keys are not the ones trusted")
		}
	})

	t.Run("the policy verifies with the Secret's key", func(t *testing.T) {
		f := newFixture(t, false)
		d, _ := f.reg.pushImage("app")
		f.reg.pushLegacy("app", d, signedLayer(t, a, simpleSigning(f.reg.host+"/app", d)))
		p, err := l.Policy(ctx, spec(secretKey("", "cosign", "cosign.pub")), shop, false)
		if err != nil {
			t.Fatal(err)
		}
		want(t, f.verify(t, "app", d, p), true, imagesv1alpha1.VerificationVerified)
	})

	t.Run("a trusted root from a ConfigMap", func(t *testing.T) {
		s := &imagesv1alpha1.VerifySpec{
			Keyless:     []imagesv1alpha1.KeylessIdentity{{Subject: ciSubject, Issuer: ciIssuer}},
			TrustedRoot: &imagesv1alpha1.ObjectKeyRef{Name: "sigstore", Key: "trusted_root.json"},
		}
		p, err := l.Policy(ctx, s, shop, false)
		if err != nil {
			t.Fatal(err)
		}
		same, err := Compile(s, Material{RootJSON: rootJSON})
		if err != nil {
			t.Fatal(err)
		}
		if p.ID != same.ID || !p.requireLog {
			t.Error("the ConfigMap's root is not the one trusted")
		}
	})

	t.Run("a ClusterImagePin names each object's namespace", func(t *testing.T) {
		p, err := l.Policy(ctx, spec(secretKey(other, "cosign", "cosign.pub"), configMapKey(shop, "keys", "b.pub")), "", true)
		if err != nil {
			t.Fatal(err)
		}
		if p.ID != keyPolicy(t, b, b).ID {
			t.Error("not the keys of the namespaces named")
		}
	})

	for _, c := range []struct {
		name      string
		spec      *imagesv1alpha1.VerifySpec
		namespace string
		cluster   bool
		field     string
		says      string
	}{
		{"a missing Secret", spec(secretKey("", "gone", "cosign.pub")), shop, false,
			"keys[0].secretKeyRef", "Secret " + shop + "/gone not found"},
		{"a missing ConfigMap, second key", spec(secretKey("", "cosign", "cosign.pub"), configMapKey("", "gone", "b.pub")), shop, false,
			"keys[1].configMapKeyRef", "ConfigMap " + shop + "/gone not found"},
		{"a missing trusted root", &imagesv1alpha1.VerifySpec{Keyless: []imagesv1alpha1.KeylessIdentity{{Subject: ciSubject, Issuer: ciIssuer}},
			TrustedRoot: &imagesv1alpha1.ObjectKeyRef{Name: "gone", Key: "trusted_root.json"}}, shop, false,
			"trustedRoot", "ConfigMap " + shop + "/gone not found"},
		{"a missing key in the object", spec(secretKey("", "cosign", "b.pub")), shop, false,
			"keys[0].secretKeyRef", "Secret " + shop + `/cosign has no key "b.pub"`},
		{"a Secret key that is not a key", spec(configMapKey("", "sigstore", "trusted_root.json")), shop, false,
			"keys[0]", "not a PEM public key"},
		{"an ImagePin reading another namespace", spec(secretKey(other, "cosign", "cosign.pub")), shop, false,
			"keys[0].secretKeyRef.namespace", "reads keys of its own namespace " + shop + " only, not of " + other},
		{"a ClusterImagePin reference without a namespace", spec(configMapKey("", "keys", "b.pub")), "", true,
			"keys[0].configMapKeyRef.namespace", "a ClusterImagePin must name the namespace of keys"},
		{"a ClusterImagePin's root without a namespace", &imagesv1alpha1.VerifySpec{Keyless: []imagesv1alpha1.KeylessIdentity{{Subject: ciSubject, Issuer: ciIssuer}},
			TrustedRoot: &imagesv1alpha1.ObjectKeyRef{Name: "sigstore", Key: "trusted_root.json"}}, "", true,
			"trustedRoot.namespace", "must name the namespace"},
		{"a key of no source", spec(imagesv1alpha1.KeySource{}), shop, false,
			"keys[0]", "give pem, secretKeyRef or configMapKeyRef"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := l.Policy(ctx, c.spec, c.namespace, c.cluster)
			if p != nil {
				t.Errorf("got a policy: %+v", p)
			}
			wantConfigError(t, err, c.field, c.says)
		})
	}
}

// TestLoaderRereads: an object is read at most once per materialTTL, so a
// rotated key, or an object created after the policy named it, takes
// effect within it.
func TestLoaderRereads(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	a, b := newKey(t), newKey(t)
	s := secret("cosign", map[string][]byte{"cosign.pub": pemOf(t, a)})
	ns := namespace(t, c, "rotate", s)
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC))
	l := &Loader{Reader: c, Clock: clk}
	spec := &imagesv1alpha1.VerifySpec{Keys: []imagesv1alpha1.KeySource{secretKey("", "cosign", "cosign.pub")}}
	missing := &imagesv1alpha1.VerifySpec{Keys: []imagesv1alpha1.KeySource{configMapKey("", "late", "key.pub")}}

	p, err := l.Policy(ctx, spec, ns, false)
	if err != nil || p.ID != keyPolicy(t, a).ID {
		t.Fatalf("got %+v, %v", p, err)
	}
	if _, err := l.Policy(ctx, missing, ns, false); err == nil {
		t.Fatal("a missing ConfigMap compiled")
	}

	s.Data = map[string][]byte{"cosign.pub": pemOf(t, b)}
	if err := c.Update(ctx, s); err != nil {
		t.Fatal(err)
	}
	late := configMap("late", map[string]string{"key.pub": string(pemOf(t, b))}, nil)
	late.Namespace = ns
	if err := c.Create(ctx, late); err != nil {
		t.Fatal(err)
	}

	clk.SetTime(clk.Now().Add(materialTTL - time.Second))
	if p, err := l.Policy(ctx, spec, ns, false); err != nil || p.ID != keyPolicy(t, a).ID {
		t.Errorf("within the TTL: got %+v, %v; want the key read first", p, err)
	}
	if _, err := l.Policy(ctx, missing, ns, false); err == nil {
		t.Error("within the TTL, the ConfigMap found missing was read again")
	}

	clk.SetTime(clk.Now().Add(time.Second))
	if p, err := l.Policy(ctx, spec, ns, false); err != nil || p.ID != keyPolicy(t, b).ID {
		t.Errorf("after the TTL: got %+v, %v; want the rotated key", p, err)
	}
	if p, err := l.Policy(ctx, missing, ns, false); err != nil || p.ID != keyPolicy(t, b).ID {
		t.Errorf("after the TTL: got %+v, %v; want the ConfigMap created since", p, err)
	}
}
