package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

const secWrites = "7 writes"

// The Follow benchmark's namespace, app label and tag.
const (
	followNS  = "follow"
	followApp = "follow"
	followTag = "bench/follow:v1"
)

// rollouts is what is known of each Follow Deployment, by name.
type rollouts map[string]rolloutState

// rolloutState is one Deployment's generation, image, whether the
// deployment controller has seen its generation, and how many ReplicaSets
// it owns.
type rolloutState struct {
	generation  int64
	replicaSets int
	image       string
	settled     bool // status.observedGeneration == generation
}

// writes counts the rollouts Follow causes: one per real digest change,
// none for a push of identical content. kube-controller-manager runs, so
// a rollout is a real new ReplicaSet.
func (b *bench) writes(ctx context.Context) error {
	ns, app, tag := followNS, followApp, followTag
	kcmDir := filepath.Join(b.dir, "kcm")
	if err := os.MkdirAll(kcmDir, 0o700); err != nil {
		return err
	}
	logf("writes: starting kube-controller-manager")
	stop, err := b.env.StartControllerManager(kcmDir)
	if err != nil {
		return err
	}
	stopKCM := sync.OnceFunc(stop)
	b.defers = append(b.defers, stopKCM)
	defer stopKCM()

	if err := b.namespaceWithSecret(ctx, ns); err != nil {
		return err
	}
	d1, err := b.push.push(ctx, tag)
	if err != nil {
		return err
	}
	n := b.o.followDeployments
	var objs []client.Object
	for i := range n {
		objs = append(objs, b.deployment(ns, fmt.Sprintf("follow-%02d", i), app, b.image(tag)+"@"+d1))
	}
	objs = append(objs, imagePin(ns, "follow", app, imagesv1alpha1.ModeFollow, b.o.followInterval))
	if err := b.createAll(ctx, objs); err != nil {
		return err
	}
	m, err := b.startManager(ctx, managerOpts{name: "manager-follow", extra: b.o.managerFlags})
	if err != nil {
		return err
	}
	defer m.Stop()

	// Settled: the ImagePin Ready with every Deployment, each rolled out
	// once (one ReplicaSet) at d1.
	var r0 rollouts
	err = poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		pins, err := b.listPins(ctx, []string{ns})
		if err != nil || pins[ns] == nil || !readyWith(pins[ns], n) {
			return false, err
		}
		if r0, err = b.rollouts(ctx); err != nil {
			return false, err
		}
		return r0.all(n, func(_ string, s rolloutState) bool { return s.settled && s.replicaSets == 1 }), nil
	})
	if err != nil {
		return fmt.Errorf("the Follow Deployments never settled at their first rollout: %w", err)
	}
	writes0, err := b.workloadWrites(ctx, m, ns)
	if err != nil {
		return err
	}

	// A real change: new content under the tag.
	d2, err := b.push.push(ctx, tag)
	if err != nil {
		return err
	}
	pushed := time.Now()
	logf("writes: pushed %s again with new content; waiting for every Deployment to roll out", tag)
	var r1 rollouts
	timeout := 3*b.o.followInterval + time.Minute
	err = poll(ctx, 200*time.Millisecond, timeout, func() (bool, error) {
		var err error
		if r1, err = b.rollouts(ctx); err != nil {
			return false, err
		}
		return r1.all(n, func(_ string, s rolloutState) bool {
			return s.settled && strings.HasSuffix(s.image, "@"+d2) && s.replicaSets >= 2
		}), nil
	})
	if err != nil && !errors.Is(err, errDeadline) {
		return err
	}
	rolled := time.Since(pushed)
	if errors.Is(err, errDeadline) {
		b.rep.failed(secWrites, "rollouts per real digest change", "1.0", fmt.Errorf("not every Deployment ran the new digest within %s", timeout))
	} else {
		b.rep.info(secWrites, fmt.Sprintf("push → all %d Deployments rolled out", n), rolled.Seconds(), "s", fmt.Sprintf("interval %s", b.o.followInterval))
		// Watch one more interval for a second, unwanted write.
		if err := sleep(ctx, b.o.followInterval+2*time.Second); err != nil {
			return err
		}
		if r1, err = b.rollouts(ctx); err != nil {
			return err
		}
		rs, gen := r1.delta(r0)
		writes1, err := b.workloadWrites(ctx, m, ns)
		if err != nil {
			return err
		}
		b.rep.goal(secWrites, "rollouts (new ReplicaSets) per Deployment per real digest change", rs, "/Deployment", "1.0", rs == 1 && r1.allDelta(r0, 1),
			fmt.Sprintf("generation changes per Deployment %.2f; imagepin_workload_writes_total +%d", gen, int(writes1-writes0)))
		writes0, r0 = writes1, r1
	}

	// No change: the identical content pushed again.
	same, err := b.push.pushAgain(ctx, tag)
	if err != nil {
		return err
	}
	if same != d2 {
		return fmt.Errorf("pushing the same image again gave digest %s, want %s", same, d2)
	}
	again := time.Now()
	logf("writes: pushed identical content; waiting for imagepin to check the tag, then watching one interval")
	err = poll(ctx, 100*time.Millisecond, 2*b.o.followInterval+30*time.Second, func() (bool, error) {
		return !b.firstHEAD(tag, again).IsZero(), nil
	})
	if err != nil {
		b.rep.failed(secWrites, "rollouts per unchanged re-push", "0", fmt.Errorf("imagepin did not check the tag after the push: %w", err))
		return nil
	}
	// A fixed window: nothing should happen in it.
	if err := sleep(ctx, b.o.followInterval+2*time.Second); err != nil {
		return err
	}
	r2, err := b.rollouts(ctx)
	if err != nil {
		return err
	}
	rs, gen := r2.delta(r0)
	writes2, err := b.workloadWrites(ctx, m, ns)
	if err != nil {
		return err
	}
	b.rep.goal(secWrites, "rollouts (new ReplicaSets) per Deployment per unchanged re-push", rs, "/Deployment", "0", rs == 0 && gen == 0,
		fmt.Sprintf("generation changes per Deployment %.2f; imagepin_workload_writes_total +%d", gen, int(writes2-writes0)))
	b.rep.Methods["writes"] = fmt.Sprintf("kube-controller-manager running; %d Deployments pinned to %s, a Follow ImagePin (interval %s); ReplicaSets owned and metadata.generation read per Deployment once it settled, after a push of new content once all ran the new digest plus one more interval (%s + 2 s, fixed, to catch a second write), and after an identical push once the proxy saw imagepin HEAD the tag plus one more interval (fixed: nothing should happen)",
		n, tag, b.o.followInterval, b.o.followInterval)

	m.Stop()
	stopKCM()
	return b.deleteDeployments(ctx, ns)
}

