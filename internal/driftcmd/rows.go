/*
Copyright 2026 The imagepin Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package driftcmd

import (
	"cmp"
	"fmt"
	"slices"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Kinds of the objects a row comes from.
const (
	sourceImagePin        = "ImagePin"
	sourceClusterImagePin = "ClusterImagePin"
)

// row is one workload container (or image volume) using one image, as one
// ImagePin or ClusterImagePin reports it.
type row struct {
	namespace string
	w         imagesv1alpha1.WorkloadImage
	image     string
	tagDigest imagesv1alpha1.Digest
	err       string
	source    source
}

// source is the object a row comes from.
type source struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// key is what the ImagePin of a namespace and a ClusterImagePin report
// alike for the same container: the ImagePin's row is kept.
type key struct {
	namespace, kind, name, template, container string
	init, volume                               bool
	image                                      string
}

func (r row) key() key {
	return key{r.namespace, string(r.w.Kind), r.w.Name, r.w.Template, r.w.Container, r.w.Init, r.w.Volume, r.image}
}

// collect returns the rows of the ImagePins and of the ClusterImagePins,
// these kept to namespace unless it is "" (all), without a ClusterImagePin's
// row where an ImagePin reports the same container and image, sorted by
// namespace, kind, name and container; and a warning per object that left
// entries out of its status.
func collect(pins []imagesv1alpha1.ImagePin, cpins []imagesv1alpha1.ClusterImagePin, namespace string) report {
	var rep report
	namespaced := map[key]bool{}
	// A suspended ImagePin's status is its last check's, and by Writer's
	// rule it takes no part: its rows give way to a ClusterImagePin's.
	var suspended []row
	for i := range pins {
		p := &pins[i]
		src := source{Kind: sourceImagePin, Name: p.Name}
		for _, img := range p.Status.Images {
			for _, w := range img.Workloads {
				r := newRow(p.Namespace, w, img, src)
				if p.Spec.Suspend {
					suspended = append(suspended, r)
					continue
				}
				namespaced[r.key()] = true
				rep.rows = append(rep.rows, r)
			}
		}
		if n := p.Status.Summary.Omitted; n > 0 {
			rep.omitted = append(rep.omitted, omittedWarning(n, fmt.Sprintf("ImagePin %s/%s", p.Namespace, p.Name)))
		}
	}
	for i := range cpins {
		p := &cpins[i]
		src := source{Kind: sourceClusterImagePin, Name: p.Name}
		for _, img := range p.Status.Images {
			for _, w := range img.Workloads {
				if namespace != "" && w.Namespace != namespace {
					continue
				}
				r := newRow(w.Namespace, w, img, src)
				if namespaced[r.key()] {
					continue
				}
				rep.rows = append(rep.rows, r)
			}
		}
		if n := clusterOmitted(p, namespace); n > 0 {
			rep.omitted = append(rep.omitted, omittedWarning(n, "ClusterImagePin "+p.Name))
		}
	}
	fromCluster := map[key]bool{}
	for _, r := range rep.rows {
		if r.source.Kind == sourceClusterImagePin {
			fromCluster[r.key()] = true
		}
	}
	for _, r := range suspended {
		if !fromCluster[r.key()] {
			rep.rows = append(rep.rows, r)
		}
	}
	slices.SortStableFunc(rep.rows, func(a, b row) int {
		return cmp.Or(
			cmp.Compare(a.namespace, b.namespace),
			cmp.Compare(a.w.Kind, b.w.Kind),
			cmp.Compare(a.w.Name, b.w.Name),
			cmp.Compare(a.w.Container, b.w.Container),
			cmp.Compare(a.w.Template, b.w.Template),
			cmp.Compare(a.image, b.image),
			cmp.Compare(a.source.Kind, b.source.Kind),
			cmp.Compare(a.source.Name, b.source.Name),
		)
	})
	return rep
}

func newRow(namespace string, w imagesv1alpha1.WorkloadImage, img imagesv1alpha1.ImageStatus, src source) row {
	// The workload's namespace is the object's for an ImagePin: its
	// status leaves it out.
	w.Namespace = namespace
	return row{namespace: namespace, w: w, image: img.Image, tagDigest: img.Digest, err: img.Error, source: src}
}

// clusterOmitted is how many of a ClusterImagePin's entries its status
// leaves out: across namespaces when namespace is "", else in namespace, as
// its per-namespace breakdown says; when that breakdown is itself cut short
// and does not name namespace, the count across namespaces.
func clusterOmitted(p *imagesv1alpha1.ClusterImagePin, namespace string) int32 {
	if namespace == "" {
		return p.Status.Summary.Omitted
	}
	for _, ns := range p.Status.Namespaces {
		if ns.Name == namespace {
			return ns.Omitted
		}
	}
	if len(p.Status.Namespaces) < maxBreakdown {
		// The breakdown is whole: a namespace it does not name has
		// nothing there (or is not one it selects).
		return 0
	}
	return p.Status.Summary.Omitted
}

// maxBreakdown is the CRD's maxItems of a ClusterImagePin's
// status.namespaces.
const maxBreakdown = 256

func omittedWarning(n int32, object string) string {
	return fmt.Sprintf("%d %s of %s %s not listed (status is bounded)", n, plural(int(n), "container"), object, plural2(int(n), "is", "are"))
}

func plural2(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// selectRows returns the rows --reason and --all keep: by default those
// with a drift reason; with --reason those with one of its reasons.
func selectRows(rows []row, o options) []row {
	var out []row
	for _, r := range rows {
		switch {
		case len(o.reasons) > 0:
			if !o.reasons.has(r.w.Drift) {
				continue
			}
		case !o.all:
			if len(r.w.Drift) == 0 {
				continue
			}
		}
		out = append(out, r)
	}
	return out
}
