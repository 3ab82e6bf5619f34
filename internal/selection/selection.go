package selection

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/drift"
	"github.com/imagepin/imagepin/internal/workload"
)

// DefaultInterval is the resolution interval of a spec that names none.
const DefaultInterval = 5 * time.Minute

// MinInterval is the shortest interval imagepin honours; the CRD refuses
// shorter ones, and this guards objects that bypassed it.
const MinInterval = 10 * time.Second

// DefaultRetentionCheck is how often a digest found present is checked
// again when spec.retention names no checkInterval; MinRetentionCheck the
// shortest honoured.
const (
	DefaultRetentionCheck = 6 * time.Hour
	MinRetentionCheck     = time.Minute
	MaxRetentionCheck     = 48 * time.Hour
	// DefaultKeepLast is how many history digests per image
	// spec.retention.protect keeps when keepLast is not set.
	DefaultKeepLast = 3
	// MaxKeepLast is the most it keeps: history holds no more.
	MaxKeepLast = 10
)

// Selection is a compiled ImagePinSpec.
type Selection struct {
	labels   labels.Selector
	kinds    []imagesv1alpha1.WorkloadKind
	include  []*regexp.Regexp
	exclude  []*regexp.Regexp
	Interval time.Duration
	// RetentionCheck is spec.retention.checkInterval: how often a digest
	// found present is checked again.
	RetentionCheck time.Duration
	// Protect is spec.retention.protect: keep tags hold the digests a
	// backout needs; KeepLast how many history digests of each image.
	Protect  bool
	KeepLast int
	// PushSecret is spec.retention.pushSecretRef's name: the Secret keep
	// tags are pushed with; empty: the workload's pull credentials.
	PushSecret string
	// overrides maps an image (ImageKey) to the digest spec.overrides
	// holds it to.
	overrides map[string]string
}

// Compile checks a spec and compiles what it selects. The error names the
// field at fault and is written for the ImagePin's author.
func Compile(spec *imagesv1alpha1.ImagePinSpec) (*Selection, error) {
	sel := &Selection{labels: labels.Everything(), Interval: DefaultInterval, RetentionCheck: DefaultRetentionCheck}

	if spec.Selector != nil {
		s, err := metav1.LabelSelectorAsSelector(spec.Selector)
		if err != nil {
			return nil, fmt.Errorf("spec.selector: %w", err)
		}
		sel.labels = s
	}

	kinds, err := compileKinds(spec.Kinds)
	if err != nil {
		return nil, err
	}
	sel.kinds = kinds

	if spec.Images != nil {
		if sel.include, err = compileGlobs("spec.images.include", spec.Images.Include); err != nil {
			return nil, err
		}
		if sel.exclude, err = compileGlobs("spec.images.exclude", spec.Images.Exclude); err != nil {
			return nil, err
		}
	}

	switch spec.Mode {
	case "", imagesv1alpha1.ModeObserve, imagesv1alpha1.ModePin, imagesv1alpha1.ModeFollow:
	default:
		return nil, fmt.Errorf("spec.mode: %q is not one of Observe, Pin, Follow", spec.Mode)
	}

	if spec.Interval != nil {
		if spec.Interval.Duration < MinInterval {
			return nil, fmt.Errorf("spec.interval: %s is shorter than the minimum of %s", spec.Interval.Duration, MinInterval)
		}
		sel.Interval = spec.Interval.Duration
	}

	if r := spec.Retention; r != nil {
		sel.Protect, sel.KeepLast = r.Protect, DefaultKeepLast
		if r.KeepLast != nil {
			if k := *r.KeepLast; k < 1 || k > MaxKeepLast {
				return nil, fmt.Errorf("spec.retention.keepLast: %d is not between 1 and %d", k, MaxKeepLast)
			}
			sel.KeepLast = int(*r.KeepLast)
		}
		if r.PushSecretRef != nil {
			if r.PushSecretRef.Name == "" {
				return nil, fmt.Errorf("spec.retention.pushSecretRef.name: empty")
			}
			sel.PushSecret = r.PushSecretRef.Name
		}
		if d := r.CheckInterval; d != nil {
			if d.Duration < MinRetentionCheck {
				return nil, fmt.Errorf("spec.retention.checkInterval: %s is shorter than the minimum of %s", d.Duration, MinRetentionCheck)
			}
			if d.Duration > MaxRetentionCheck {
				return nil, fmt.Errorf("spec.retention.checkInterval: %s is longer than the maximum of %s", d.Duration, MaxRetentionCheck)
			}
			sel.RetentionCheck = d.Duration
		}
	}

	if spec.Follow != nil && spec.Follow.MinAge != nil && spec.Follow.MinAge.Duration < 0 {
		return nil, fmt.Errorf("spec.follow.minAge: %s is negative", spec.Follow.MinAge.Duration)
	}

	sel.overrides = make(map[string]string, len(spec.Overrides))
	first := map[string]int{}
	for i, o := range spec.Overrides {
		if o.Digest == "" {
			return nil, fmt.Errorf("spec.overrides[%d]: override for %s needs a digest", i, o.Image)
		}
		// "repo" and "repo:latest" are one image: two overrides of it
		// would have the controller and the webhook each pick one.
		key := ImageKey(o.Image)
		if j, ok := first[key]; ok {
			return nil, fmt.Errorf("spec.overrides[%d]: %s is the image spec.overrides[%d] (%s) already holds", i, o.Image, j, spec.Overrides[j].Image)
		}
		first[key] = i
		sel.overrides[key] = string(o.Digest)
	}
	return sel, nil
}

