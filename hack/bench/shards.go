package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

const secShards = "9 shards"

// shards times convergence of the same Deployments under new ImagePins
// twice: with one manager, then with two shards (the default one and
// --shard=b, which owns the ImagePins of every other namespace through
// the shard label). Each run starts from new ImagePins and cold managers;
// each manager has its own request budget, and each shard asks the
// registry for every tag its own ImagePins name.
func (b *bench) shards(ctx context.Context, namespaces []string, perNS map[string]int) error {
	for _, shards := range []int{1, 2} {
		for _, ns := range namespaces {
			if err := b.k8s.DeleteAllOf(ctx, &imagesv1alpha1.ImagePin{}, client.InNamespace(ns)); err != nil {
				return err
			}
		}
		if err := poll(ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
			pins, err := b.listPins(ctx, namespaces)
			return len(pins) == 0, err
		}); err != nil {
			return fmt.Errorf("ImagePins not deleted: %w", err)
		}
		var pins []client.Object
		for i, ns := range namespaces {
			p := imagePin(ns, fmt.Sprintf("shards-%d", shards), "", imagesv1alpha1.ModeObserve, b.o.interval)
			if shards == 2 && i%2 == 1 {
				p.Labels = map[string]string{imagesv1alpha1.ShardLabel: "b"}
			}
			pins = append(pins, p)
		}
		if err := b.createAll(ctx, pins); err != nil {
			return err
		}
		logf("shards: %d manager(s) on %d ImagePins", shards, len(pins))
		first, err := b.startManager(ctx, managerOpts{name: fmt.Sprintf("manager-shards-%d-default", shards), extra: b.o.managerFlags})
		if err != nil {
			return err
		}
		procs := []*managerProc{first}
		if shards == 2 {
			second, err := b.startManager(ctx, managerOpts{name: "manager-shards-2-b", extra: append(slices.Clone(b.o.managerFlags), "--shard=b")})
			if err != nil {
				first.Stop()
				return err
			}
			procs = append(procs, second)
		}
		// startManager's defers stop them however the run ends.
		readyAt, err := b.waitReady(ctx, namespaces, perNS, 5*time.Minute)
		if err != nil {
			return fmt.Errorf("shards (%d): %w", shards, err)
		}
		converged := slices.MaxFunc(mapValues(readyAt), func(a, c time.Time) int { return a.Compare(c) })
		c := count(b.proxy.between(first.Started, converged.Add(time.Second)))
		b.rep.info(secShards, fmt.Sprintf("%d shard(s): manager start → %d ImagePins Ready with %d Deployments", shards, len(namespaces), b.o.deployments),
			converged.Sub(first.Started).Seconds(), "s", c.String())
		b.rep.info(secShards, fmt.Sprintf("%d shard(s): manifest HEADs per distinct tag", shards), float64(c.ManifestHEADs)/float64(len(b.tags)), "/tag",
			"a shard asks once for each tag its own ImagePins name: with the default shape each namespace names every tag, so each shard asks for all")
		for _, p := range procs {
			p.Stop()
		}
	}
	b.rep.Methods["shards"] = "the Deployments of 1–4 under new Observe ImagePins (one per namespace, as in 1); first one manager, then two started together: the default shard and --shard=b, which owns the ImagePins labelled images.imagepin.dev/shard=b (every other namespace's). Convergence from the first manager's start until every ImagePin is Ready with all its Deployments; requests counted at the proxy over that time"
	return nil
}
