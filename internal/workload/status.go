package workload

import (
	"fmt"
	"slices"
	"strings"

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
			wl.Running = in.running(wl.Running)
			wl.Drift = in.drift(wl.Drift)
		}
	}
	return images
}

// running is one copy of each list of running digests: the workloads of
// one rollout run the same digests on the same nodes with as many pods.
// Lists are shared within one cached object, which every read copies.
func (in *interner) running(list []imagesv1alpha1.RunningDigest) []imagesv1alpha1.RunningDigest {
	if len(list) == 0 {
		return list
	}
	var key strings.Builder
	for _, r := range list {
		fmt.Fprintf(&key, "%s %d %s\n", r.Digest, r.Pods, strings.Join(r.Nodes, " "))
	}
	if held, ok := in.lists[key.String()]; ok {
		return held.([]imagesv1alpha1.RunningDigest)
	}
	list = slices.Clone(list)
	for r := range list {
		run := &list[r]
		run.Digest = in.digest(run.Digest)
		run.Nodes = slices.Clone(run.Nodes)
		for n := range run.Nodes {
			run.Nodes[n] = in.str(run.Nodes[n])
		}
	}
	in.hold(key.String(), list)
	return list
}

// drift is one copy of each list of drift reasons.
func (in *interner) drift(list []imagesv1alpha1.DriftReason) []imagesv1alpha1.DriftReason {
	if len(list) == 0 {
		return list
	}
	var key strings.Builder
	for _, d := range list {
		key.WriteString(string(d) + " ")
	}
	if held, ok := in.lists[key.String()]; ok {
		return held.([]imagesv1alpha1.DriftReason)
	}
	list = slices.Clone(list)
	for d := range list {
		list[d] = imagesv1alpha1.DriftReason(in.str(string(list[d])))
	}
	in.hold(key.String(), list)
	return list
}

func (in *interner) hold(key string, list any) {
	if in.lists == nil {
		in.lists = map[string]any{}
	}
	in.lists[key] = list
}

// interner hands out one copy of each string, and of each list of
// running digests and of drift reasons, it is given, within one object.
type interner struct {
	strs  map[string]string
	lists map[string]any
}

func (in *interner) str(s string) string {
	if s == "" {
		return s
	}
	if in.strs == nil {
		in.strs = map[string]string{}
	}
	if held, ok := in.strs[s]; ok {
		return held
	}
	in.strs[s] = s
	return s
}

func (in *interner) digest(d imagesv1alpha1.Digest) imagesv1alpha1.Digest {
	return imagesv1alpha1.Digest(in.str(string(d)))
}
