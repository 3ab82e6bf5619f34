package controllers

import (
	"context"
	"errors"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/drift"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/verify"
	"github.com/imagepin/imagepin/internal/workload"
)

// maxNodesPerDigest caps the node names kept per running digest.
const maxNodesPerDigest = 16

// resolveWorkers bounds the resolutions one reconcile runs at once; the
// resolver coalesces those of one tag.
const resolveWorkers = 8

// containerObs is what was seen of one selected container of one workload.
type containerObs struct {
	// namespace is the workload's, for a ClusterImagePin's check; empty
	// for an ImagePin's (its own namespace).
	namespace string
	kind      imagesv1alpha1.WorkloadKind
	workload  string
	// uid is the workload's UID: state kept about a workload is keyed by
	// it, so a workload deleted and created again starts afresh.
	uid types.UID
	// generation is the workload's metadata.generation as read.
	generation int64
	// ownsFields is true when imagepin still owns fields of the workload
	// (a write whose release failed, or an older imagepin's apply).
	ownsFields bool
	place
	// raw is the image exactly as the workload names it.
	raw string
	// image is the reference as the workload names it, digest removed.
	image string
	// pinned is the digest the spec names, if any.
	pinned string
	// hasTag is false for a digest-only reference: there is no tag to
	// resolve.
	hasTag  bool
	running []imagesv1alpha1.RunningDigest

	keychain authn.Keychain
	result   registry.Result
	err      error
	// verdicts: with spec.verify, what verification said of the digests
	// c may be written with or runs pinned (imagepin_verify.go).
	verdicts map[string]verify.Result
}

// observation is everything one check saw.
type observation struct {
	workloads  int
	containers []containerObs
	// verifying: spec.verify is set; verifyErr: its policy could not be
	// built, so no digest verifies.
	verifying bool
	verifyErr error
	// available: what the registry said of the digests a backout needs
	// (checkAvailability).
	available availability
}

// observe lists what each selected workload's containers name and run, and
// resolves every tag through the shared resolver with the workload's
// credentials.
func (r *ImagePinReconciler) observe(ctx context.Context, pin *imagesv1alpha1.ImagePin, sel *selection.Selection, workloads []workload.Workload) (observation, error) {
	obs := observation{workloads: len(workloads)}
	if r.Pods == nil {
		return obs, errors.New("no pod store: the reconciler was not set up with a manager")
	}
	for _, w := range workloads {
		pods, err := workload.Pods(ctx, r.Client, r.Pods, w)
		if err != nil {
			return obs, err
		}
		// Each template's pods: a workload with several templates (a
		// PyTorchJob's Master and Worker) runs several kinds of pod.
		podsOf := make([][]workload.Pod, len(w.Templates))
		for _, p := range pods {
			i := w.TemplateOfShare(p.Shared)
			podsOf[i] = append(podsOf[i], p)
		}
		if err := r.addWorkload(ctx, &obs, pin.Namespace, sel, w, podsOf); err != nil {
			return obs, err
		}
	}
	// A check that writes (Pin, Follow) comes back for every answer it
	// went on without: it writes nothing from those.
	writes := pin.Spec.Mode != imagesv1alpha1.ModeObserve
	now := r.Clock.Now()
	r.resolveAll(ctx, checkKey(pin), writes, obs.containers, r.ticks.window(pin, now, sel.Interval))
	r.learnNeededPlatforms(ctx, obs.containers, sel.Overrides())
	r.verifyAll(ctx, pin, sel, &obs)
	r.ticks.checked(pin, now, sel.Interval)
	return obs, nil
}

// addWorkload adds the selected containers of w (in namespace) to obs,
// each template's with what podsOf holds for it (nil: no pods).
// Templates with the same credentials (nearly always all of them) share
// one keychain.
func (r *ImagePinReconciler) addWorkload(ctx context.Context, obs *observation, namespace string, sel *selection.Selection, w workload.Workload, podsOf [][]workload.Pod) error {
	keychains := map[string]authn.Keychain{}
	for ti, t := range w.Templates {
		key := registry.CredentialsKey(t.Spec)
		if keychains[key] == nil {
			kc, err := r.Keychains.ForPod(ctx, namespace, t.Spec)
			if err != nil {
				return err
			}
			keychains[key] = kc
		}
		var pods []workload.Pod
		if ti < len(podsOf) {
			pods = podsOf[ti]
		}
		obs.addTemplate(sel, w, t, keychains[key], pods)
	}
	return nil
}

