package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

const secAdmission = "5 admission"

// noWebhookLabel marks the namespace the webhook configuration's
// namespaceSelector leaves out: the API server does not call the webhook
// there, as if it were not registered.
const noWebhookLabel = "bench.imagepin.dev/no-webhook"

// admissionCase is one way of creating Deployments, and its latencies.
type admissionCase struct {
	name string
	ns   string
	// image returns the image of the i-th Deployment; it may push first
	// (not timed).
	image func(ctx context.Context, i int) (string, error)
	// n is how many are timed (after 5 untimed warm-ups).
	n int
	// settle waits (untimed) after each create until the namespace's
	// ImagePin has checked the new Deployment.
	settle bool

	created int
	times   []time.Duration
	pinned  int
}

// admission measures creating Deployments through the API server with and
// without the webhook, on a cache hit and a cache miss: the cases
// interleaved round by round, so that whatever else the machine does
// weighs on each alike, and each create after the controller has finished
// with the one before; then a burst of cache hits back to back, as
// BenchmarkAdmission creates them, with the controller's reconciles
// overlapping.
func (b *bench) admission(ctx context.Context) error {
	const app = "adm"
	nsNoHook, nsNone, nsHit, nsMiss, nsBurst := "adm-no-webhook", "adm-none", "adm-hit", "adm-miss", "adm-burst"
	if err := b.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsNoHook, Labels: map[string]string{noWebhookLabel: "true"}}}); err != nil {
		return err
	}
	for _, ns := range []string{nsNoHook, nsNone, nsHit, nsMiss, nsBurst} {
		if err := b.namespaceWithSecret(ctx, ns); err != nil {
			return err
		}
	}
	hitTag := "bench/adm:v1"
	if _, err := b.push.push(ctx, hitTag); err != nil {
		return err
	}
	// A long interval keeps the hit tag's answer cached through the run.
	for _, ns := range []string{nsHit, nsMiss, nsBurst} {
		if err := b.k8s.Create(ctx, imagePin(ns, "bench", app, imagesv1alpha1.ModePin, 5*time.Minute)); err != nil {
			return err
		}
	}
	wh, err := testenv.NewWebhookServing(filepath.Join(b.dir, "webhook-certs"), "imagepin bench webhook CA")
	if err != nil {
		return err
	}
	logf("admission: starting a manager that serves the webhook on 127.0.0.1:%d", wh.Port)
	m, err := b.startManager(ctx, managerOpts{name: "manager-webhook", webhook: wh, extra: b.o.managerFlags})
	if err != nil {
		return err
	}
	defer m.Stop()
	cfg, err := b.registerWebhook(ctx, wh, noWebhookLabel)
	if err != nil {
		return err
	}
	defer func() { _ = b.k8s.Delete(context.Background(), cfg) }()
	// The webhook is in the API server's path once a dry run comes back
	// pinned; that also resolves the hit tag once, so hits are hits.
	probe := b.deployment(nsHit, "probe", app, b.image(hitTag))
	err = poll(ctx, 100*time.Millisecond, 30*time.Second, func() (bool, error) {
		d := probe.DeepCopy()
		if err := b.k8s.Create(ctx, d, client.DryRunAll); err != nil {
			return false, err
		}
		return strings.Contains(d.Spec.Template.Spec.Containers[0].Image, "@sha256:"), nil
	})
	if err != nil {
		return fmt.Errorf("the webhook never pinned a dry run: %w", err)
	}

	hitImage := func(context.Context, int) (string, error) { return b.image(hitTag), nil }
	missImage := func(ctx context.Context, i int) (string, error) {
		tag := fmt.Sprintf("bench/adm:miss-%d", i)
		if _, err := b.push.push(ctx, tag); err != nil {
			return "", err
		}
		return b.image(tag), nil
	}
	n := b.o.admissionSamples
	noHook := &admissionCase{name: "no webhook", ns: nsNoHook, image: hitImage, n: n}
	none := &admissionCase{name: "webhook, namespace without ImagePin", ns: nsNone, image: hitImage, n: n}
	hit := &admissionCase{name: "webhook, cache hit", ns: nsHit, image: hitImage, n: n, settle: true}
	miss := &admissionCase{name: "webhook, cache miss", ns: nsMiss, image: missImage, n: b.o.missSamples, settle: true}
	cases := []*admissionCase{noHook, none, hit, miss}

	logf("admission: %d rounds of %d cases, interleaved", n, len(cases))
	before, err := m.scrape(ctx)
	if err != nil {
		return err
	}
	for round := -5; round < n; round++ {
		for _, c := range cases {
			if round >= c.n {
				continue
			}
			if err := b.timeCreate(ctx, c, app, round >= 0); err != nil {
				return err
			}
		}
	}
	after, err := m.scrape(ctx)
	if err != nil {
		return err
	}
	decisionMean := func(d string) string {
		cnt := after.sum("imagepin_admission_duration_seconds_count", `decision="`+d+`"`) - before.sum("imagepin_admission_duration_seconds_count", `decision="`+d+`"`)
		sum := after.sum("imagepin_admission_duration_seconds_sum", `decision="`+d+`"`) - before.sum("imagepin_admission_duration_seconds_sum", `decision="`+d+`"`)
		if cnt == 0 {
			return "none"
		}
		return fmt.Sprintf("%.2f ms mean over %d", sum/cnt*1000, int(cnt))
	}
	serverSide := fmt.Sprintf("the webhook's own answer time (imagepin_admission_duration_seconds): unchanged %s, pinned (hits and misses) %s", decisionMean("unchanged"), decisionMean("pinned"))

	logf("admission: a burst of %d cache hits back to back", n)
	burst := &admissionCase{name: "webhook, cache hit, burst", ns: nsBurst, image: hitImage, n: n}
	before, err = m.scrape(ctx)
	if err != nil {
		return err
	}
	for i := -5; i < n; i++ {
		if err := b.timeCreate(ctx, burst, app, i >= 0); err != nil {
			return err
		}
	}
	after, err = m.scrape(ctx)
	if err != nil {
		return err
	}
	reconciles := int(after.sum("controller_runtime_reconcile_total", `controller="imagepin"`) - before.sum("controller_runtime_reconcile_total", `controller="imagepin"`))

	// The webhook alone, without the API server: AdmissionReviews posted
	// straight to it, to tell its cost from the API server's.
	logf("admission: AdmissionReviews posted straight to the webhook")
	direct := map[string][]time.Duration{}
	for _, c := range []struct{ name, ns string }{{"namespace without ImagePin", nsNone}, {"cache hit", nsHit}} {
		if direct[c.name], err = b.timeDirect(ctx, wh, c.ns, app, b.image(hitTag), n); err != nil {
			return err
		}
	}

	// 50 applies at once, with and without the webhook, round by round.
	logf("admission: %d rounds of %d concurrent creates, with and without the webhook", concurrentRounds, concurrentApplies)
	concNoHook, concHit := &concurrentCase{ns: nsNoHook}, &concurrentCase{ns: nsBurst}
	for round := range concurrentRounds {
		for _, c := range []*concurrentCase{concNoHook, concHit} {
			if err := b.concurrentCreates(ctx, c, app, b.image(hitTag), round); err != nil {
				return err
			}
		}
	}
	for _, c := range []struct {
		name string
		c    *concurrentCase
	}{{"no webhook", concNoHook}, {"webhook, cache hit", concHit}} {
		note := fmt.Sprintf("%d Deployments, %d at once in %d rounds", len(c.c.times), concurrentApplies, concurrentRounds)
		if c.c == concHit {
			note += fmt.Sprintf(", %d stored pinned", c.c.pinned)
		}
		b.rep.info(secAdmission, fmt.Sprintf("%d concurrent creates, %s: p50", concurrentApplies, c.name), percentile(c.c.times, 0.50), "ms", note)
		b.rep.info(secAdmission, fmt.Sprintf("%d concurrent creates, %s: p99", concurrentApplies, c.name), percentile(c.c.times, 0.99), "ms", "")
	}
	if concHit.pinned != len(concHit.times) {
		b.rep.failed(secAdmission, "concurrent creates: stored pinned", fmt.Sprintf("%d", len(concHit.times)),
			fmt.Errorf("%d of %d were stored pinned", concHit.pinned, len(concHit.times)))
	}
	b.rep.info(secAdmission, fmt.Sprintf("added at p99 by the webhook on a cache hit, %d concurrent creates", concurrentApplies),
		percentile(concHit.times, 0.99)-percentile(concNoHook.times, 0.99), "ms", "")

	for _, c := range []*admissionCase{noHook, none, hit, miss, burst} {
		note := fmt.Sprintf("%d Deployments", len(c.times))
		if c != noHook && c != none {
			note += fmt.Sprintf(", %d stored pinned", c.pinned)
		}
		switch c {
		case none:
			note += "; " + serverSide
		case burst:
			note += fmt.Sprintf("; %d reconciles of ImagePins overlapped them", reconciles)
		}
		b.rep.info(secAdmission, c.name+": p50", percentile(c.times, 0.50), "ms", note)
		b.rep.info(secAdmission, c.name+": p99", percentile(c.times, 0.99), "ms", "")
	}
	for _, name := range []string{"namespace without ImagePin", "cache hit"} {
		b.rep.info(secAdmission, "AdmissionReview posted straight to the webhook, "+name+": p50", percentile(direct[name], 0.50), "ms",
			fmt.Sprintf("%d requests on one kept-alive TLS connection, no API server", len(direct[name])))
		b.rep.info(secAdmission, "AdmissionReview posted straight to the webhook, "+name+": p99", percentile(direct[name], 0.99), "ms", "")
	}
	added := percentile(hit.times, 0.99) - percentile(noHook.times, 0.99)
	b.rep.goal(secAdmission, "added at p99 by the webhook on a cache hit (hit p99 − no-webhook p99)", added, "ms", "≤ 10 ms", added <= 10,
		fmt.Sprintf("p50 added: %.1f ms; in the burst: p99 %+.1f ms, p50 %+.1f ms",
			percentile(hit.times, 0.50)-percentile(noHook.times, 0.50),
			percentile(burst.times, 0.99)-percentile(noHook.times, 0.99), percentile(burst.times, 0.50)-percentile(noHook.times, 0.50)))
	for _, c := range []*admissionCase{hit, burst} {
		if c.pinned != len(c.times) {
			b.rep.failed(secAdmission, c.name+": stored pinned", fmt.Sprintf("%d", len(c.times)),
				fmt.Errorf("%d of %d were stored pinned", c.pinned, len(c.times)))
		}
	}
	b.rep.Methods["admission"] = fmt.Sprintf("Deployments created one at a time through the API server by a client without client-side rate limiting, each timed from the call to its answer; p50/p99 by nearest rank as BenchmarkAdmission. "+
		"The webhook: config/webhook/manifests.yaml registered with url https://127.0.0.1:%d/mutate-imagepin and the caBundle of its own CA, served by a manager process; its namespaceSelector leaves out one namespace, where the API server does not call it (\"no webhook\"). "+
		"Cases interleaved round by round after 5 untimed rounds: no webhook; webhook in a namespace without ImagePin; cache hit (a Pin ImagePin, interval 5m, selects it and its tag was resolved before); cache miss (a fresh tag of an already-seen repository pushed just before, untimed: one HEAD). After a hit or a miss the next create waits, untimed, until that ImagePin's reconcile has counted the new Deployment, so the controller is idle during each timed create. "+
		"Burst: %d hits back to back in a namespace of their own, each create's reconcile overlapping the next create. "+
		"Direct: AdmissionReviews posted to the webhook over one kept-alive TLS connection, no API server. "+
		"Concurrent: %d rounds, each %d creates started at once (one goroutine each) without the webhook and then %d in the burst's namespace (cache hits), each create timed alone", wh.Port, n, concurrentRounds, concurrentApplies, concurrentApplies)

	logf("admission: removing the webhook and the Deployments")
	if err := b.k8s.Delete(ctx, cfg); err != nil {
		return err
	}
	m.Stop()
	for _, ns := range []string{nsHit, nsMiss, nsBurst} {
		if err := b.k8s.DeleteAllOf(ctx, &imagesv1alpha1.ImagePin{}, client.InNamespace(ns)); err != nil {
			return err
		}
	}
	return b.deleteDeployments(ctx, nsNoHook, nsNone, nsHit, nsMiss, nsBurst)
}

