// Command bench runs imagepin's cluster benchmarks against the real control
// plane (etcd and kube-apiserver from bin/ through envtest) and the real
// distribution registry from bin/ (htpasswd auth, TLS), with the manager as
// its own process built from this repository, and prints each figure beside
// its goal or physical limit. It never fails because a goal is missed: it
// exits non-zero only when the run itself breaks (a process does not start,
// the API server refuses a write). `make bench` runs it after the Go
// micro-benchmarks.
//
//	go run ./hack/bench [--deployments 1000] [--namespaces 10] [--tags 50]
//	    [--repos 50] [--memory-10k] [--push-rounds 20] [--only push]
//	    [--out tmp/bench/results]
//
// It prints a markdown table (figure | value | goal / limit | met?) and the
// machine, and writes <out>.md and <out>.json.
//
// Registry traffic is counted at the registry's side: every image reference
// names a small TLS reverse proxy (net/http/httputil, certificate from its
// own CA, which the manager trusts through --registry-ca-file and the CLI
// through its flag of the same name) in front of the real registry. The
// proxy records each request's time, method and kind: manifest HEAD,
// manifest GET, /v2/ ping, token, blob. Per-tag figures divide by the
// number of distinct tags and are given separately for HEADs, GETs and all
// requests (pings included). The benchmark pushes its images straight to
// the registry, not through the proxy. The manager's own
// imagepin_registry_requests_total is read as a cross-check.
//
// The figures:
//
//  1. Convergence. --deployments Deployments (default 1,000) spread evenly
//     over --namespaces namespaces (10), each namespace naming all --tags
//     distinct tags (50) laid out as --repos repositories (50: one tag each,
//     the worst case for go-containerregistry's per-repository ping; 5 gives
//     5 repositories of 10 tags). Every Deployment is pinned
//     (repo:tag@sha256:…) to what its tag points to, so TagMoved shows
//     without pods. No kube-controller-manager runs for 1–6: the benchmark
//     gives each Deployment a ReplicaSet and --pods-per-deployment (5)
//     Running pods whose status names the digest they run. Deployments
//     have the shape of a small service (--shape service: labels, a port,
//     3 env vars, resources, a readiness probe; --shape minimal: a name and
//     an image); the JSON size of one is printed with the memory figure. One Observe
//     ImagePin per namespace, interval --interval (30s). The figure is the
//     seconds from starting the manager process to every ImagePin Ready=True
//     with observedGeneration current and status.summary.workloads equal
//     to its namespace's Deployments, seen through a watch; then registry
//     requests per distinct tag over that time (limit 1.0; manifest GETs 0).
//     The lower bound the manager's request budget sets
//     ((requests - burst) / qps) is printed beside it.
//
//  2. Steady state. Registry requests per distinct tag per interval over 3
//     intervals, counted from the first tick at least half an interval
//     after ready (ticks are the interval's multiples of wall-clock time),
//     a window of three whole rounds (limit 1.0).
//
//  3. Detection. 5 tags are pushed again with new content; for each, the
//     seconds from the end of the push until every ImagePin shows the new
//     digest with TagMoved on its Deployments (goal: within interval + 1 s),
//     per tag and the maximum. These ImagePins all started with the manager
//     and check in step. Then the same with ImagePins out of phase, as
//     ImagePins created at different times are: they are replaced by new
//     ones created interval/namespaces apart, and a tag is pushed right
//     after the proxy sees imagepin refresh it.
//
//  4. Memory. The manager's heap per 1,000 cached Deployments (goal
//     ≤ 3 MiB). Its /metrics is scraped every 200 ms; a sample taken right
//     after a GC cycle ended (go_gc_cycles_total_gc_cycles_total moved)
//     holds little garbage, and the median of those samples' heap in use
//     (go_memstats_heap_inuse_bytes) is the figure. It is taken once with
//     the ImagePins and no Deployments (a first manager process, before the
//     Deployments exist) and once after convergence (during the steady-state
//     window); the difference, per 1,000 Deployments, is reported, and so
//     is the same difference of go_gc_heap_live_bytes (the heap the last GC
//     marked live). Those GCs run mostly while a check is in flight, so
//     that live heap includes a check's working set; the held heap does
//     not: 8 GCs forced through the manager's pprof endpoint (heap?gc=1),
//     a second apart, while controller_runtime_active_workers is 0 before
//     and after, and the least go_gc_heap_live_bytes after them, minus the
//     same of the first process. With --memory-10k, Deployments are added
//     up to 10,000 and a third process is measured the same way.
//
//  5. Admission. p50 and p99 of creating a Deployment through the API
//     server, timed by the client, one at a time, in four cases interleaved
//     round by round (so that whatever else the machine does weighs on each
//     alike): no webhook (the webhook configuration's namespaceSelector
//     leaves the namespace out, so the API server does not call it), the
//     webhook in a namespace without an ImagePin, a cache hit (a Pin
//     ImagePin selects the Deployment and its tag was resolved before) and a
//     cache miss (a tag pushed just before, not timed). After a hit or a
//     miss the next create waits, untimed, until the controller has
//     reconciled it. Then a burst of hits back to back, as
//     BenchmarkAdmission creates them, with the controller's reconciles
//     overlapping; AdmissionReviews posted straight to the webhook, to
//     tell its own cost from the API server's; and 8 rounds of 50 creates
//     started at once, without the webhook and as cache hits. The manager serves the
//     webhook from its own process, registered from
//     config/webhook/manifests.yaml with a url and caBundle. Goal: a hit
//     adds ≤ 10 ms at p99 to creating without the webhook.
//
//  6. CLI. The built `imagepin pin -f` on --cli-documents Deployments (1,000)
//     naming the same tags, with credentials from DOCKER_CONFIG: wall time
//     (median of 3 runs), peak RSS (goal ≤ 60 MiB) and registry requests
//     (limit: one per tag and one ping, plus tokens). Then the same on
//     --cli-large-documents (10,000) naming --cli-large-tags (500) tags of
//     their own (goal ≤ 100 MiB, wall time ≤ the budget's floor + 1 s).
//
//  7. Writes. kube-controller-manager runs; 20 Deployments pinned to a tag in
//     a Follow ImagePin (interval 10s). The tag is pushed with new content:
//     new ReplicaSets and generation changes per Deployment once every one
//     runs the new digest, and after one more interval (must be 1.0). Then
//     the identical content is pushed again (same digest): once the proxy
//     has seen imagepin HEAD the tag after that push, one more interval is
//     watched (a fixed window: nothing should happen in it) and the changes
//     counted (must be 0).
//
//  8. Push events. A second distribution registry notifies the manager's
//     receiver of every push. One Observe and one Follow (minAge 0)
//     ImagePin, each on one Deployment pinned to its own tag; each round
//     pushes both tags and times, from the end of the push, until the
//     ImagePin shows TagMoved with the new digest (goal with the receiver:
//     ≤ 2 s at p99, with an interval of 10m) and until Follow has written
//     the new digest; --push-rounds (20) rounds with the receiver, then
//     --push-rounds-poll (5) with a manager without it at interval 10s.
//     HEADs per event from the manager's metrics (limit 2: a hint and its
//     confirmation).
//
//  9. Shards. The Deployments of 1–4 under new ImagePins, converged first
//     by one manager and then by two shards started together (the
//     default one and --shard=b, owning every other namespace's ImagePin
//     by label): seconds to every ImagePin Ready, and manifest HEADs per
//     distinct tag (each shard asks for the tags its ImagePins name).
//
// Every wait for a state polls for it with a deadline. Fixed waits are used
// only where the time itself is what is arranged or counted (the
// steady-state window, the spacing of ImagePins out of phase, a window in
// which nothing should happen), and the methods say so. Every process the benchmark
// starts is stopped on exit and on Ctrl-C (subprocesses also die with it,
// Pdeathsig).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/imagepin/imagepin/internal/testenv"
)

