// Package registry owns every conversation with container registries: it
// resolves image tags to digests for the controller, the webhook and the CLI.
// It is the only package that imports go-containerregistry's remote.
//
// It is built to be polite and fast: HEAD requests only in steady state, one
// request per distinct tag and credential per TTL however many callers ask
// (a cache plus request coalescing), one authenticated transport per
// registry and credential, a per-registry request budget, Retry-After
// honoured, a deadline on every call, and the last good digest kept when a
// registry fails.
package registry
