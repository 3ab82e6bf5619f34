package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/testenv"
)

const (
	secConvergence = "1 convergence"
	secSteady      = "2 steady state"
	secDetection   = "3 detection"
	secMemory      = "4 memory"
)

// clusterBenchmarks runs 1–4: convergence, steady state, detection and
// memory (and, with --memory-10k, memory with 10,000 Deployments), then
// deletes what they created.
func (b *bench) clusterBenchmarks(ctx context.Context) (err error) {
	namespaces := make([]string, b.o.namespaces)
	perNS := map[string]int{}
	for i := range namespaces {
		namespaces[i] = fmt.Sprintf("bench-%02d", i)
		perNS[namespaces[i]] = b.o.deployments / b.o.namespaces
		if i < b.o.deployments%b.o.namespaces {
			perNS[namespaces[i]]++
		}
	}
	// However it ends, the next benchmarks run without these.
	defer func() {
		if ctx.Err() != nil {
			return
		}
		if !slices.ContainsFunc([]string{"admission", "cli", "writes", "push"}, b.o.runs) {
			// Nothing runs after: the control plane goes with the run (at
			// 10,000 Deployments, deleting them took longer than the rest).
			return
		}
		logf("deleting the Deployments and ImagePins of 1–4")
		for _, ns := range namespaces {
			if derr := b.k8s.DeleteAllOf(ctx, &imagesv1alpha1.ImagePin{}, client.InNamespace(ns)); derr != nil && err == nil {
				err = derr
			}
		}
		if derr := b.deleteDeployments(ctx, namespaces...); derr != nil && err == nil {
			err = derr
		}
	}()
	var pins []client.Object
	for _, ns := range namespaces {
		if err := b.namespaceWithSecret(ctx, ns); err != nil {
			return err
		}
		pins = append(pins, imagePin(ns, "bench", "", imagesv1alpha1.ModeObserve, b.o.interval))
	}
	if err := b.createAll(ctx, pins); err != nil {
		return err
	}

	// 4, baseline: a manager with the ImagePins and no Deployments.
	logf("baseline: a manager with %d ImagePins and no Deployments", len(namespaces))
	extra0, pprofPort0, err := b.profiledFlags()
	if err != nil {
		return err
	}
	m0, err := b.startManager(ctx, managerOpts{name: "manager-baseline", extra: extra0})
	if err != nil {
		return err
	}
	zero := map[string]int{}
	for _, ns := range namespaces {
		zero[ns] = 0
	}
	if _, err := b.waitReady(ctx, namespaces, zero, 2*time.Minute); err != nil {
		m0.Stop()
		return fmt.Errorf("ImagePins without Deployments never became Ready: %w", err)
	}
	b.baseline, err = sampleMemory(ctx, m0, 20*time.Second, 2*time.Minute, 3)
	if err == nil {
		err = sampleHeld(ctx, m0, pprofPort0, 8, time.Minute, b.baseline)
	}
	if err == nil && b.o.heapProfile {
		// The profile to diff the converged manager's against
		// (go tool pprof -diff_base).
		if err = saveHeapProfile(ctx, m0, pprofPort0, b.o.out+"-baseline-heap.pprof"); err == nil {
			logf("baseline heap profile: %s-baseline-heap.pprof", b.o.out)
		}
	}
	m0.Stop()
	if err != nil {
		return fmt.Errorf("baseline memory: %w", err)
	}
	logf("baseline: %s", b.baseline)

	// The Deployments, pinned to what their tags point to.
	logf("creating %d Deployments in %d namespaces", b.o.deployments, len(namespaces))
	if err := b.createDeployments(ctx, namespaces, perNS, 0); err != nil {
		return err
	}

	// 1: convergence.
	writes0, err := b.statusWrites(ctx)
	if err != nil {
		return err
	}
	logf("convergence: starting the manager")
	extra, pprofPort, err := b.profiledFlags()
	if err != nil {
		return err
	}
	m1, err := b.startManager(ctx, managerOpts{name: "manager", extra: extra})
	if err != nil {
		return err
	}
	defer m1.Stop()
	cpuDone := make(chan error, 1)
	if b.o.cpuProfile > 0 {
		go func() { cpuDone <- saveCPUProfile(ctx, pprofPort, b.o.cpuProfile, b.o.out+"-convergence-cpu.pprof") }()
	} else {
		cpuDone <- nil
	}
	readyAt, err := b.waitReady(ctx, namespaces, perNS, 5*time.Minute+time.Duration(b.o.deployments)*10*time.Millisecond)
	if perr := <-cpuDone; perr != nil {
		return perr
	} else if b.o.cpuProfile > 0 {
		logf("convergence: CPU profile of the first %s: %s-convergence-cpu.pprof", b.o.cpuProfile, b.o.out)
	}
	if err != nil {
		if errors.Is(err, errDeadline) {
			b.rep.failed(secConvergence, "manager start → every ImagePin Ready", "as fast as the request budget allows", err)
			return nil
		}
		return err
	}
	converged := slices.MaxFunc(mapValues(readyAt), func(a, c time.Time) int { return a.Compare(c) })
	writes1, err := b.statusWrites(ctx)
	if err != nil {
		return err
	}
	b.reportConvergence(m1, converged)
	b.logTimeline(m1.Started, converged, readyAt)
	b.rep.info(secConvergence, "ImagePin status writes until converged", writes1-writes0, "",
		fmt.Sprintf("%d ImagePins; the API server's apiserver_request_total for imagepins/status", len(namespaces)))
	if err := b.describeDeployment(ctx, namespaces[0]); err != nil {
		return err
	}

	// 2 and 4: steady state over 3 intervals, and the manager's heap
	// sampled meanwhile.
	// Three whole rounds: each tick's round of requests begins at the
	// tick (the interval's multiples of wall-clock time) and, at the
	// sizes run, ends within its interval; a window that began or ended
	// mid-round would count part of one (at 500 tags a round lasts 48 s
	// of a 60 s interval).
	from := converged.Add(b.o.interval / 2)
	if t := from.Truncate(b.o.interval); t.Before(from) {
		from = t.Add(b.o.interval)
	}
	to := from.Add(3 * b.o.interval)
	logf("steady state: counting registry requests from %s to %s; sampling the manager's heap", from.Format("15:04:05"), to.Format("15:04:05"))
	type memOut struct {
		res *memResult
		err error
	}
	memDone := make(chan memOut, 1)
	go func() {
		r, err := sampleMemory(ctx, m1, time.Until(to), time.Until(to)+time.Minute, 3)
		memDone <- memOut{r, err}
	}()
	// A fixed window: what is counted is what happens in it.
	if err := sleep(ctx, time.Until(to)); err != nil {
		return err
	}
	writes2, err := b.statusWrites(ctx)
	if err != nil {
		return err
	}
	b.reportSteady(from, to)
	span := time.Since(converged).Seconds()
	b.rep.info(secSteady, "ImagePin status writes per second after convergence", (writes2-writes1)/span, "/s",
		fmt.Sprintf("%.0f writes in %.0f s for %d ImagePins (interval %s)", writes2-writes1, span, len(namespaces), b.o.interval))
	mem := <-memDone
	if mem.err != nil {
		return fmt.Errorf("memory: %w", mem.err)
	}
	if err := sampleHeld(ctx, m1, pprofPort, 8, time.Minute, mem.res); err != nil {
		return fmt.Errorf("memory held: %w", err)
	}
	logf("memory with %d Deployments: %s", b.o.deployments, mem.res)
	if b.o.heapProfile {
		if err := saveHeapProfile(ctx, m1, pprofPort, b.o.out+"-heap.pprof"); err != nil {
			return err
		}
		logf("heap profile: %s-heap.pprof", b.o.out)
	}
	b.reportMemory(b.o.deployments, mem.res)

	// 3: detection, ImagePins in step and out of phase.
	if !b.o.noDetection {
		if err := b.detection(ctx, namespaces); err != nil {
			return err
		}
		if err := b.detectionOutOfPhase(ctx, namespaces, perNS); err != nil {
			return err
		}
	}
	if err := b.crossCheck(ctx, m1); err != nil {
		return err
	}
	m1.Stop()

	// 9: two shards versus one.
	if err := b.shards(ctx, namespaces, perNS); err != nil {
		return err
	}

	if b.o.memory10k && b.o.memoryLarge > b.o.deployments {
		return b.memory10k(ctx, namespaces)
	}
	return nil
}