// options are the flags.
type options struct {
	deployments       int
	namespaces        int
	tags              int
	repos             int
	interval          time.Duration
	detectTags        int
	followInterval    time.Duration
	followDeployments int
	admissionSamples  int
	missSamples       int
	cliDocuments      int
	noDetection       bool
	podsPerDeployment int
	heapProfile       bool
	cpuProfile        time.Duration
	cliLargeDocuments int
	cliLargeTags      int
	pushRounds        int
	pushRoundsPoll    int
	memory10k         bool
	memoryLarge       int
	shape             string
	out               string
	only              string
	keep              bool
	managerFlags      stringList
}

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// bench is one run: what it started, and what it found.
type bench struct {
	o          options
	dir        string
	env        *testenv.Env
	k8s        client.WithWatch
	kubeconfig string
	reg        *testenv.Registry
	proxy      *countingProxy
	push       *pusher
	bin        string
	rep        *report
	// defers run in reverse order when the run ends, however it ends.
	defers []func()

	// tags are the benchmark's repo:tag names ("bench/app00:v1"), and
	// digests what each was first pushed as.
	tags    []string
	digests map[string]string
	// baseline is the memory of a manager with the ImagePins and no
	// Deployments.
	baseline *memResult
}

func main() { os.Exit(run()) }

