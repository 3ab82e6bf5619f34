package registry

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkResolveCacheHit measures a resolution answered from the cache,
// as the webhook and every reconcile after the first see it.
func BenchmarkResolveCacheHit(b *testing.B) {
	f := newFixture(b)
	f.reg.push("team/app:v1")
	image := f.reg.image("team/app:v1")
	if _, err := f.resolver.Resolve(context.Background(), Request{Image: image, TTL: time.Hour}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.resolver.Resolve(context.Background(), Request{Image: image, TTL: time.Hour}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRequestsPerDistinctTag resolves 1,000 references naming 50
// distinct tags from 16 goroutines on a cold resolver, as a controller
// checking 1,000 Deployments does, and reports registry requests per tag:
// the floor is 1 HEAD and 0 GETs.
func BenchmarkRequestsPerDistinctTag(b *testing.B) {
	const refs, tags, workers = 1000, 50, 16
	f := newFixture(b)
	for i := range tags {
		f.reg.push(fmt.Sprintf("team/app%d:v1", i))
	}
	var heads, gets int
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		r, err := New(f.resolver.opts) // cold cache each round
		if err != nil {
			b.Fatal(err)
		}
		f.reg.resetCounts()
		b.StartTimer()
		var wg sync.WaitGroup
		work := make(chan int)
		for range workers {
			wg.Go(func() {
				for i := range work {
					image := f.reg.image(fmt.Sprintf("team/app%d:v1", i%tags))
					if _, err := r.Resolve(context.Background(), Request{Image: image, TTL: time.Minute}); err != nil {
						b.Error(err)
					}
				}
			})
		}
		for i := range refs {
			work <- i
		}
		close(work)
		wg.Wait()
		heads += f.reg.count("HEAD manifests")
		gets += f.reg.count("GET manifests")
	}
	b.ReportMetric(float64(heads)/float64(b.N*tags), "HEADs/tag")
	b.ReportMetric(float64(gets)/float64(b.N*tags), "GETs/tag")
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/1000refs")
}

// BenchmarkDigestChecksPerInterval asks, as 1,000 ImagePins' checks do,
// about 200 distinct digests (5 per ImagePin, each digest needed by 25)
// through two retention check intervals, from 16 goroutines: whether the
// registry still has each (Available) and that its keep tag is in place
// (Keep, spec.retention.protect). It reports registry requests per digest:
// availability's HEADs per interval (floor 1), and retention's requests in
// the first interval (the tags pushed) and in the next (the tags found in
// place: floor 1 HEAD).
func BenchmarkDigestChecksPerInterval(b *testing.B) {
	const pins, digests, perPin, workers = 1000, 200, 5, 16
	f := newFixture(b)
	ds := make([]string, digests)
	for i := range ds {
		ds[i] = f.reg.push(fmt.Sprintf("team/app:b%d", i))
	}
	image := f.reg.image("team/app:v1")
	counts := map[string]int{}
	ask := func(r *Resolver, tick time.Time, keep bool) {
		var wg sync.WaitGroup
		work := make(chan int)
		for range workers {
			wg.Go(func() {
				for p := range work {
					for j := range perPin {
						d := ds[(p*perPin+j)%digests]
						var err error
						if keep {
							_, err = r.Keep(context.Background(), KeepRequest{Image: image, Digest: d, FreshSince: tick, RetrySince: tick})
						} else {
							_, err = r.Available(context.Background(), AvailabilityRequest{Image: image, Digest: d, FreshSince: tick})
						}
						if err != nil {
							b.Error(err)
						}
					}
				}
			})
		}
		for p := range pins {
			work <- p
		}
		close(work)
		wg.Wait()
	}
	tally := func(phase string) {
		for _, m := range []string{"HEAD", "GET", "PUT"} {
			counts[phase+" "+m] += f.reg.count(m + " manifests")
		}
		f.reg.resetCounts()
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		r, err := New(f.resolver.opts) // cold each round
		if err != nil {
			b.Fatal(err)
		}
		f.reg.resetCounts()
		b.StartTimer()
		for _, interval := range []string{"first", "next"} {
			tick := f.clock.Now()
			ask(r, tick, false)
			tally("available " + interval)
			ask(r, tick, true)
			tally("keep " + interval)
			f.clock.Step(time.Hour)
		}
		b.StopTimer()
		for _, d := range ds { // the next round pushes its tags again
			if _, err := r.Unkeep(context.Background(), KeepRequest{Image: image, Digest: d}, nil); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
	}
	per := float64(b.N * digests)
	b.ReportMetric(float64(counts["available first HEAD"]+counts["available next HEAD"])/(2*per), "avail-HEADs/digest/interval")
	b.ReportMetric(float64(counts["keep first HEAD"])/per, "keep-first-HEADs/digest")
	b.ReportMetric(float64(counts["keep first GET"])/per, "keep-first-GETs/digest")
	b.ReportMetric(float64(counts["keep first PUT"])/per, "keep-first-PUTs/digest")
	b.ReportMetric(float64(counts["keep next HEAD"]+counts["keep next GET"]+counts["keep next PUT"])/per, "keep-next-requests/digest")
}
