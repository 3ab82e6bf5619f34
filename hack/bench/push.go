package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

const secPush = "8 push events"

// The push benchmark's namespace and tags: one Observe ImagePin on one
// Deployment, one Follow ImagePin (minAge 0) on another.
const (
	pushNS        = "push"
	pushObserve   = "bench/push:observe"
	pushFollow    = "bench/push:follow"
	pushRoundsGap = 1500 * time.Millisecond // past the receiver's MinGap and its confirmation
)

// pushRun is one manager's run of push rounds.
type pushRun struct {
	tagMoved, rollout  []time.Duration
	heads, digestHeads float64 // imagepin's manifest HEADs by tag, by digest
	events             float64
}

// pushEvents times push → TagMoved and push → Follow write with the
// receiver (interval 10m: only events explain it) and without it (the
// shortest interval, 10s), and counts the HEADs each event costs. It has
// its own registry, which notifies the receiver, and its Deployments name
// it directly: the counting proxy would hide the registry's notifications.
func (b *bench) pushEvents(ctx context.Context) error {
	port, err := testenv.FreePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	secrets := filepath.Join(b.dir, "receiver-secrets")
	token := make([]byte, 16)
	if _, err := rand.Read(token); err != nil {
		return err
	}
	if err := os.MkdirAll(secrets, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(secrets, "distribution"), []byte(hex.EncodeToString(token)), 0o600); err != nil {
		return err
	}
	logf("push: starting a registry that notifies the receiver at %s", addr)
	reg, err := testenv.StartRegistryWith(testenv.RegistryOptions{NotifyURL: "http://" + addr + "/hooks/distribution", NotifyToken: hex.EncodeToString(token)})
	if err != nil {
		return err
	}
	b.defers = append(b.defers, func() { _ = reg.Stop() })
	// A counting proxy that keeps the Host: pushes go through it, so the
	// registry's notifications name the host the Deployments name.
	proxy, err := startProxy(reg, b.dir, "push-proxy", true)
	if err != nil {
		return err
	}
	b.defers = append(b.defers, proxy.Close)
	viaProxy := *reg
	viaProxy.Host = proxy.Host
	if viaProxy.CAPool, err = poolOf(proxy.CAFile); err != nil {
		return err
	}
	pusher := newPusher(&viaProxy)
	caFile, err := b.bothCAs(proxy.CAFile)
	if err != nil {
		return err
	}

	if err := b.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pushNS}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: pullSecret, Namespace: pushNS},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: testenv.DockerConfigJSON(proxy.Host, reg.User, reg.Password)},
	}
	if err := b.k8s.Create(ctx, secret); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	var objs []client.Object
	for _, t := range []struct{ name, tag string }{{"observe", pushObserve}, {"follow", pushFollow}} {
		d, err := pusher.push(ctx, t.tag)
		if err != nil {
			return err
		}
		objs = append(objs, b.deployment(pushNS, t.name, t.name, proxy.Host+"/"+t.tag+"@"+d))
	}
	observe := imagePin(pushNS, "observe", "observe", imagesv1alpha1.ModeObserve, 10*time.Minute)
	follow := imagePin(pushNS, "follow", "follow", imagesv1alpha1.ModeFollow, 10*time.Minute)
	follow.Spec.Follow = &imagesv1alpha1.FollowSpec{MinAge: &metav1.Duration{}}
	if err := b.createAll(ctx, append(objs, observe, follow)); err != nil {
		return err
	}

	with, err := b.pushRounds(ctx, pusher, proxy, b.o.pushRounds, managerOpts{name: "manager-push", extra: append([]string{
		"--registry-ca-file=" + caFile, "--receiver-bind-address=" + addr, "--receiver-secret-dir=" + secrets,
	}, b.o.managerFlags...)})
	if err != nil {
		return err
	}
	for _, name := range []string{"observe", "follow"} {
		if err := b.setInterval(ctx, name, 10*time.Second); err != nil {
			return err
		}
	}
	without, err := b.pushRounds(ctx, pusher, proxy, b.o.pushRoundsPoll, managerOpts{name: "manager-poll", extra: append([]string{
		"--registry-ca-file=" + caFile,
	}, b.o.managerFlags...)})
	if err != nil {
		return err
	}

	for _, r := range []struct {
		name string
		run  pushRun
		goal string
	}{{"with the receiver (interval 10m)", with, "≤ 2 s"}, {"without it (interval 10s)", without, ""}} {
		p50, p99 := percentile(r.run.tagMoved, 0.5)/1000, percentile(r.run.tagMoved, 0.99)/1000
		if r.goal != "" {
			b.rep.goal(secPush, "push → TagMoved in status, p99, "+r.name, p99, "s", r.goal, p99 <= 2, fmt.Sprintf("p50 %.2f s over %d pushes", p50, len(r.run.tagMoved)))
		} else {
			b.rep.info(secPush, "push → TagMoved in status, p99, "+r.name, p99, "s", fmt.Sprintf("p50 %.2f s over %d pushes", p50, len(r.run.tagMoved)))
		}
		f50, f99 := percentile(r.run.rollout, 0.5)/1000, percentile(r.run.rollout, 0.99)/1000
		b.rep.info(secPush, "push → Follow writes the Deployment (minAge 0), p99, "+r.name, f99, "s", fmt.Sprintf("p50 %.2f s over %d pushes", f50, len(r.run.rollout)))
	}
	if with.events > 0 {
		b.rep.goal(secPush, "tag HEADs per push event", with.heads/with.events, "/event", "≤ 2 (a hint and its confirmation)", with.heads/with.events <= 2,
			fmt.Sprintf("%.0f HEADs of the tags for %.0f events the receiver took; %.0f HEADs of digests besides (platforms of the digest a spec still pins, once per digest)", with.heads, with.events, with.digestHeads))
	}
	b.rep.Methods["push"] = fmt.Sprintf("a second distribution registry (htpasswd, TLS) notifies the manager's receiver of every push (distribution endpoint, bearer token); one Observe ImagePin on a Deployment pinned to %s and one Follow ImagePin (minAge 0) on one pinned to %s; each round pushes new content to each tag straight to the registry and polls every 20 ms, from the end of the push, for TagMoved with the new digest in status and for the Deployment naming the new digest; rounds %s apart (past the receiver's confirmation, arranged); with the receiver at interval 10m (%d rounds), then a manager without it at interval 10s (%d rounds); pushes and imagepin's requests go through a counting proxy that keeps the Host (so the registry's events name the host the Deployments name); tag HEADs are imagepin's manifest HEADs by tag at the proxy, events from imagepin_receiver_pushes_total (hinted, deferred, coalesced)",
		pushObserve, pushFollow, pushRoundsGap, b.o.pushRounds, b.o.pushRoundsPoll)
	return nil
}