// addTemplate adds the selected containers and image volumes of one pod
// template of w, with what its pods run, to obs.
func (obs *observation) addTemplate(sel *selection.Selection, w workload.Workload, t workload.Template, kc authn.Keychain, pods []workload.Pod) {
	running := runningDigests(pods)
	add := func(name, image string, init, volume bool, index int) {
		if image == "" || !sel.SelectsImage(image) {
			return
		}
		obs.containers = append(obs.containers, containerObs{
			kind: w.Kind, workload: w.Name(), uid: w.Object.GetUID(), generation: w.Object.GetGeneration(),
			ownsFields: workload.OwnsFields(w.Object),
			place:      place{container: name, template: t.Key, specPointer: t.Pointer, init: init, volume: volume, index: index},
			raw:        image,
			image:      selection.ImageKey(image),
			pinned:     drift.DigestOfImage(image),
			hasTag:     hasTag(image),
			running:    running[slot("", name, volume)],
			keychain:   kc,
		})
	}
	for i, c := range t.Spec.InitContainers {
		add(c.Name, c.Image, true, false, i)
	}
	for i, c := range t.Spec.Containers {
		add(c.Name, c.Image, false, false, i)
	}
	// Image volumes (Kubernetes 1.33+) have the same mutable-tag
	// problem as containers, and are resolved, pinned and followed
	// alike. Ephemeral containers are not part of any template.
	for i, v := range t.Spec.Volumes {
		if v.Image != nil {
			add(v.Name, v.Image.Reference, false, true, i)
		}
	}
}

// learnNeededPlatforms has the resolver learn the platforms of the digests
// a container's pods might run as platform manifests (what its tag
// resolves to, what its spec pins, its override), only when a pod runs a
// digest other than those, or the spec names another digest than the tag
// and they are not both indexes: then the platform rule must decide whether
// that is drift (an amd64 node reports the amd64 manifest's digest under
// some runtimes), and a rollback to an older multi-arch index must not
// show its pods as RolloutPending. Containerd reports the index digest,
// so this is rare. A digest's platforms never change: each is read once,
// ever (a GET of the index; nothing for a single manifest).
func (r *ImagePinReconciler) learnNeededPlatforms(ctx context.Context, containers []containerObs, overrides map[string]string) {
	seen := map[string]bool{}
	for _, c := range containers {
		named := []string{c.result.Digest, c.pinned, overrides[c.image]}
		other := false
		for _, run := range c.running {
			if !slices.Contains(named, string(run.Digest)) {
				other = true
			}
		}
		// A spec (or override) that names another digest than the tag:
		// the rule must decide whether it is one of the index's
		// platforms (a spec pinned to its amd64 manifest), unless both
		// are indexes, which are never one another's platform.
		for _, d := range named[1:] {
			bothIndexes := r.Resolver.KnownIndex(d) && r.Resolver.KnownIndex(c.result.Digest)
			if d != "" && c.result.Digest != "" && d != c.result.Digest && !bothIndexes {
				other = true
			}
		}
		if !other {
			continue
		}
		for _, d := range named {
			if d == "" || seen[d] {
				continue
			}
			seen[d] = true
			if _, err := r.Resolver.LearnPlatforms(ctx, c.image, d, c.keychain); err != nil {
				log.FromContext(ctx).V(1).Info("learn the platforms of a digest", "image", c.image, "digest", d, "reason", err.Error())
			}
		}
	}
}

// answerWithin is how long after a tick a check waits for that tick's
// answers when it holds earlier ones. The registry budget makes a round of
// many tags last seconds (50 tags at the default budget: 3 s); a check
// that waited for all of them would report a tag refreshed early in the
// round only at its end, an interval and a round after the tag moved. Past
// answerWithin, a check goes on with the last good answers of the tags
// still queued, and the ImagePins naming a tag are checked again as soon
// as its answer comes and differs (behindWatch).
const answerWithin = 500 * time.Millisecond

// resolveAll resolves the tag of every container, a few at a time, with
// the answers w lets serve (those since the start of the current tick, or
// of the previous one for an owed check), for the check of pin; writes:
// that check writes workloads.
func (r *ImagePinReconciler) resolveAll(ctx context.Context, pin types.NamespacedName, writes bool, containers []containerObs, w answerWindow) {
	inParallel(len(containers), func(i int) {
		c := &containers[i]
		if !c.hasTag {
			return
		}
		req := registry.Request{Image: c.image, Keychain: c.keychain, FreshSince: w.freshSince, Interval: w.interval, AnswerBy: w.answerBy}
		c.result, c.err = r.Resolver.Resolve(ctx, req)
		if c.result.Behind {
			r.behind.watch(ctx, r, pin, writes, req, c.result)
		}
	})
}

