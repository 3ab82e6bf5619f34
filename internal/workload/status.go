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
func (in *interner) running(list []imagesv1alpha1.RunningDigest) []imagesv1alpha1.RunningDigest {
	return internList(in, "running", list, func(key *strings.Builder, r imagesv1alpha1.RunningDigest) {
		fmt.Fprintf(key, "%s %d %s\n", r.Digest, r.Pods, strings.Join(r.Nodes, " "))
	}, func(r *imagesv1alpha1.RunningDigest) {
		r.Digest = in.digest(r.Digest)
		r.Nodes = slices.Clone(r.Nodes)
		for n := range r.Nodes {
			r.Nodes[n] = in.str(r.Nodes[n])
		}
	})
}

// drift is one copy of each list of drift reasons.
func (in *interner) drift(list []imagesv1alpha1.DriftReason) []imagesv1alpha1.DriftReason {
	return internList(in, "drift", list, func(key *strings.Builder, d imagesv1alpha1.DriftReason) {
		key.WriteString(string(d) + " ")
	}, func(d *imagesv1alpha1.DriftReason) {
		*d = imagesv1alpha1.DriftReason(in.str(string(*d)))
	})
}

// internList is one copy of each list of what (a kind of list) equal as
// key writes its items, within one object: a new one is copied, compact
// run on each item. Lists are shared within one cached object, which
// every read copies.
func internList[T any](in *interner, what string, list []T, key func(*strings.Builder, T), compact func(*T)) []T {
	if len(list) == 0 {
		return list
	}
	var k strings.Builder
	k.WriteString(what + ":")
	for _, item := range list {
		key(&k, item)
	}
	if held, ok := in.lists[k.String()]; ok {
		return held.([]T)
	}
	list = slices.Clone(list)
	for i := range list {
		compact(&list[i])
	}
	if in.lists == nil {
		in.lists = map[string]any{}
	}
	in.lists[k.String()] = list
	return list
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
