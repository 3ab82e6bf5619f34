package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

// pullSecret is the docker-registry Secret every benchmark namespace holds
// and every benchmark Deployment names.
const pullSecret = "regcred"

// errDeadline is returned by poll when the condition did not hold in time.
var errDeadline = errors.New("deadline exceeded")

// poll calls cond every interval until it holds, fails, ctx ends or timeout
// passes (errDeadline).
func poll(ctx context.Context, every, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errDeadline
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// sleep waits d or until ctx ends. The benchmarks sleep only to watch for
// nothing happening over a stated window, never to assert a change.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// namespaceWithSecret creates namespace ns (if missing) and the pull secret
// for the proxy's host in it.
func (b *bench) namespaceWithSecret(ctx context.Context, ns string) error {
	if err := b.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: pullSecret, Namespace: ns},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: testenv.DockerConfigJSON(b.proxy.Host, b.reg.User, b.reg.Password)},
	}
	if err := b.k8s.Create(ctx, secret); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create pull secret in %s: %w", ns, err)
	}
	return nil
}

// Deployment shapes, --shape.
const (
	shapeService = "service"
	shapeMinimal = "minimal"
)

// deployment is the benchmarks' Deployment: the shape of a small real
// service (labels, a port, three environment variables, resources and a
// readiness probe) naming one image and the pull secret; with --shape
// minimal only the container's name and image and the pull secret.
func (b *bench) deployment(ns, name, app, image string) *appsv1.Deployment {
	d := serviceDeployment(ns, name, app, image)
	if b.o.shape == shapeMinimal {
		c := &d.Spec.Template.Spec.Containers[0]
		*c = corev1.Container{Name: c.Name, Image: c.Image}
	}
	return d
}

func serviceDeployment(ns, name, app, image string) *appsv1.Deployment {
	labels := map[string]string{"app": app, "app.kubernetes.io/part-of": "imagepin-bench"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: new(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app, "name": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app, "name": name, "app.kubernetes.io/part-of": "imagepin-bench"}},
				Spec: corev1.PodSpec{
					ImagePullSecrets: []corev1.LocalObjectReference{{Name: pullSecret}},
					Containers: []corev1.Container{{
						Name:  "app",
						Image: image,
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
						Env: []corev1.EnvVar{
							{Name: "LOG_LEVEL", Value: "info"},
							{Name: "PORT", Value: "8080"},
							{Name: "SERVICE_NAME", Value: name},
						},
						Resources: corev1.ResourceRequirements{
							Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
							Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
						},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
							HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")},
						}},
					}},
				},
			},
		},
	}
}

// imagePin returns an ImagePin in ns selecting every workload labelled
// app=app (all of the namespace's when app is empty).
func imagePin(ns, name, app string, mode imagesv1alpha1.Mode, interval time.Duration) *imagesv1alpha1.ImagePin {
	p := &imagesv1alpha1.ImagePin{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: imagesv1alpha1.ImagePinSpec{
			Mode:     mode,
			Interval: &metav1.Duration{Duration: interval},
		},
	}
	if app != "" {
		p.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
	}
	return p
}

// createAll creates objs with a few workers; the first error wins. An
// object already there is left as it is.
func (b *bench) createAll(ctx context.Context, objs []client.Object) error {
	return b.forAll(ctx, objs, func(ctx context.Context, o client.Object) error {
		if err := b.k8s.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create: %w", err)
		}
		return nil
	})
}

// deleteDeployments deletes every Deployment in each namespace, and the
// ReplicaSets and pods addPods gave them (no garbage collector runs; no
// kubelet confirms a pod's end), one deletecollection each, and waits
// until the Deployments are gone.
func (b *bench) deleteDeployments(ctx context.Context, namespaces ...string) error {
	for _, ns := range namespaces {
		for _, o := range []client.Object{&appsv1.Deployment{}, &appsv1.ReplicaSet{}, &corev1.Pod{}} {
			if err := b.k8s.DeleteAllOf(ctx, o, client.InNamespace(ns), client.GracePeriodSeconds(0)); err != nil {
				return fmt.Errorf("delete %Ts in %s: %w", o, ns, err)
			}
		}
	}
	return poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		for _, ns := range namespaces {
			var l metav1.PartialObjectMetadataList
			l.SetGroupVersionKind(appsv1.SchemeGroupVersion.WithKind("DeploymentList"))
			if err := b.k8s.List(ctx, &l, client.InNamespace(ns), client.Limit(1)); err != nil {
				return false, err
			}
			if len(l.Items) > 0 {
				return false, nil
			}
		}
		return true, nil
	})
}

// readyWith reports whether an ImagePin has checked its current spec and
// every image resolved, with want workloads selected.
func readyWith(p *imagesv1alpha1.ImagePin, want int) bool {
	if p.Status.ObservedGeneration != p.Generation || int(p.Status.Summary.Workloads) != want {
		return false
	}
	c := meta.FindStatusCondition(p.Status.Conditions, imagesv1alpha1.ConditionReady)
	return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == p.Generation
}

// listPins returns the ImagePins of the given namespaces, by namespace.
func (b *bench) listPins(ctx context.Context, namespaces []string) (map[string]*imagesv1alpha1.ImagePin, error) {
	want := map[string]bool{}
	for _, ns := range namespaces {
		want[ns] = true
	}
	var l imagesv1alpha1.ImagePinList
	if err := b.k8s.List(ctx, &l); err != nil {
		return nil, err
	}
	out := map[string]*imagesv1alpha1.ImagePin{}
	for i := range l.Items {
		if want[l.Items[i].Namespace] {
			out[l.Items[i].Namespace] = &l.Items[i]
		}
	}
	return out, nil
}

// registerWebhook installs config/webhook's MutatingWebhookConfiguration
// pointed at a manager on 127.0.0.1 with the CA that signed its serving
// certificate, leaving out namespaces labelled excludeLabel.
func (b *bench) registerWebhook(ctx context.Context, w *testenv.WebhookServing, excludeLabel string) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	cfg, err := w.Configuration("imagepin-bench")
	if err != nil {
		return nil, err
	}
	for i := range cfg.Webhooks {
		cfg.Webhooks[i].NamespaceSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: excludeLabel, Operator: metav1.LabelSelectorOpDoesNotExist},
		}}
	}
	if err := b.k8s.Create(ctx, cfg); err != nil {
		return nil, fmt.Errorf("register the webhook: %w", err)
	}
	return cfg, nil
}

// statusWrites returns how many writes of ImagePin status the API server
// has answered (apiserver_request_total, resource imagepins, subresource
// status, verbs PATCH, UPDATE and APPLY), from its own /metrics.
func (b *bench) statusWrites(ctx context.Context) (float64, error) {
	hc, err := rest.HTTPClientFor(b.env.Config)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(b.env.Config.Host, "/")+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("API server /metrics: %s", resp.Status)
	}
	var total float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `resource="imagepins"`) || !strings.Contains(line, `subresource="status"`) {
			continue
		}
		if !strings.Contains(line, `verb="PATCH"`) && !strings.Contains(line, `verb="UPDATE"`) && !strings.Contains(line, `verb="APPLY"`) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("API server /metrics: %q: %w", line, err)
		}
		total += v
	}
	return total, sc.Err()
}