// pushRounds starts a manager, waits until both ImagePins are Ready, then
// pushes each tag rounds times and times what follows.
func (b *bench) pushRounds(ctx context.Context, pusher *pusher, proxy *countingProxy, rounds int, o managerOpts) (pushRun, error) {
	host := proxy.Host
	var run pushRun
	m, err := b.startManager(ctx, o)
	if err != nil {
		return run, err
	}
	defer m.Stop()
	err = poll(ctx, 100*time.Millisecond, 2*time.Minute, func() (bool, error) {
		pins, err := b.listPinsNamed(ctx, "observe", "follow")
		if err != nil {
			return false, err
		}
		return readyWith(pins["observe"], 1) && readyWith(pins["follow"], 1), nil
	})
	if err != nil {
		return run, fmt.Errorf("the push ImagePins never became Ready: %w", err)
	}
	before, err := m.scrape(ctx)
	if err != nil {
		return run, err
	}
	from := time.Now()
	logf("push: %d rounds with %s", rounds, o.name)
	for range rounds {
		d, err := pusher.push(ctx, pushObserve)
		if err != nil {
			return run, err
		}
		pushed := time.Now()
		err = poll(ctx, 20*time.Millisecond, 2*time.Minute, func() (bool, error) {
			p := &imagesv1alpha1.ImagePin{}
			if err := b.k8s.Get(ctx, client.ObjectKey{Namespace: pushNS, Name: "observe"}, p); err != nil {
				return false, err
			}
			return showsTagMoved(p, host+"/"+pushObserve, d), nil
		})
		if err != nil {
			return run, fmt.Errorf("TagMoved after a push: %w", err)
		}
		run.tagMoved = append(run.tagMoved, time.Since(pushed))

		if d, err = pusher.push(ctx, pushFollow); err != nil {
			return run, err
		}
		pushed = time.Now()
		err = poll(ctx, 20*time.Millisecond, 2*time.Minute, func() (bool, error) {
			dep := &appsv1.Deployment{}
			if err := b.k8s.Get(ctx, client.ObjectKey{Namespace: pushNS, Name: "follow"}, dep); err != nil {
				return false, err
			}
			return strings.HasSuffix(dep.Spec.Template.Spec.Containers[0].Image, "@"+d), nil
		})
		if err != nil {
			return run, fmt.Errorf("a Follow write after a push: %w", err)
		}
		run.rollout = append(run.rollout, time.Since(pushed))
		if err := sleep(ctx, pushRoundsGap); err != nil {
			return run, err
		}
	}
	after, err := m.scrape(ctx)
	if err != nil {
		return run, err
	}
	for _, ev := range proxy.since(from) {
		if ev.kind != kindManifest || ev.method != http.MethodHead || !strings.Contains(ev.agent, "imagepin") {
			continue
		}
		if strings.HasPrefix(ev.ref, "sha256:") {
			run.digestHeads++
		} else {
			run.heads++
		}
	}
	for _, r := range []string{`result="hinted"`, `result="deferred"`, `result="coalesced"`} {
		run.events += after.sum("imagepin_receiver_pushes_total", r) - before.sum("imagepin_receiver_pushes_total", r)
	}
	return run, nil
}

