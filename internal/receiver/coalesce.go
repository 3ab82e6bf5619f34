package receiver

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/utils/clock"

	"github.com/imagepin/imagepin/internal/registry"
)

// What one tag's events may cost. The first is hinted at once, and once
// more half a MinGap later to confirm it: registries send the event as the
// manifest is stored, which can be before the tag points at it (the
// distribution registry links the tag after it notifies), and replicated
// registries may answer from a replica that lags. Every event that comes
// while a hint is due is folded into it, and a tag is never hinted twice
// within MinGap, counting hints of its whole repository. A hint costs one
// HEAD per credential the tag is resolved with, so a burst of any size
// costs two, and a sustained forged flood at most one per MinGap; its
// answers are the registry's, never the event's. Every hint, confirmations
// and deferred ones included, spends the budget of all tags together;
// past it a hint is dropped, and polling sees the tag within the interval.

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
	budget *rate.Limiter // hints of all tags together
	apply  func(registry.TagRef)
	// dropped is told of a hint the budget refused.
	dropped func()

	mu     sync.Mutex
	gates  map[registry.TagRef]*gate
	offers int
}

// offer hints t now, at the end of its gap, or not again, and says which.
// The clock is read and timers are set outside c.mu: a fake clock runs
// timer functions under its own lock, and they take c.mu.
func (c *coalescer) offer(t registry.TagRef) string {
	now := c.clock.Now()
	c.mu.Lock()
	c.offers++
	if c.offers%gatesSweepEvery == 0 {
		c.sweepLocked(now)
	}
	g := c.gateLocked(t)
	last, pending := g.last, g.pending
	if t.Tag != "" {
		// A hint of the repository covers the tag.
		if rg := c.gates[registry.TagRef{Repository: t.Repository}]; rg != nil {
			pending = pending || rg.pending
			if rg.last.After(last) {
				last = rg.last
			}
		}
	}
	switch {
	case pending:
		c.mu.Unlock()
		return resultCoalesced
	case !last.IsZero() && now.Sub(last) < c.gap:
		due := last.Add(c.gap)
		g.pending = true
		c.mu.Unlock()
		c.schedule(t, g, due, now)
		return resultDeferred
	case !c.budget.AllowN(now, 1):
		c.mu.Unlock()
		c.dropped()
		return resultDropped
	}
	g.last, g.pending = now, true
	c.mu.Unlock()
	c.apply(t)
	c.schedule(t, g, now.Add(c.gap/2), now) // the confirmation
	return resultHinted
}

func (c *coalescer) gateLocked(t registry.TagRef) *gate {
	g := c.gates[t]
	if g == nil {
		g = &gate{}
		c.gates[t] = g
	}
	return g
}

// schedule hints t at due, if the budget allows; g.pending is set. The
// timer function does not ask the clock for the time (a fake clock's lock
// is held while it runs).
func (c *coalescer) schedule(t registry.TagRef, g *gate, due, now time.Time) {
	c.clock.AfterFunc(due.Sub(now), func() {
		c.mu.Lock()
		g.pending, g.last = false, due
		allowed := c.budget.AllowN(due, 1)
		c.mu.Unlock()
		if !allowed {
			c.dropped()
			return
		}
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