// createDeployments creates, in each namespace, Deployments numbered from
// `from` up to perNS[ns]; Deployment j names tag j mod tags, pinned to
// the digest first pushed; and their ReplicaSets and pods (addPods).
func (b *bench) createDeployments(ctx context.Context, namespaces []string, perNS map[string]int, from int) error {
	var objs []client.Object
	var deployments []*appsv1.Deployment
	for i, ns := range namespaces {
		// Namespaces of fewer Deployments than tags name different tags;
		// one of more names every tag.
		offset := i * (b.o.deployments / b.o.namespaces)
		for j := from; j < perNS[ns]; j++ {
			tag := b.tags[(offset+j)%len(b.tags)]
			name := fmt.Sprintf("app-%05d", j)
			d := b.deployment(ns, name, name, b.image(tag)+"@"+b.digests[tag])
			objs, deployments = append(objs, d), append(deployments, d)
		}
	}
	if err := b.createAll(ctx, objs); err != nil {
		return err
	}
	return b.addPods(ctx, deployments)
}

// describeDeployment records how large one benchmark Deployment is as the
// API server returns it, without managedFields (the manager's cache strips
// them), to put the memory figure in proportion.
func (b *bench) describeDeployment(ctx context.Context, ns string) error {
	var d appsv1.Deployment
	if err := b.k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "app-00000"}, &d); err != nil {
		return err
	}
	d.ManagedFields = nil
	js, err := json.Marshal(&d)
	if err != nil {
		return err
	}
	b.rep.Parameters["deploymentJSONBytes"] = len(js)
	return nil
}