// inParallel calls each for 0 … n-1, resolveWorkers at a time (the
// registry requests of one check), and returns once every call has.
func inParallel(n int, each func(i int)) {
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(resolveWorkers, n) {
		wg.Go(func() {
			for i := range work {
				each(i)
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
}

// behindWatch waits for the resolutions checks went on without, one
// watcher per resolution however many checks went on without it. When the
// answer differs from the one they were given (or is an error), those
// checks' ImagePins, and every other naming the tag, are checked again;
// ImagePins that write are checked again whatever the answer, since their
// check wrote nothing from an answer it went on without. The new checks
// find the answer in the cache and send nothing.
type behindWatch struct {
	mu       sync.Mutex
	watching map[<-chan struct{}]*behindWait
}

type behindWait struct {
	req   registry.Request
	given string // the digest the checks were given
	// pins are the ImagePins whose checks went on without the answer,
	// true for those that write.
	pins map[types.NamespacedName]bool
}

func (w *behindWatch) watch(ctx context.Context, r *ImagePinReconciler, pin types.NamespacedName, writes bool, req registry.Request, given registry.Result) {
	w.mu.Lock()
	if wait := w.watching[given.Pending]; wait != nil {
		wait.pins[pin] = wait.pins[pin] || writes
		w.mu.Unlock()
		return
	}
	if w.watching == nil {
		w.watching = map[<-chan struct{}]*behindWait{}
	}
	req.AnswerBy = time.Time{}
	wait := &behindWait{req: req, given: given.Digest, pins: map[types.NamespacedName]bool{pin: writes}}
	w.watching[given.Pending] = wait
	w.mu.Unlock()
	logger := log.FromContext(ctx)
	go func() {
		<-given.Pending // the resolution ends: its turn in the budget, then at most the resolver's timeout
		w.mu.Lock()
		delete(w.watching, given.Pending)
		pins := wait.pins
		w.mu.Unlock()
		res, err := r.Resolver.Resolve(context.WithoutCancel(ctx), wait.req)
		moved := err != nil || res.Digest != wait.given
		full := 0
		for p, writes := range pins {
			if (moved || writes) && !r.queueCheck(p) {
				full++
			}
		}
		if t, perr := registry.TagRefOf(wait.req.Image); perr == nil && moved {
			_, f := r.Recheck(t)
			full += f
		}
		if full > 0 {
			logger.Info("the check queue is full: a tag's new answer waits for the next tick", "image", wait.req.Image, "dropped", full)
		}
	}()
}

// runningDigests reads, per container name, which digests a workload's
// pods run, with pod counts and (sorted, capped) node names, most pods
// first. Containers whose imageID names no manifest digest are left out.
func runningDigests(pods []workload.Pod) map[string][]imagesv1alpha1.RunningDigest {
	type agg struct {
		pods  int32
		nodes map[string]bool
	}
	byContainer := map[string]map[string]*agg{}
	for _, p := range pods {
		status := &p.Shared.Status
		// A finished pod runs nothing: a CronJob's completed Jobs and an
		// evicted pod must not count as replicas on an old digest.
		if status.Phase == corev1.PodSucceeded || status.Phase == corev1.PodFailed {
			continue
		}
		statuses := append(append([]corev1.ContainerStatus{}, status.InitContainerStatuses...), status.ContainerStatuses...)
		count := func(key, imageID string) {
			d, ok := drift.DigestOfImageID(imageID)
			if !ok {
				return
			}
			if byContainer[key] == nil {
				byContainer[key] = map[string]*agg{}
			}
			a := byContainer[key][d]
			if a == nil {
				a = &agg{nodes: map[string]bool{}}
				byContainer[key][d] = a
			}
			a.pods++
			if p.Node != "" {
				a.nodes[p.Node] = true
			}
		}
		// An image volume mounted by several containers is one volume of
		// the pod: counted once, from the first mount that says its digest.
		volumes := map[string]string{}
		for _, s := range statuses {
			count(s.Name, s.ImageID)
			for _, m := range s.VolumeMounts {
				if m.VolumeStatus != nil && m.VolumeStatus.Image != nil && volumes[m.Name] == "" {
					volumes[m.Name] = m.VolumeStatus.Image.ImageRef
				}
			}
		}
		for name, ref := range volumes {
			count(slot("", name, true), ref)
		}
	}
	out := make(map[string][]imagesv1alpha1.RunningDigest, len(byContainer))
	for name, digests := range byContainer {
		list := make([]imagesv1alpha1.RunningDigest, 0, len(digests))
		for d, a := range digests {
			nodes := make([]string, 0, len(a.nodes))
			for n := range a.nodes {
				nodes = append(nodes, n)
			}
			sort.Strings(nodes)
			if len(nodes) > maxNodesPerDigest {
				nodes = nodes[:maxNodesPerDigest]
			}
			list = append(list, imagesv1alpha1.RunningDigest{Digest: imagesv1alpha1.Digest(d), Pods: a.pods, Nodes: nodes})
		}
		sort.Slice(list, func(i, j int) bool {
			if list[i].Pods != list[j].Pods {
				return list[i].Pods > list[j].Pods
			}
			return list[i].Digest < list[j].Digest
		})
		if len(list) > 8 {
			list = list[:8]
		}
		out[name] = list
	}
	return out
}

// hasTag reports whether a reference names a tag to resolve: explicitly,
// or ":latest" implicitly (no digest either), as opposed to a digest alone.
func hasTag(image string) bool {
	return !strings.Contains(image, "@") || selection.HasTag(image)
}

func describeErr(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	if len(msg) > 1000 {
		msg = msg[:1000] + "…"
	}
	return msg
}