// concurrentApplies is how many creates the concurrent case starts at
// once, concurrentRounds how many times.
const concurrentApplies, concurrentRounds = 50, 8

type concurrentCase struct {
	ns     string
	times  []time.Duration
	pinned int
}

// concurrentCreates starts concurrentApplies creates in c's namespace at
// once and records how long each took.
func (b *bench) concurrentCreates(ctx context.Context, c *concurrentCase, app, image string, round int) error {
	times := make([]time.Duration, concurrentApplies)
	pinned := make([]bool, concurrentApplies)
	errs := make([]error, concurrentApplies)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range concurrentApplies {
		d := b.deployment(c.ns, fmt.Sprintf("c%02d-%02d", round, i), app, image)
		wg.Go(func() {
			<-start
			t0 := time.Now()
			errs[i] = b.k8s.Create(ctx, d)
			times[i] = time.Since(t0)
			pinned[i] = isPinned(d)
		})
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.times = append(c.times, times...)
	for _, p := range pinned {
		if p {
			c.pinned++
		}
	}
	return nil
}

// timeCreate creates the next Deployment of c, times it when record, and
// then waits for the controller if c says so.
func (b *bench) timeCreate(ctx context.Context, c *admissionCase, app string, record bool) error {
	img, err := c.image(ctx, c.created)
	if err != nil {
		return err
	}
	d := b.deployment(c.ns, fmt.Sprintf("d-%04d", c.created), app, img)
	start := time.Now()
	if err := b.k8s.Create(ctx, d); err != nil {
		return fmt.Errorf("create %s/%s: %w", d.Namespace, d.Name, err)
	}
	took := time.Since(start)
	c.created++
	if record {
		c.times = append(c.times, took)
		if isPinned(d) {
			c.pinned++
		}
	}
	if !c.settle {
		return nil
	}
	key := client.ObjectKey{Namespace: c.ns, Name: "bench"}
	return poll(ctx, 10*time.Millisecond, 30*time.Second, func() (bool, error) {
		var p imagesv1alpha1.ImagePin
		if err := b.k8s.Get(ctx, key, &p); err != nil {
			return false, err
		}
		return readyWith(&p, c.created), nil
	})
}

// timeDirect posts n AdmissionReviews for a Deployment in ns naming image
// straight to the webhook and times each answer.
func (b *bench) timeDirect(ctx context.Context, wh *testenv.WebhookServing, ns, app, image string, n int) ([]time.Duration, error) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(wh.CAPEM)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	url := fmt.Sprintf("https://127.0.0.1:%d/mutate-imagepin", wh.Port)
	var times []time.Duration
	for i := -5; i < n; i++ {
		d := b.deployment(ns, fmt.Sprintf("direct-%d", i+5), app, image)
		d.SetGroupVersionKind(appsv1.SchemeGroupVersion.WithKind("Deployment"))
		raw, err := json.Marshal(d)
		if err != nil {
			return nil, err
		}
		review := admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{
				UID:       types.UID(fmt.Sprintf("bench-%d", i+5)),
				Kind:      metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"},
				Resource:  metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"},
				Namespace: ns, Name: d.Name, Operation: admissionv1.Create,
				Object: runtime.RawExtension{Raw: raw},
			},
		}
		body, err := json.Marshal(&review)
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		var out admissionv1.AdmissionReview
		err = json.NewDecoder(resp.Body).Decode(&out)
		_ = resp.Body.Close()
		took := time.Since(start)
		if err != nil {
			return nil, err
		}
		if out.Response == nil || !out.Response.Allowed {
			return nil, fmt.Errorf("the webhook did not allow a Deployment posted straight to it: %+v", out.Response)
		}
		if i >= 0 {
			times = append(times, took)
		}
	}
	return times, nil
}

func isPinned(d *appsv1.Deployment) bool {
	for _, c := range d.Spec.Template.Spec.Containers {
		if !strings.Contains(c.Image, "@sha256:") {
			return false
		}
	}
	return true
}
