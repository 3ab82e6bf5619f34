// Package drift decides, with small pure functions over plain inputs, how a
// workload container differs from what its tag means: the drift reasons of
// the ImagePin API. It reads digests out of the imageID forms container
// runtimes write, and treats a platform manifest of a multi-arch index as
// the index itself.
package drift