// rollouts reads each Deployment of the Follow namespace and counts the
// ReplicaSets it owns.
func (b *bench) rollouts(ctx context.Context) (rollouts, error) {
	ns := followNS
	var ds appsv1.DeploymentList
	if err := b.k8s.List(ctx, &ds, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	var rss appsv1.ReplicaSetList
	if err := b.k8s.List(ctx, &rss, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	owned := map[string]int{}
	for _, rs := range rss.Items {
		if o := metav1.GetControllerOf(&rs); o != nil && o.Kind == "Deployment" {
			owned[o.Name]++
		}
	}
	out := rollouts{}
	for _, d := range ds.Items {
		out[d.Name] = rolloutState{
			generation:  d.Generation,
			replicaSets: owned[d.Name],
			image:       d.Spec.Template.Spec.Containers[0].Image,
			settled:     d.Status.ObservedGeneration == d.Generation,
		}
	}
	return out, nil
}

// all reports whether there are n Deployments and each satisfies ok.
func (r rollouts) all(n int, ok func(string, rolloutState) bool) bool {
	if len(r) != n {
		return false
	}
	for name, s := range r {
		if !ok(name, s) {
			return false
		}
	}
	return true
}

// delta returns the mean new ReplicaSets and generation changes per
// Deployment since before.
func (r rollouts) delta(before rollouts) (replicaSets, generations float64) {
	for name, s := range r {
		replicaSets += float64(s.replicaSets - before[name].replicaSets)
		generations += float64(s.generation - before[name].generation)
	}
	return replicaSets / float64(len(r)), generations / float64(len(r))
}

// allDelta reports whether every Deployment got exactly want new
// ReplicaSets since before.
func (r rollouts) allDelta(before rollouts, want int) bool {
	for name, s := range r {
		if s.replicaSets-before[name].replicaSets != want {
			return false
		}
	}
	return true
}

// workloadWrites reads imagepin_workload_writes_total of ns from m.
func (b *bench) workloadWrites(ctx context.Context, m *managerProc, ns string) (float64, error) {
	ms, err := m.scrape(ctx)
	if err != nil {
		return 0, err
	}
	return ms.sum("imagepin_workload_writes_total", `namespace="`+ns+`"`), nil
}