// listPinsNamed reads the push namespace's ImagePins by name.
func (b *bench) listPinsNamed(ctx context.Context, names ...string) (map[string]*imagesv1alpha1.ImagePin, error) {
	out := map[string]*imagesv1alpha1.ImagePin{}
	for _, n := range names {
		p := &imagesv1alpha1.ImagePin{}
		if err := b.k8s.Get(ctx, client.ObjectKey{Namespace: pushNS, Name: n}, p); err != nil {
			return nil, err
		}
		out[n] = p
	}
	return out, nil
}

// setInterval changes an ImagePin's interval.
func (b *bench) setInterval(ctx context.Context, name string, interval time.Duration) error {
	p := &imagesv1alpha1.ImagePin{}
	if err := b.k8s.Get(ctx, client.ObjectKey{Namespace: pushNS, Name: name}, p); err != nil {
		return err
	}
	before := p.DeepCopy()
	p.Spec.Interval = &metav1.Duration{Duration: interval}
	return b.k8s.Patch(ctx, p, client.MergeFrom(before))
}

// bothCAs writes a CA file trusting both counting proxies.
func (b *bench) bothCAs(caFile string) (string, error) {
	var pem []byte
	for _, f := range []string{b.proxy.CAFile, caFile} {
		raw, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		pem = append(pem, raw...)
	}
	path := filepath.Join(b.dir, "push-cas.pem")
	return path, os.WriteFile(path, pem, 0o600)
}

// poolOf reads a PEM CA file into a pool.
func poolOf(caFile string) (*x509.CertPool, error) {
	raw, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw) {
		return nil, fmt.Errorf("no certificate in %s", caFile)
	}
	return pool, nil
}
