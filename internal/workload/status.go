package workload

import (
	"slices"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// keepStatusCompact is the cache's transform of ImagePins and
// ClusterImagePins. Their status lists every selected container, so it
// grows with the workloads: decoded, each entry holds its own copy of
// strings that hundreds repeat (the kind, the container's name, a tag's
// digest, the nodes) and the decoder's slices keep spare room. The
// transform has each repeated string held once in the object and every
// slice at its length. The object reads the same.
func keepStatusCompact(obj any) (any, error) {
	obj, err := stripForCache(obj)
	if err != nil {
		return obj, err
	}
	switch p := obj.(type) {
	case *imagesv1alpha1.ImagePin:
		if p != nil {
			p.Status.Images = compactImages(p.Status.Images)
		}
	case *imagesv1alpha1.ClusterImagePin:
		if p != nil {
			p.Status.Images = compactImages(p.Status.Images)
		}
	}
	return obj, nil
}

func compactImages(images []imagesv1alpha1.ImageStatus) []imagesv1alpha1.ImageStatus {
	if len(images) == 0 {
		return images
	}
	var in interner
	images = slices.Clone(images)
	for i := range images {
		img := &images[i]
		img.Digest = in.digest(img.Digest)
		img.History = slices.Clone(img.History)
		for h := range img.History {
			img.History[h].Digest = in.digest(img.History[h].Digest)
		}
		img.Workloads = slices.Clone(img.Workloads)
		for w := range img.Workloads {
			wl := &img.Workloads[w]
			wl.Namespace, wl.Container, wl.Template = in.str(wl.Namespace), in.str(wl.Container), in.str(wl.Template)
			wl.Kind = imagesv1alpha1.WorkloadKind(in.str(string(wl.Kind)))
			wl.PinnedDigest = in.digest(wl.PinnedDigest)
			wl.Running = slices.Clone(wl.Running)
			for r := range wl.Running {
				run := &wl.Running[r]
				run.Digest = in.digest(run.Digest)
				run.Nodes = slices.Clone(run.Nodes)
				for n := range run.Nodes {
					run.Nodes[n] = in.str(run.Nodes[n])
				}
			}
			wl.Drift = slices.Clone(wl.Drift)
			for d := range wl.Drift {
				wl.Drift[d] = imagesv1alpha1.DriftReason(in.str(string(wl.Drift[d])))
			}
		}
	}
	return images
}

// interner hands out one copy of each string it is given, within one
// object.
type interner map[string]string

func (in *interner) str(s string) string {
	if s == "" {
		return s
	}
	if *in == nil {
		*in = interner{}
	}
	if held, ok := (*in)[s]; ok {
		return held
	}
	(*in)[s] = s
	return s
}

func (in *interner) digest(d imagesv1alpha1.Digest) imagesv1alpha1.Digest {
	return imagesv1alpha1.Digest(in.str(string(d)))
}
