package pinhook

import (
	"strings"

	"github.com/imagepin/imagepin/internal/drift"
	"github.com/imagepin/imagepin/internal/selection"
)

// imageInput is what decides one container image of a request, as plain
// values.
type imageInput struct {
	// image is the container's image as the request's object names it.
	image string
	// selected: the ImagePin's image filters select it.
	selected bool
	// update: the request is an UPDATE.
	update bool
	// templateMutable: the kind's pod template may change after creation
	// (object.templateMutable).
	templateMutable bool
	// old is the same container's image in the old object; hadOld is
	// false when the old object has no such container.
	old    string
	hadOld bool
	// override is the ImagePin's override digest for the image without
	// its digest, or "".
	override string
}

// imagePlan is what to write into one image field: ref (the image without
// a digest) pinned to digest, or, with digest empty, to what ref's tag
// resolves to.
type imagePlan struct {
	ref    string
	digest string
	// kept: digest is the one the old object runs, kept on a re-apply of
	// its tag.
	kept bool
	// override: digest is spec.overrides'.
	override bool
}

// planImage decides whether and how one container image is pinned; ok is
// false when it is left as the request has it.
//
//   - CREATE pins every selected image.
//   - UPDATE of a kind whose template may change pins likewise: the
//     controller would write the same.
//   - UPDATE of a Job or a bare Pod pins only an image this request
//     changes. A Job stored unpinned must still take a label, an unsuspend
//     or a finalizer's removal (its template is immutable: any change of
//     it is refused), and a Pod's update must not change what a running
//     container runs.
//   - An override applies to an image that carries a digest too, as the
//     controller applies it: an image pinned by CI to another digest is
//     written with the override's.
//   - Otherwise an image that names a digest is left alone: pinned
//     (idempotent), or malformed (the API server's to refuse).
//   - Re-applying a tag that the old object runs pinned keeps that digest:
//     no rollout for an unchanged spec, even after the tag moved.
func planImage(in imageInput) (imagePlan, bool) {
	if in.image == "" || !in.selected {
		return imagePlan{}, false
	}
	if in.update && !in.templateMutable && in.hadOld && in.old == in.image {
		return imagePlan{}, false
	}
	ref := drift.StripDigest(in.image)
	if in.override != "" {
		if drift.DigestOfImage(in.image) == in.override {
			return imagePlan{}, false
		}
		return imagePlan{ref: ref, digest: in.override, override: true}, true
	}
	if strings.Contains(in.image, "@") {
		return imagePlan{}, false
	}
	if in.hadOld && strings.Contains(in.old, "@") && selection.ImageKey(in.old) == selection.ImageKey(in.image) {
		if d := drift.DigestOfImage(in.old); d != "" {
			return imagePlan{ref: ref, digest: d, kept: true}, true
		}
	}
	return imagePlan{ref: ref}, true
}
