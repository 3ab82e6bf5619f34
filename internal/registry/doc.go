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
//
// Credentials are known by where they come from (a pull secret of one
// namespace, the cloud identity, the user's docker config), never by the
// token they carry, so rotating cloud tokens keep one cache entry and one
// transport; each matching credential is tried in turn, then anonymous
// access, as a kubelet pulls. Cloud keychains are asked only about their
// own cloud's registries (credentials.go, keychain.go, cloud.go).
//
// It trusts registries only so far: nothing goes over plain HTTP to a
// registry not named in InsecureRegistries; a registry outside AllowedRegistries is
// never contacted; a HEAD's Docker-Content-Digest must be a sha256 digest or
// the manifest is fetched and hashed instead; a manifest must hash to the
// digest its GET advertises and to the one it was asked for by; no answer
// is read past MaxBodyBytes (4 MiB); and credentials are taken out of
// error messages, whatever a registry or token service echoes.
// internal/registry/faulttest puts those faults in front of real
// registries for the tests.
package registry
