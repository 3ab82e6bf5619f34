package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// detection pushes tags again with new content and times how long until
// every ImagePin shows them moved.
func (b *bench) detection(ctx context.Context, namespaces []string) error {
	moved := b.tags[:b.o.detectTags]
	logf("detection: pushing %d tags again with new content", len(moved))
	pushedAt := map[string]time.Time{}
	newDigest := map[string]string{}
	for _, t := range moved {
		d, err := b.push.push(ctx, t)
		if err != nil {
			return err
		}
		pushedAt[t], newDigest[t] = time.Now(), d
	}
	timeout := 2*b.o.interval + 30*time.Second
	seen, err := b.waitTagMoved(ctx, namespaces, newDigest, timeout)
	if err != nil {
		return err
	}
	goal := b.o.interval + time.Second
	var worst time.Duration
	complete := true
	for _, t := range moved {
		if len(seen[t]) < len(namespaces) {
			complete = false
			b.rep.failed(secDetection, "push → every ImagePin shows TagMoved: "+t, "≤ "+goal.String(),
				fmt.Errorf("%d of %d ImagePins showed it within %s", len(seen[t]), len(namespaces), timeout))
			continue
		}
		first, last := span(seen[t])
		took := last.Sub(pushedAt[t])
		worst = max(worst, took)
		note := fmt.Sprintf("first ImagePin after %.1f s", first.Sub(pushedAt[t]).Seconds())
		if h := b.firstHEAD(t, pushedAt[t]); !h.IsZero() {
			note += fmt.Sprintf("; imagepin's first HEAD after the push at %.1f s", h.Sub(pushedAt[t]).Seconds())
		}
		b.rep.goal(secDetection, "push → every ImagePin shows TagMoved: "+t, took.Seconds(), "s", "≤ "+goal.String(), took <= goal, note)
	}
	if complete {
		b.rep.goal(secDetection, fmt.Sprintf("worst of the %d tags", len(moved)), worst.Seconds(), "s", "≤ "+goal.String(), worst <= goal,
			"ImagePins in step: all started with the manager")
	}
	b.rep.Methods["detection"] = fmt.Sprintf("%d tags pushed again with new content, one after the other, straight to the registry; from the end of each push to the first 100 ms poll in which every ImagePin's status.images entry for it has the new digest and TagMoved on its Deployments (which stay pinned to the old digest)", len(moved))
	return nil
}

// detectionOutOfPhase repeats detection with ImagePins that check at
// different moments, as ImagePins created at different times do: the
// ImagePins are replaced by new ones created interval/namespaces apart,
// and a tag is pushed right after imagepin refreshed it. It leaves the new
// ImagePins in place of the old.
func (b *bench) detectionOutOfPhase(ctx context.Context, namespaces []string, perNS map[string]int) error {
	if len(namespaces) < 2 {
		return nil
	}
	interval := b.o.interval
	step := interval / time.Duration(len(namespaces))
	logf("detection out of phase: replacing the ImagePins by new ones created %s apart", step)
	for _, ns := range namespaces {
		if err := b.k8s.Delete(ctx, imagePin(ns, "bench", "", imagesv1alpha1.ModeObserve, interval)); err != nil {
			return err
		}
	}
	for k, ns := range namespaces {
		// A fixed spacing: it is what puts the ImagePins out of phase.
		if k > 0 {
			if err := sleep(ctx, step); err != nil {
				return err
			}
		}
		if err := b.k8s.Create(ctx, imagePin(ns, "staggered", "", imagesv1alpha1.ModeObserve, interval)); err != nil {
			return err
		}
	}
	if _, err := b.waitReady(ctx, namespaces, perNS, 2*time.Minute); err != nil {
		return err
	}
	// One more interval, fixed, so that every ImagePin runs on its own
	// schedule and the resolver's cache is refreshed by whichever comes
	// first.
	if err := sleep(ctx, interval); err != nil {
		return err
	}
	t := b.tags[b.o.detectTags%len(b.tags)]
	mark := time.Now()
	if err := poll(ctx, 10*time.Millisecond, 2*interval, func() (bool, error) {
		return !b.firstHEAD(t, mark).IsZero(), nil
	}); err != nil {
		return fmt.Errorf("imagepin never refreshed %s: %w", t, err)
	}
	d, err := b.push.push(ctx, t)
	if err != nil {
		return err
	}
	pushed := time.Now()
	logf("detection out of phase: pushed %s right after imagepin refreshed it", t)
	timeout := 3*interval + 30*time.Second
	seen, err := b.waitTagMoved(ctx, namespaces, map[string]string{t: d}, timeout)
	if err != nil {
		return err
	}
	goal := interval + time.Second
	name := "ImagePins out of phase, push right after a refresh: push → every ImagePin shows TagMoved: " + t
	if len(seen[t]) < len(namespaces) {
		b.rep.failed(secDetection, name, "≤ "+goal.String(), fmt.Errorf("%d of %d ImagePins showed it within %s", len(seen[t]), len(namespaces), timeout))
		return nil
	}
	first, last := span(seen[t])
	took := last.Sub(pushed)
	b.rep.goal(secDetection, name, took.Seconds(), "s", "≤ "+goal.String(), took <= goal,
		fmt.Sprintf("ImagePins created %s apart; first ImagePin after %.1f s", step, first.Sub(pushed).Seconds()))
	b.rep.Methods["detection"] += fmt.Sprintf(". Out of phase: the ImagePins replaced by new ones created %s apart (a fixed spacing), one interval more, then a tag pushed within 10 ms of the proxy seeing imagepin HEAD it", step)
	return nil
}

// waitTagMoved polls the ImagePins of namespaces every 100 ms until each
// shows every tag of newDigest moved to its digest, and returns when each
// was first seen so, by tag and namespace. Those never seen are missing.
func (b *bench) waitTagMoved(ctx context.Context, namespaces []string, newDigest map[string]string, timeout time.Duration) (map[string]map[string]time.Time, error) {
	seen := map[string]map[string]time.Time{}
	for t := range newDigest {
		seen[t] = map[string]time.Time{}
	}
	err := poll(ctx, 100*time.Millisecond, timeout, func() (bool, error) {
		pins, err := b.listPins(ctx, namespaces)
		if err != nil {
			return false, err
		}
		now := time.Now()
		done := true
		for t, d := range newDigest {
			for _, ns := range namespaces {
				if _, ok := seen[t][ns]; ok {
					continue
				}
				if p := pins[ns]; p != nil && showsTagMoved(p, b.image(t), d) {
					seen[t][ns] = now
					continue
				}
				done = false
			}
		}
		return done, nil
	})
	if err != nil && !errors.Is(err, errDeadline) {
		return nil, err
	}
	return seen, nil
}

// span returns the earliest and the latest of times.
func span(times map[string]time.Time) (first, last time.Time) {
	vs := mapValues(times)
	cmp := func(a, c time.Time) int { return a.Compare(c) }
	return slices.MinFunc(vs, cmp), slices.MaxFunc(vs, cmp)
}

// showsTagMoved reports whether p's status has image at digest with
// TagMoved on a workload.
func showsTagMoved(p *imagesv1alpha1.ImagePin, image, digest string) bool {
	for _, img := range p.Status.Images {
		if img.Image != image || string(img.Digest) != digest {
			continue
		}
		for _, w := range img.Workloads {
			if slices.Contains(w.Drift, imagesv1alpha1.DriftTagMoved) {
				return true
			}
		}
	}
	return false
}