// waitReady watches the ImagePins of namespaces until each is Ready with
// want[ns] workloads, and returns when the benchmark first saw each so.
// A watch, not a poll: listing 1,000 ImagePins with their status every
// 100 ms loads the API server the manager writes its statuses to: the
// bench would slow what it measures.
func (b *bench) waitReady(ctx context.Context, namespaces []string, want map[string]int, timeout time.Duration) (map[string]time.Time, error) {
	wanted := map[string]bool{}
	for _, ns := range namespaces {
		wanted[ns] = true
	}
	readyAt := map[string]time.Time{}
	see := func(p *imagesv1alpha1.ImagePin, at time.Time) bool {
		if _, ok := readyAt[p.Namespace]; !ok && wanted[p.Namespace] && readyWith(p, want[p.Namespace]) {
			readyAt[p.Namespace] = at
		}
		return len(readyAt) == len(namespaces)
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for wctx.Err() == nil {
		var l imagesv1alpha1.ImagePinList
		if err := b.k8s.List(wctx, &l); err != nil {
			if wctx.Err() != nil {
				break
			}
			return readyAt, err
		}
		now := time.Now()
		for i := range l.Items {
			if see(&l.Items[i], now) {
				return readyAt, nil
			}
		}
		w, err := b.k8s.Watch(wctx, &imagesv1alpha1.ImagePinList{}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: l.ResourceVersion}})
		if err != nil {
			if wctx.Err() != nil {
				break
			}
			return readyAt, err
		}
		for ev := range w.ResultChan() {
			if ev.Type == watch.Error {
				break // expired: list again
			}
			if p, ok := ev.Object.(*imagesv1alpha1.ImagePin); ok && ev.Type != watch.Deleted && see(p, time.Now()) {
				w.Stop()
				return readyAt, nil
			}
		}
		w.Stop()
		select { // the watch ended: list again, not in a tight loop
		case <-wctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if ctx.Err() != nil {
		return readyAt, ctx.Err()
	}
	var missing []string
	for _, ns := range namespaces {
		if _, ok := readyAt[ns]; !ok {
			missing = append(missing, ns)
		}
	}
	return readyAt, fmt.Errorf("%w: ImagePins of %s not Ready with all their workloads after %s", errDeadline, strings.Join(missing, ", "), timeout)
}

func mapValues[K comparable, V any](m map[K]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// qpsAndBurst are the manager's registry budget: its defaults, or what
// --manager-flag set.
func (b *bench) qpsAndBurst() (float64, int) {
	qps, burst := float64(registry.DefaultQPS), registry.DefaultBurst
	for _, f := range b.o.managerFlags {
		if v, ok := strings.CutPrefix(f, "--registry-qps="); ok {
			_, _ = fmt.Sscan(v, &qps)
		}
		if v, ok := strings.CutPrefix(f, "--registry-burst="); ok {
			_, _ = fmt.Sscan(v, &burst)
		}
	}
	return qps, burst
}

// budgetFloor says how long requests take at least under a request budget
// of qps after a burst.
func budgetFloor(requests int, qps float64, burst int) string {
	if requests <= burst {
		return fmt.Sprintf("no floor from the request budget: %d cold requests fit its burst of %d", requests, burst)
	}
	return fmt.Sprintf("≥ %.1f s: %d cold requests at --registry-qps %g after a burst of %d", float64(requests-burst)/qps, requests, qps, burst)
}

func (b *bench) reportConvergence(m *managerProc, converged time.Time) {
	secs := converged.Sub(m.Started).Seconds()
	c := count(b.proxy.between(m.Started, converged.Add(time.Second)))
	tags := float64(len(b.tags))
	qps, burst := b.qpsAndBurst()
	b.rep.limit(secConvergence, fmt.Sprintf("manager start → %d ImagePins Ready with %d Deployments", b.o.namespaces, b.o.deployments),
		secs, "s", budgetFloor(c.Total, qps, burst), "")
	b.rep.goal(secConvergence, "manifest HEADs per distinct tag", float64(c.ManifestHEADs)/tags, "/tag", "1.0", c.ManifestHEADs == len(b.tags), "")
	b.rep.goal(secConvergence, "manifest GETs per distinct tag", float64(c.ManifestGETs)/tags, "/tag", "0", c.ManifestGETs == 0, "")
	b.rep.goal(secConvergence, "registry requests, all kinds", float64(c.Total), "", fmt.Sprintf("≤ %d + tokens: a HEAD per tag and one ping", len(b.tags)+1), c.Total-c.Tokens <= len(b.tags)+1,
		fmt.Sprintf("%d pings, %d tokens", c.Pings, c.Tokens))
	logf("convergence: %.1f s; %s", secs, c)
	if seen := b.proxy.between(m.Started, converged.Add(time.Second)); len(seen) > 0 {
		logf("convergence: first registry request at +%.2f s, last at +%.2f s", seen[0].at.Sub(m.Started).Seconds(), seen[len(seen)-1].at.Sub(m.Started).Seconds())
	}
	b.logRepeats(m, m.Started, converged.Add(time.Second))
	b.rep.Methods["convergence"] = fmt.Sprintf("Deployments created before the manager process starts; seconds from exec to the watch event (of the ImagePins, one watch) that shows the last ImagePin Ready=True, observedGeneration current, summary.workloads = its namespace's Deployments; requests counted at the proxy over the same span (%s)", c)
}

// logTimeline logs, for every tenth of the time to converge, how many
// registry requests the proxy had seen and how many ImagePins were Ready:
// whether the checks kept up with the answers.
func (b *bench) logTimeline(started, converged time.Time, readyAt map[string]time.Time) {
	evs := b.proxy.between(started, converged.Add(time.Second))
	step := converged.Sub(started) / 10
	var line []string
	for i := 1; i <= 10; i++ {
		at := started.Add(time.Duration(i) * step)
		reqs, ready := 0, 0
		for _, e := range evs {
			if e.at.Before(at) {
				reqs++
			}
		}
		for _, t := range readyAt {
			if !t.After(at) {
				ready++
			}
		}
		line = append(line, fmt.Sprintf("+%.0fs %d req %d Ready", at.Sub(started).Seconds(), reqs, ready))
	}
	logf("convergence timeline: %s", strings.Join(line, "; "))
}

// logRepeats logs, for every tag asked for more than once between from
// and to, when each request came and where the interval's ticks fell,
// and what m logged of the tag's repository at warning or error level:
// what a repeat within a round is to be judged by.
func (b *bench) logRepeats(m *managerProc, from, to time.Time) {
	at := map[string][]string{}
	for _, e := range b.proxy.between(from, to) {
		if e.tagHEAD() {
			k := e.repo + ":" + e.ref
			at[k] = append(at[k], fmt.Sprintf("+%.2fs (%d, received at +%.2fs on %s)", e.at.Sub(from).Seconds(), e.status, e.began.Sub(from).Seconds(), e.conn))
		}
	}
	var ticks []string
	for t := from.Truncate(b.o.interval).Add(b.o.interval); t.Before(to); t = t.Add(b.o.interval) {
		ticks = append(ticks, fmt.Sprintf("+%.2fs", t.Sub(from).Seconds()))
	}
	for k, times := range at {
		if len(times) > 1 {
			logf("convergence: %s asked %d times: %s (interval ticks at %s)", k, len(times), strings.Join(times, ", "), strings.Join(ticks, ", "))
			repo, _, _ := strings.Cut(k, ":")
			for _, line := range troublesOf(m.LogFile, repo, 5) {
				logf("convergence:   manager log: %s", line)
			}
		}
	}
}

// troublesOf returns up to n lines of a manager's log that name repo and
// are not at info level.
func troublesOf(logFile, repo string, n int) []string {
	raw, err := os.ReadFile(logFile)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for line := range strings.Lines(string(raw)) {
		if strings.Contains(line, repo) && !strings.Contains(line, "\tINFO\t") && !strings.Contains(line, `"level":"info"`) {
			out = append(out, strings.TrimSpace(line))
			if len(out) == n {
				break
			}
		}
	}
	return out
}

func (b *bench) reportSteady(from, to time.Time) {
	c := count(b.proxy.between(from, to))
	intervals := 3.0
	tags := float64(len(b.tags))
	perTag := func(n int) float64 { return float64(n) / tags / intervals }
	maxOne := 0
	for _, n := range c.HEADsByTag {
		maxOne = max(maxOne, n)
	}
	b.rep.goal(secSteady, "registry requests per distinct tag per interval, all kinds", perTag(c.Total), "/tag/interval", "1.0", perTag(c.Total) <= 1.0,
		fmt.Sprintf("%d requests in 3 intervals of %s", c.Total, b.o.interval))
	b.rep.goal(secSteady, "manifest HEADs per distinct tag per interval", perTag(c.ManifestHEADs), "/tag/interval", "1.0", perTag(c.ManifestHEADs) <= 1.0,
		fmt.Sprintf("most for one tag: %d in 3 intervals", maxOne))
	b.rep.goal(secSteady, "manifest GETs per distinct tag per interval", perTag(c.ManifestGETs), "/tag/interval", "0", c.ManifestGETs == 0, "")
	logf("steady state: %s", c)
	b.rep.Methods["steady"] = fmt.Sprintf("requests counted at the proxy in the three intervals from the first tick (a multiple of the interval in wall-clock time) at least half an interval after all were Ready: three whole rounds, each begun at its tick; divided by tags × 3 (%s)", c)
}

func (b *bench) reportMemory(deployments int, m *memResult) {
	per := float64(deployments) / 1000
	inuse := (m.HeapInuse - b.baseline.HeapInuse) / per / mib
	live := (m.HeapLive - b.baseline.HeapLive) / per / mib
	what := fmt.Sprintf("%d Deployments, each with a ReplicaSet and %d pods", deployments, b.o.podsPerDeployment)
	if b.o.podsPerDeployment == 0 {
		what = fmt.Sprintf("%d Deployments, no pods", deployments)
	}
	if m.HeldSamples > 0 && b.baseline.HeldSamples > 0 {
		held := (m.Held - b.baseline.Held) / per / mib
		b.rep.goal(secMemory, fmt.Sprintf("live heap held per 1,000 cached Deployments with their pods, between checks (%s)", what), held, "MiB", "≤ 3 MiB", held <= 3,
			fmt.Sprintf("after GCs forced while no check ran: %.1f MiB with, %.1f MiB without", m.Held/mib, b.baseline.Held/mib))
	}
	b.rep.goal(secMemory, fmt.Sprintf("live heap per 1,000 cached Deployments with their pods, checks in flight included (%s)", what), live, "MiB", "≤ 3 MiB", live <= 3,
		fmt.Sprintf("go_gc_heap_live_bytes after the manager's own GCs, which run mostly during checks: %.1f MiB with, %.1f MiB without", m.HeapLive/mib, b.baseline.HeapLive/mib))
	b.rep.info(secMemory, fmt.Sprintf("heap in use per 1,000 cached Deployments with their pods (%s)", what), inuse, "MiB",
		fmt.Sprintf("%.1f MiB with, %.1f MiB without; one Deployment is %v bytes of JSON", m.HeapInuse/mib, b.baseline.HeapInuse/mib, b.rep.Parameters["deploymentJSONBytes"]))
	b.rep.Methods["memory"] = "the manager's /metrics scraped every 200 ms; samples taken right after a GC cycle ended (go_gc_cycles_total_gc_cycles_total moved); median heap in use (go_memstats_heap_inuse_bytes) and go_gc_heap_live_bytes of those, minus the same of a manager process with the ImagePins and no Deployments, divided by thousands of Deployments. " +
		"Held: 8 GCs forced through the manager's pprof endpoint (heap?gc=1), a second apart, while controller_runtime_active_workers was 0 before and after; the least go_gc_heap_live_bytes after them, minus the same of the baseline. " +
		"Baseline: " + b.baseline.String() + ". With Deployments: " + m.String()
}

// firstHEAD returns when the proxy first saw a manifest HEAD of repoTag
// after t.
func (b *bench) firstHEAD(repoTag string, t time.Time) time.Time {
	repo, tag, _ := strings.Cut(repoTag, ":")
	for _, e := range b.proxy.since(t) {
		if e.tagHEAD() && e.repo == repo && e.ref == tag {
			return e.at
		}
	}
	return time.Time{}
}

// crossCheck compares the manager's own count of registry requests with
// the proxy's over the manager's life. Both are read while no request is
// in flight (the proxy has answered none for a second before and after
// the scrape): read during a round, one side counts a request the other
// has not yet.
func (b *bench) crossCheck(ctx context.Context, m *managerProc) error {
	const quiet = time.Second
	var (
		ms      metrics
		seen    regCounts
		settled bool
	)
	for giveUp := time.Now().Add(2 * b.o.interval); ; {
		before := b.proxy.since(m.Started)
		var err error
		if ms, err = m.scrape(ctx); err != nil {
			return err
		}
		after := b.proxy.since(m.Started)
		seen = count(after)
		if len(before) == len(after) && (len(after) == 0 || time.Since(after[len(after)-1].at) >= quiet) {
			settled = true
			break
		}
		if time.Now().After(giveUp) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	own := ms.sum("imagepin_registry_requests_total")
	heads := ms.sum("imagepin_registry_requests_total", `method="HEAD"`)
	errs := ms.sum("imagepin_registry_requests_total", `code="error"`)
	note := ""
	if !settled {
		note = "; no quiet second came within two intervals, read anyway"
	}
	b.rep.goal(secConvergence, "cross-check: imagepin_registry_requests_total over the manager's life vs the proxy's count",
		own, "requests", fmt.Sprintf("= %d (proxy)", seen.Total), int(own) == seen.Total,
		fmt.Sprintf("HEAD %d by the manager (%d with no response), %d manifest HEADs by the proxy; read with no request in flight%s", int(heads), int(errs), seen.ManifestHEADs+seen.DigestHEADs, note))
	return nil
}

// memory10k adds Deployments up to 10,000 and measures a fresh manager's
// heap with them.
func (b *bench) memory10k(ctx context.Context, namespaces []string) error {
	total := b.o.memoryLarge
	perNS := map[string]int{}
	have := map[string]int{}
	for i, ns := range namespaces {
		perNS[ns] = total / len(namespaces)
		if i < total%len(namespaces) {
			perNS[ns]++
		}
		have[ns] = b.o.deployments / len(namespaces)
		if i < b.o.deployments%len(namespaces) {
			have[ns]++
		}
	}
	// Deployments numbered from each namespace's count up.
	minFrom := total
	for _, ns := range namespaces {
		minFrom = min(minFrom, have[ns])
	}
	logf("memory: adding Deployments up to %d", total)
	if err := b.createDeployments(ctx, namespaces, perNS, minFrom); err != nil {
		return err
	}
	flags, port, err := b.profiledFlags()
	if err != nil {
		return err
	}
	m, err := b.startManager(ctx, managerOpts{name: "manager-10k", extra: flags})
	if err != nil {
		return err
	}
	defer m.Stop()
	readyAt, err := b.waitReady(ctx, namespaces, perNS, 15*time.Minute)
	if err != nil {
		if errors.Is(err, errDeadline) {
			b.rep.failed(secMemory, fmt.Sprintf("heap in use per 1,000 cached Deployments (%d Deployments)", total), "≤ 3 MiB", err)
			return nil
		}
		return err
	}
	converged := slices.MaxFunc(mapValues(readyAt), func(a, c time.Time) int { return a.Compare(c) })
	b.rep.info(secConvergence, fmt.Sprintf("manager start → %d ImagePins Ready with %d Deployments", len(namespaces), total),
		converged.Sub(m.Started).Seconds(), "s", "")
	res, err := sampleMemory(ctx, m, 30*time.Second, 3*time.Minute, 3)
	if err == nil {
		err = sampleHeld(ctx, m, port, 8, time.Minute, res)
	}
	if err != nil {
		return err
	}
	logf("memory with %d Deployments: %s", total, res)
	keep := b.rep.Methods["memory"]
	b.reportMemory(total, res)
	b.rep.Methods["memory"] = keep + fmt.Sprintf(". With %d Deployments: ", total) + res.String()
	return nil
}

// saveHeapProfile writes the heap profile m serves on port
// (--pprof-bind-address), taken after a GC, to file, at a moment no
// reconcile runs (as the held heap is measured; it waits up to a minute).
func saveHeapProfile(ctx context.Context, m *managerProc, port int, file string) error {
	if _, _, err := waitQuiet(ctx, m, time.Minute); err != nil {
		return err
	}
	data, err := heapProfile(ctx, port)
	if err != nil {
		return err
	}
	return os.WriteFile(file, data, 0o600)
}

// saveCPUProfile writes the manager's CPU profile over the next d.
func saveCPUProfile(ctx context.Context, port int, d time.Duration, file string) error {
	data, err := pprofGet(ctx, port, fmt.Sprintf("profile?seconds=%d", int(d.Seconds())))
	if err != nil {
		return err
	}
	return os.WriteFile(file, data, 0o600)
}

// forceGC has the manager serving pprof on port collect garbage (a heap
// profile is taken after a GC).
func forceGC(ctx context.Context, port int) error {
	_, err := heapProfile(ctx, port)
	return err
}

func heapProfile(ctx context.Context, port int) ([]byte, error) {
	return pprofGet(ctx, port, "heap?gc=1")
}

// pprofGet reads /debug/pprof/<what> from the manager serving pprof on
// port.
func pprofGet(ctx context.Context, port int, what string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/%s", port, what), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("pprof %s: %s", what, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// profiledFlags are the manager flags of a run, with --heap-profile a
// pprof address on a free port, which it returns (0 without).
func (b *bench) profiledFlags() ([]string, int, error) {
	flags := slices.Clone(b.o.managerFlags)
	// Always served: the held heap is measured by forcing GCs through it.
	port, err := testenv.FreePort()
	if err != nil {
		return nil, 0, err
	}
	return append(flags, fmt.Sprintf("--pprof-bind-address=127.0.0.1:%d", port)), port, nil
}
