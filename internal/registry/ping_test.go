package registry

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Issue 19 item 1: one ping per registry host, not per repository. Cold
// resolutions of 20 tags in 20 repositories send 20 HEADs and one
// "GET /v2/"; the ping is asked again after pingTTL.
func TestOnePingPerRegistryHost(t *testing.T) {
	f := newFixture(t)
	const repos = 20
	for i := range repos {
		f.reg.push(fmt.Sprintf("team/app%d:v1", i))
	}
	for i := range repos {
		f.mustResolve(t, f.reg.image(fmt.Sprintf("team/app%d:v1", i)), time.Minute)
	}
	if pings, heads := f.reg.count("GET ping"), f.reg.count("HEAD manifests"); pings != 1 || heads != repos {
		t.Errorf("%d cold resolutions in %d repositories sent %d pings and %d HEADs, want 1 and %d", repos, repos, pings, heads, repos)
	}
	// The registry speaks plain HTTP (an --insecure-registry): the HTTPS
	// attempt go-containerregistry makes first fails once, not once per
	// repository.
	if failed := testutil.ToFloat64(f.metrics.Requests.WithLabelValues(f.reg.host, "GET", "error")); failed > 1 {
		t.Errorf("%v HTTPS pings failed on the network, want at most 1", failed)
	}
	// Past pingTTL, a repository the resolver has not talked to yet pings
	// again, once.
	f.clock.Step(pingTTL)
	late := []string{"team/late1:v1", "team/late2:v1"}
	for _, repo := range late {
		f.reg.push(repo) // (counts start again here)
	}
	for _, repo := range late {
		f.mustResolve(t, f.reg.image(repo), time.Minute)
	}
	if pings := f.reg.count("GET ping"); pings != 1 {
		t.Errorf("pings for two new repositories after pingTTL = %d, want 1", pings)
	}
}

// Concurrent cold resolutions (a manager's workers, the CLI's) share one
// ping: the others wait for its answer.
func TestConcurrentColdResolutionsShareOnePing(t *testing.T) {
	f := newFixture(t)
	const repos = 24
	for i := range repos {
		f.reg.push(fmt.Sprintf("team/par%d:v1", i))
	}
	var wg sync.WaitGroup
	for i := range repos {
		wg.Go(func() {
			if _, err := f.resolver.Resolve(context.Background(), Request{Image: f.reg.image(fmt.Sprintf("team/par%d:v1", i)), TTL: time.Minute}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if pings := f.reg.count("GET ping"); pings != 1 {
		t.Errorf("%d concurrent cold resolutions in %d repositories sent %d pings, want 1", repos, repos, pings)
	}
}
