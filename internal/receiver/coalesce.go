package receiver

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/utils/clock"

	"github.com/imagepin/imagepin/internal/registry"
)

// What one tag's events may cost. The first is hinted at once, and once
// more MinGap later to confirm it: registries send the event as the
// manifest is stored, which can be before the tag points at it (the
// distribution registry links the tag after it notifies), and replicated
// registries may answer from a replica that lags. Every event that comes
// while a hint is due is folded into it, and a tag is never hinted twice
// within MinGap. A hint costs one HEAD per credential the tag is resolved
// with, so a burst of any size costs two, and a sustained forged flood at
// most one per MinGap; its answers are the registry's, never the event's.
// Past the hint budget (all tags together), hints are dropped: polling
// sees those tags within the interval.

// Results of an offered push, as the metric counts them.
const (
	resultHinted    = "hinted"    // hinted at once (and confirmed after MinGap)
	resultDeferred  = "deferred"  // hinted at the end of the gap
	resultCoalesced = "coalesced" // folded into a hint already due
	resultDropped   = "dropped"   // over the hint budget of all tags
	resultUnused    = "unused"    // no ImagePin and no cached answer names it
)

// gatesSweepEvery offers, gates idle for a minute past their gap are
// dropped, so that tags no longer pushed do not pile up.
const gatesSweepEvery = 256

type gate struct {
	last    time.Time // of the last hint
	pending bool      // a hint is due at last+gap
}

type coalescer struct {
	gap    time.Duration
	clock  clock.WithDelayedExecution
	budget *rate.Limiter // hints at once, of all tags
	apply  func(registry.TagRef)

	mu     sync.Mutex
	gates  map[registry.TagRef]*gate
	offers int
}

// offer hints t now, at the end of its gap, or not again, and says which.
func (c *coalescer) offer(t registry.TagRef) string {
	c.mu.Lock()
	now := c.clock.Now()
	c.offers++
	if c.offers%gatesSweepEvery == 0 {
		c.sweepLocked(now)
	}
	g := c.gates[t]
	if g == nil {
		g = &gate{}
		c.gates[t] = g
	}
	if g.pending {
		c.mu.Unlock()
		return resultCoalesced
	}
	if !g.last.IsZero() && now.Sub(g.last) < c.gap {
		c.scheduleLocked(t, g, g.last.Add(c.gap), now)
		c.mu.Unlock()
		return resultDeferred
	}
	if !c.budget.AllowN(now, 1) {
		c.mu.Unlock()
		return resultDropped
	}
	g.last = now
	c.scheduleLocked(t, g, now.Add(c.gap), now) // the confirmation
	c.mu.Unlock()
	c.apply(t)
	return resultHinted
}

// scheduleLocked has t hinted at due; c.mu is held. The fake clock of the
// tests runs the function while holding its own lock, so it must not ask
// the clock for the time.
func (c *coalescer) scheduleLocked(t registry.TagRef, g *gate, due, now time.Time) {
	g.pending = true
	c.clock.AfterFunc(due.Sub(now), func() {
		c.mu.Lock()
		g.pending, g.last = false, due
		c.mu.Unlock()
		c.apply(t)
	})
}

func (c *coalescer) sweepLocked(now time.Time) {
	for t, g := range c.gates {
		if !g.pending && now.Sub(g.last) > c.gap+time.Minute {
			delete(c.gates, t)
		}
	}
}