func run() int {
	var o options
	flag.IntVar(&o.deployments, "deployments", 1000, "Deployments for convergence, steady state, detection and memory")
	flag.IntVar(&o.namespaces, "namespaces", 10, "namespaces the Deployments are spread over, one Observe ImagePin each")
	flag.IntVar(&o.tags, "tags", 50, "distinct tags the Deployments name")
	flag.IntVar(&o.repos, "repos", 50, "repositories the tags are spread over (must divide --tags)")
	flag.DurationVar(&o.interval, "interval", 30*time.Second, "interval of the Observe ImagePins")
	flag.IntVar(&o.detectTags, "detect-tags", 5, "tags pushed again for the detection figure")
	flag.DurationVar(&o.cpuProfile, "cpu-profile", 0, "write a CPU profile (pprof) of the manager's first seconds, from its start while it converges, to <out>-convergence-cpu.pprof; read it with `go tool pprof -top`")
	flag.BoolVar(&o.heapProfile, "heap-profile", false, "write the heap profiles (pprof, after a GC) of the baseline manager to <out>-baseline-heap.pprof and of the converged manager to <out>-heap.pprof at the end of the steady-state window; read it with `go tool pprof -sample_index=inuse_space`")
	flag.IntVar(&o.podsPerDeployment, "pods-per-deployment", 5, "Running pods (and one ReplicaSet) the benchmark gives each Deployment of 1–4 and 9, as a controller-manager and kubelet would")
	flag.BoolVar(&o.noDetection, "no-detection", false, "skip 3, detection (it expects every namespace to name every tag): for runs at scale, --namespaces 1000")
	flag.DurationVar(&o.followInterval, "follow-interval", 10*time.Second, "interval of the Follow ImagePin")
	flag.IntVar(&o.followDeployments, "follow-deployments", 20, "Deployments in the Follow ImagePin")
	flag.IntVar(&o.admissionSamples, "admission-samples", 200, "Deployments created per admission case (cache miss: half as many)")
	flag.IntVar(&o.cliDocuments, "cli-documents", 1000, "documents `imagepin pin` pins")
	flag.IntVar(&o.cliLargeDocuments, "cli-large-documents", 10000, "documents of the second, large `imagepin pin` run; 0: none")
	flag.IntVar(&o.cliLargeTags, "cli-large-tags", 500, "distinct tags of the large `imagepin pin` run, pushed for it")
	flag.IntVar(&o.pushRounds, "push-rounds", 20, "pushes of each tag timed with the receiver")
	flag.IntVar(&o.pushRoundsPoll, "push-rounds-poll", 5, "pushes of each tag timed without the receiver (interval 10s)")
	flag.BoolVar(&o.memory10k, "memory-10k", false, "also measure the manager's memory with 10,000 Deployments")
	flag.IntVar(&o.memoryLarge, "memory-10k-count", 10000, "how many Deployments --memory-10k measures with (for trying it small)")
	flag.StringVar(&o.shape, "shape", shapeService, "Deployment shape: service (labels, a port, env, resources, a probe) or minimal (a name and an image)")
	flag.StringVar(&o.out, "out", "tmp/bench/results", "write <out>.md and <out>.json")
	flag.StringVar(&o.only, "only", "", "comma-separated benchmarks to run (cluster, admission, cli, writes); all when empty")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (logs of every process) instead of removing it")
	flag.Var(&o.managerFlags, "manager-flag", "extra flag for every manager process, e.g. --manager-flag=--registry-qps=50; repeatable")
	flag.Parse()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	o.missSamples = max(1, o.admissionSamples/2)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctrl.SetLogger(logr.Discard())

	b := &bench{o: o, rep: &report{
		Machine: describeMachine(),
		Parameters: map[string]any{
			"deployments": o.deployments, "namespaces": o.namespaces, "tags": o.tags, "repositories": o.repos,
			"interval": o.interval.String(), "followInterval": o.followInterval.String(),
			"admissionSamples": o.admissionSamples, "cliDocuments": o.cliDocuments, "pushRounds": o.pushRounds, "pushRoundsPoll": o.pushRoundsPoll, "memory10k": o.memory10k, "memory10kCount": o.memoryLarge, "shape": o.shape, "podsPerDeployment": o.podsPerDeployment,
			"managerFlags": []string(o.managerFlags),
			"cpuProfile":   o.cpuProfile.String(),
		},
		Methods: map[string]string{},
	}}
	start := time.Now()
	defer b.cleanup()

	broken := false
	if err := b.setup(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bench: setup:", err)
		return 1
	}
	for _, ph := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"cluster", b.clusterBenchmarks},
		{"admission", b.admission},
		{"cli", b.cli},
		{"writes", b.writes},
		{"push", b.pushEvents},
	} {
		if !o.runs(ph.name) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		b.rep.Machine.LoadByBenchmark[ph.name] = loadAverage()
		logf("== %s (load average %s)", ph.name, b.rep.Machine.LoadByBenchmark[ph.name])
		if err := ph.run(ctx); err != nil {
			// What this benchmark left behind would skew the next ones:
			// stop here, and write what was measured.
			broken = true
			b.rep.Errors = append(b.rep.Errors, fmt.Sprintf("%s: %v (the run stopped here)", ph.name, err))
			fmt.Fprintf(os.Stderr, "bench: %s: %v\n", ph.name, err)
			break
		}
	}
	b.rep.Elapsed = time.Since(start).Round(time.Second).String()
	b.rep.Machine.LoadEnd = loadAverage()
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "bench: interrupted; stopping every process started")
		return 130
	}

	md := b.rep.markdown()
	fmt.Println(md)
	if err := b.rep.write(o.out); err != nil {
		fmt.Fprintln(os.Stderr, "bench: write results:", err)
		return 1
	}
	logf("wrote %s.md and %s.json", o.out, o.out)
	if broken {
		return 1
	}
	return 0
}

