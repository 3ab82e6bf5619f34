// Package selection owns what an ImagePin selects: it turns a spec into a
// compiled Selection (label selector, workload kinds, image globs, interval)
// once, so that the controller, the webhook and the CLI decide alike and a
// spec that cannot be honoured is refused with one clear message. It also
// owns the one rewrite all three write, PinnedImage ("repo:tag" to
// "repo:tag@sha256:…"), and its inverse, drift.StripDigest.
package selection
