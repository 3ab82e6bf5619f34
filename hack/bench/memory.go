package main

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// Metric names of the Go runtime the manager exposes (controller-runtime
// registers the Go collector with every runtime/metrics series).
const (
	metricGCCycles  = "go_gc_cycles_total_gc_cycles_total"
	metricGCCount   = "go_gc_duration_seconds_count"
	metricHeapInuse = "go_memstats_heap_inuse_bytes"
	metricHeapAlloc = "go_memstats_heap_alloc_bytes"
	metricHeapLive  = "go_gc_heap_live_bytes"
)

// memResult is a manager's heap, from samples taken right after a GC.
type memResult struct {
	// HeapInuse, HeapAlloc and HeapLive are medians over the post-GC
	// samples, in bytes.
	HeapInuse, HeapAlloc, HeapLive float64
	// GCs is how many GC cycles ended while sampling; Samples how many
	// scrapes were taken.
	GCs, Samples int
	// PostGC is false when no GC ended while sampling: the figures are
	// then the smallest seen, garbage included.
	PostGC bool
	// Held is the least live heap after a GC the benchmark forced while
	// no check ran (no reconcile worker active, before and after): what
	// the manager holds, without a check's working set (or what a pool
	// keeps until its second GC). HeldSamples counts those GCs; 0 when it
	// could not force one (no pprof port).
	Held        float64
	HeldSamples int
}

func (m *memResult) String() string {
	how := "post-GC medians"
	if !m.PostGC {
		how = "no GC seen: minimum of all samples"
	}
	return fmt.Sprintf("heap in use %.1f MiB, allocated %.1f MiB, live %.1f MiB (%s of %d scrapes, %d GCs); held between checks %.1f MiB (least of %d forced GCs)",
		m.HeapInuse/mib, m.HeapAlloc/mib, m.HeapLive/mib, how, m.Samples, m.GCs, m.Held/mib, m.HeldSamples)
}

// metricActiveWorkers is controller-runtime's gauge of reconciles running.
const metricActiveWorkers = "controller_runtime_active_workers"

// sampleHeld forces a GC in m (its pprof endpoint on port, heap?gc=1)
// whenever no reconcile runs, n times at least a second apart (within
// maxDur), and records into res the least live heap one left, counting
// only GCs with no reconcile running before and after.
func sampleHeld(ctx context.Context, m *managerProc, port, n int, maxDur time.Duration, res *memResult) error {
	if port == 0 {
		return nil
	}
	var held []float64
	deadline := time.Now().Add(maxDur)
	for len(held) < n && time.Now().Before(deadline) {
		before, quiet, err := waitQuiet(ctx, m, time.Until(deadline))
		if err != nil || !quiet {
			return err
		}
		if err := forceGC(ctx, port); err != nil {
			return err
		}
		after, err := m.scrape(ctx)
		if err != nil {
			return err
		}
		pause := 50 * time.Millisecond
		if after.sum(metricActiveWorkers) == 0 && after.sum(metricGCCycles) > before.sum(metricGCCycles) {
			held, pause = append(held, after.sum(metricHeapLive)), time.Second
		}
		if err := sleep(ctx, pause); err != nil {
			return err
		}
	}
	if len(held) > 0 {
		res.Held, res.HeldSamples = minimum(held), len(held)
	}
	return nil
}

// waitQuiet scrapes m until no reconcile runs (at most maxDur), and
// returns that scrape and whether it came.
func waitQuiet(ctx context.Context, m *managerProc, maxDur time.Duration) (metrics, bool, error) {
	for deadline := time.Now().Add(maxDur); ; {
		ms, err := m.scrape(ctx)
		if err != nil {
			return nil, false, err
		}
		if ms.sum(metricActiveWorkers) == 0 {
			return ms, true, nil
		}
		if time.Now().After(deadline) {
			return ms, false, nil
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return nil, false, err
		}
	}
}

const mib = 1 << 20

// sampleMemory scrapes m every 200 ms for at least minDur and until minGCs
// GC cycles have ended (at most maxDur), and returns the heap right after
// GCs. The scrapes themselves allocate a little, so an idle manager still
// collects now and then; what a scrape allocates is garbage by the next GC.
func sampleMemory(ctx context.Context, m *managerProc, minDur, maxDur time.Duration, minGCs int) (*memResult, error) {
	start := time.Now()
	var inuse, alloc, live []float64
	var allInuse, allAlloc, allLive []float64
	prevGC := -1.0
	res := &memResult{}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		ms, err := m.scrape(ctx)
		if err != nil {
			return nil, err
		}
		res.Samples++
		gc := ms.sum(metricGCCycles)
		if !ms.has(metricGCCycles) {
			gc = ms.sum(metricGCCount)
		}
		in, al, lv := ms.sum(metricHeapInuse), ms.sum(metricHeapAlloc), ms.sum(metricHeapLive)
		allInuse, allAlloc, allLive = append(allInuse, in), append(allAlloc, al), append(allLive, lv)
		if prevGC >= 0 && gc > prevGC {
			res.GCs += int(gc - prevGC)
			inuse, alloc, live = append(inuse, in), append(alloc, al), append(live, lv)
		}
		prevGC = gc
		elapsed := time.Since(start)
		if (elapsed >= minDur && res.GCs >= minGCs) || elapsed >= maxDur {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	if len(inuse) > 0 {
		res.PostGC = true
		res.HeapInuse, res.HeapAlloc, res.HeapLive = median(inuse), median(alloc), median(live)
	} else {
		res.HeapInuse, res.HeapAlloc, res.HeapLive = minimum(allInuse), minimum(allAlloc), minimum(allLive)
	}
	return res, nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func minimum(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = min(m, x)
	}
	return m
}

// percentile returns the p-th percentile of durations (nearest rank, as
// BenchmarkAdmission computes it), in milliseconds.
func percentile(ds []time.Duration, p float64) float64 {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[int(p*float64(len(s)-1))].Microseconds()) / 1000
}