func (o *options) validate() error {
	switch {
	case o.deployments < 1 || o.namespaces < 1 || o.tags < 1 || o.repos < 1:
		return errors.New("--deployments, --namespaces, --tags and --repos must be positive")
	case o.tags%o.repos != 0:
		return fmt.Errorf("--repos %d must divide --tags %d", o.repos, o.tags)
	case o.cpuProfile != 0 && o.cpuProfile < time.Second:
		return fmt.Errorf("--cpu-profile %s: at least a second (pprof takes whole seconds)", o.cpuProfile)
	case o.deployments < o.namespaces:
		return errors.New("--deployments must be at least --namespaces")
	case o.interval < 10*time.Second || o.followInterval < 10*time.Second:
		return errors.New("intervals must be at least 10s, as the API requires")
	case o.pushRounds < 1 || o.pushRoundsPoll < 1:
		return errors.New("--push-rounds and --push-rounds-poll must be positive")
	case o.detectTags < 1 || o.detectTags > o.tags:
		return errors.New("--detect-tags must be between 1 and --tags")
	case o.shape != shapeService && o.shape != shapeMinimal:
		return fmt.Errorf("--shape: %q is neither %s nor %s", o.shape, shapeService, shapeMinimal)
	}
	for _, name := range strings.Split(o.only, ",") {
		switch strings.TrimSpace(name) {
		case "", "cluster", "admission", "cli", "writes", "push":
		default:
			return fmt.Errorf("--only: unknown benchmark %q (cluster, admission, cli, writes, push)", name)
		}
	}
	return nil
}

