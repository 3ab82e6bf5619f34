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