// Overrides maps each overridden image (as ImageKey names it) to its
// digest; read it, do not change it.
func (s *Selection) Overrides() map[string]string { return s.overrides }

// Override returns the digest spec.overrides holds image to, or "":
// matched as ImageKey names it (digest removed, implied tag added).
func (s *Selection) Override(image string) string { return s.overrides[ImageKey(image)] }

func compileKinds(kinds []imagesv1alpha1.WorkloadKind) ([]imagesv1alpha1.WorkloadKind, error) {
	all := workload.SelectableKinds()
	if len(kinds) == 0 {
		return all, nil
	}
	out := make([]imagesv1alpha1.WorkloadKind, 0, len(kinds))
	// Keep the canonical order so status and listings are stable.
	for _, k := range all {
		if slices.Contains(kinds, k) {
			out = append(out, k)
		}
	}
	for i, k := range kinds {
		if !slices.Contains(all, k) {
			return nil, fmt.Errorf("spec.kinds[%d]: %q is not a workload kind imagepin selects (%s)", i, k, kindList())
		}
	}
	return out, nil
}

func kindList() string {
	all := workload.SelectableKinds()
	names := make([]string, len(all))
	for i, k := range all {
		names[i] = string(k)
	}
	return strings.Join(names, ", ")
}

// compileGlobs turns image globs into anchored regular expressions. In an
// image glob "*" matches any run of characters, "/" included (so
// "registry.example.com/*" selects nested repositories), "?" matches one
// character and "[a-z]" a class. A pattern that does not compile is refused,
// so that a typo is a condition on the ImagePin rather than a filter that
// silently matches nothing.
func compileGlobs(field string, globs []string) ([]*regexp.Regexp, error) {
	out := make([]*regexp.Regexp, 0, len(globs))
	for i, g := range globs {
		re, err := globRegexp(g)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %q is not a valid glob: %w", field, i, g, err)
		}
		out = append(out, re)
	}
	return out, nil
}