func (o *options) runs(name string) bool {
	if strings.TrimSpace(o.only) == "" {
		return true
	}
	for _, n := range strings.Split(o.only, ",") {
		if strings.TrimSpace(n) == name {
			return true
		}
	}
	return false
}

// setup builds imagepin and starts the control plane, the registry and the
// counting proxy, and pushes the benchmark's tags.
func (b *bench) setup(ctx context.Context) error {
	var err error
	if b.dir, err = os.MkdirTemp("", "imagepin-bench-"); err != nil {
		return err
	}
	b.defers = append(b.defers, func() {
		if b.o.keep {
			logf("kept %s", b.dir)
			return
		}
		_ = os.RemoveAll(b.dir)
	})

	b.rep.Parameters["source"] = sourceState(ctx)
	logf("building imagepin from %s", b.rep.Parameters["source"])
	if b.bin, err = testenv.BuildImagepin(ctx, b.dir); err != nil {
		return err
	}
	logf("starting etcd and kube-apiserver from %s", testenv.AssetsDir())
	if b.env, err = testenv.Start(); err != nil {
		return err
	}
	b.defers = append(b.defers, func() { _ = b.env.Stop() })
	if b.kubeconfig, err = b.env.Kubeconfig(b.dir); err != nil {
		return err
	}
	// The benchmark's own client is not rate limited on its side, so that
	// the API server and the webhook are what is timed.
	cfg := rest.CopyConfig(b.env.Config)
	cfg.QPS, cfg.Burst = 2000, 4000
	if b.k8s, err = client.NewWithWatch(cfg, client.Options{Scheme: b.env.Scheme}); err != nil {
		return err
	}

	logf("starting the registry (htpasswd, TLS) and the counting proxy")
	if b.reg, err = testenv.StartRegistry(); err != nil {
		return err
	}
	b.defers = append(b.defers, func() { _ = b.reg.Stop() })
	if b.proxy, err = startProxy(b.reg, b.dir, "proxy", false); err != nil {
		return err
	}
	b.defers = append(b.defers, b.proxy.Close)
	b.push = newPusher(b.reg)
	b.rep.Methods["registry"] = fmt.Sprintf("distribution registry %s with htpasswd and TLS; image references name a counting TLS reverse proxy in front of it, which the manager and the CLI trust through --registry-ca-file; pushes go to the registry directly and are not counted", testenv.RegistryVersion)

	perRepo := b.o.tags / b.o.repos
	for r := range b.o.repos {
		for t := range perRepo {
			b.tags = append(b.tags, fmt.Sprintf("bench/app%02d:v%d", r, t+1))
		}
	}
	logf("pushing %d tags in %d repositories", len(b.tags), b.o.repos)
	b.digests, err = b.push.pushAll(ctx, b.tags)
	shape := "labels, a port, 3 env vars, resources and a readiness probe"
	if b.o.shape == shapeMinimal {
		shape = "only a container name and image"
	}
	b.rep.Methods["layout"] = fmt.Sprintf("%d distinct tags: %d repositories × %d tags (bench/appNN:vM), random single-platform images of one 256-byte layer; Deployments (shape %s: %s) name a pull secret for the proxy's host",
		b.o.tags, b.o.repos, perRepo, b.o.shape, shape)
	return err
}

// image returns the reference of repoTag through the proxy.
func (b *bench) image(repoTag string) string { return b.proxy.Host + "/" + repoTag }

// cleanup runs the defers, last first.
func (b *bench) cleanup() {
	for i := len(b.defers) - 1; i >= 0; i-- {
		b.defers[i]()
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05")+" "+format+"\n", args...)
}
