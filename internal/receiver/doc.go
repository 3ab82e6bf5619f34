// Package receiver takes registries' push notifications and turns them into
// hints: "this tag may have moved". It never takes an event's word for a
// digest. A hint makes the shared resolver's cached answers for the tag
// unfresh and has every ImagePin that names the tag checked at once, so the
// tag is resolved again with a HEAD, with the credentials of the workloads
// that use it, and the answer is treated as a polled one.
//
// It owns the endpoints (one per registry family: payloads.go), how each
// authenticates its sender (a token or an HMAC signature read from a
// mounted Secret: auth.go), and what bounds what an event may cost: a body
// limit, a request budget per sender, events for tags nobody uses dropped
// before any work, and at most one hint per tag per MinGap, a burst
// coalesced into one more at its end (coalesce.go).
package receiver