func globRegexp(glob string) (*regexp.Regexp, error) {
	if glob == "" {
		return nil, errors.New("empty pattern")
	}
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(glob); i++ {
		switch c := glob[i]; c {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		case '[':
			end := strings.IndexByte(glob[i+1:], ']')
			if end < 0 {
				return nil, errors.New("unterminated [ class")
			}
			class := glob[i+1 : i+1+end]
			if class == "" || class == "!" || class == "^" {
				return nil, errors.New("empty [] class")
			}
			if class[0] == '!' {
				class = "^" + class[1:]
			}
			b.WriteString("[" + strings.ReplaceAll(class, `\`, `\\`) + "]")
			i += end + 1
		case ']':
			return nil, errors.New("] without [")
		default:
			b.WriteString(regexp.QuoteMeta(glob[i : i+1]))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// Kinds returns the selected workload kinds in canonical order.
func (s *Selection) Kinds() []imagesv1alpha1.WorkloadKind { return s.kinds }

// SelectsKind reports whether workloads of kind k are selected.
func (s *Selection) SelectsKind(k imagesv1alpha1.WorkloadKind) bool {
	return slices.Contains(s.kinds, k)
}

// Labels returns the compiled label selector.
func (s *Selection) Labels() labels.Selector { return s.labels }

// SelectsLabels reports whether a workload with these labels is selected.
func (s *Selection) SelectsLabels(l map[string]string) bool {
	return s.labels.Matches(labels.Set(l))
}

// SelectsImage reports whether an image reference, as the workload names it,
// passes the include and exclude globs. A digest is removed first, and an
// untagged reference and the same with ":latest" are one image, so that a
// pinned image ("repo:latest@…") stays selected by the filter that
// selected it unpinned ("repo").
func (s *Selection) SelectsImage(image string) bool {
	ref := drift.StripDigest(image)
	forms := []string{ref}
	if !HasTag(ref) {
		forms = append(forms, ref+":latest")
	} else if bare, ok := strings.CutSuffix(ref, ":latest"); ok {
		forms = append(forms, bare)
	}
	if len(s.include) > 0 && !matchesAny(s.include, forms...) {
		return false
	}
	return !matchesAny(s.exclude, forms...)
}

func matchesAny(globs []*regexp.Regexp, refs ...string) bool {
	for _, g := range globs {
		if slices.ContainsFunc(refs, g.MatchString) {
			return true
		}
	}
	return false
}

// KindPod names bare Pods, which the webhook pins: an ImagePin selects them
// by labels when it selects every workload kind.
const KindPod imagesv1alpha1.WorkloadKind = "Pod"

// Writer's rule: the writer of a container's image in an object of kind
// with labels is decided first among the ImagePins of its namespace (not
// suspended, valid) that select the object and that image: the first by
// name in Pin or Follow mode writes; if only ImagePins in Observe select
// it, nobody writes it. Only when no ImagePin of the namespace selects it
// do the ClusterImagePins that select the namespace decide, the same way:
// the first by name in Pin or Follow mode. The namespaced one wins, so a
// team can opt out of a ClusterImagePin (an Observe ImagePin) or hold
// another digest (its own Pin ImagePin). The controller writes only the
// containers its ImagePin or ClusterImagePin is the writer of, and the
// webhook pins each container with its writer, so two of them with
// different overrides never take turns, and two with disjoint image
// filters both pin.

// Writing is the ImagePins of a namespace and the ClusterImagePins that
// select it, each compiled once, first by name first.
type Writing struct {
	own, cluster []writerCandidate
}

// Writers is Writing narrowed to one object: the webhook and the
// controller ask it for each container.
type Writers struct {
	own, cluster []writerCandidate
}

type writerCandidate struct {
	pin *imagesv1alpha1.ImagePin
	sel *Selection
	// writes: in Pin or Follow mode; an ImagePin in Observe mode still
	// keeps the ClusterImagePins off what it selects.
	writes bool
}

// WritingOf compiles pins (a namespace's ImagePins) and cluster (the
// ClusterImagePins that select that namespace, as ClusterPinsFor gives
// them) for Writer's rule. Suspended and invalid ones take no part.
func WritingOf(pins []imagesv1alpha1.ImagePin, cluster ...imagesv1alpha1.ImagePin) *Writing {
	compile := func(pins []imagesv1alpha1.ImagePin, observers bool) []writerCandidate {
		var out []writerCandidate
		for i := range pins {
			p := &pins[i]
			writes := p.Spec.Mode == imagesv1alpha1.ModePin || p.Spec.Mode == imagesv1alpha1.ModeFollow
			if p.Spec.Suspend || (!writes && !observers) || !p.DeletionTimestamp.IsZero() {
				// (A deleted ImagePin held for its keep tags writes
				// nothing more.)
				continue
			}
			if sel, err := Compile(&p.Spec); err == nil {
				out = append(out, writerCandidate{p, sel, writes})
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].pin.Name < out[j].pin.Name })
		return out
	}
	return &Writing{own: compile(pins, true), cluster: compile(cluster, false)}
}

// Of returns those that select objects of kind with labels.
func (w *Writing) Of(kind imagesv1alpha1.WorkloadKind, labels map[string]string) *Writers {
	narrow := func(cs []writerCandidate) []writerCandidate {
		var out []writerCandidate
		for _, c := range cs {
			kindOK := c.sel.SelectsKind(kind) || (kind == KindPod && len(c.pin.Spec.Kinds) == 0)
			if kindOK && c.sel.SelectsLabels(labels) {
				out = append(out, c)
			}
		}
		return out
	}
	return &Writers{own: narrow(w.own), cluster: narrow(w.cluster)}
}

// WritersOf is WritingOf(pins, cluster...).Of(kind, labels), for one object.
func WritersOf(pins []imagesv1alpha1.ImagePin, cluster []imagesv1alpha1.ImagePin, kind imagesv1alpha1.WorkloadKind, labels map[string]string) *Writers {
	return WritingOf(pins, cluster...).Of(kind, labels)
}

// For returns the writer of image, or nil: nil too when an ImagePin of
// the namespace in Observe mode selects it and none in Pin or Follow does.
func (w *Writers) For(image string) (*imagesv1alpha1.ImagePin, *Selection) {
	claimed := false
	for _, c := range w.own {
		if !c.sel.SelectsImage(image) {
			continue
		}
		if c.writes {
			return c.pin, c.sel
		}
		claimed = true
	}
	if claimed {
		return nil, nil
	}
	for _, c := range w.cluster {
		if c.sel.SelectsImage(image) {
			return c.pin, c.sel
		}
	}
	return nil, nil
}

// YieldsTo returns the ImagePins of the namespace that select image here:
// a ClusterImagePin does not write it when there are any.
func (w *Writers) YieldsTo(image string) []string {
	var out []string
	for _, c := range w.own {
		if c.sel.SelectsImage(image) {
			out = append(out, c.pin.Name)
		}
	}
	return out
}
