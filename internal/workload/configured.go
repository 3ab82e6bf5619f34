package workload

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Any other pod-template custom resource (a Knative Service, an OpenKruise
// CloneSet, a Kubeflow PyTorchJob, a JobSet, a LeaderWorkerSet) is a kind
// the admin names with --workload-kind, in the manager and in `imagepin
// pin` alike:
//
//	--workload-kind=<group>/<version>/<Kind>,spec=[<name>:]<path>[,spec=…][,via=<group>/<version>/<Kind>…][,template-label=<label>][,immutable]
//
// spec is where a pod spec lives, field names joined by dots, "*" for
// every key of a map or item of a list of replica specs:
//
//	--workload-kind=kubeflow.org/v1/PyTorchJob,spec=spec.pytorchReplicaSpecs.*.template.spec,immutable
//	--workload-kind=jobset.x-k8s.io/v1alpha2/JobSet,spec=spec.replicatedJobs.*.template.spec.template.spec,via=batch/v1/Job,immutable
//	--workload-kind=apps.kruise.io/v1alpha1/CloneSet,spec=spec.template.spec
//
// via lists the kinds between the workload and its pods, from the
// workload down (a JobSet's Jobs), as its pods' owner references chain
// them; without via its pods are its own. template-label names the pod
// label that says which template a pod came from. immutable says its templates
// may not change after creation: imagepin then pins it at admission only,
// as it does a Job. The kind's name (PyTorchJob) is what an ImagePin's
// spec.kinds selects; it must not be one imagepin already knows.
//
// A flag, not a cluster-scoped CRD: the kinds and the RBAC on them are an
// install-time decision taken together (the manager's ClusterRole has to
// grant them), the CLI in CI has no cluster to read a CRD from, and a
// flag keeps the table fixed for the manager's lifetime, so that its
// cache, indexes and watches never change under it.

// KindFlagUsage is the help of --workload-kind, the manager's and `imagepin
// pin`'s.
const KindFlagUsage = "a pod-template custom resource to handle as a workload: <group>/<version>/<Kind>,spec=[<name>:]<path>[,spec=…][,via=<group>/<version>/<Kind>…][,template-label=<label>][,immutable], a path's fields dot-joined, \"*\" for every key or item of replica specs; repeatable (README: Other pod-template kinds)"

// Limits on one --workload-kind, so that a typo cannot make a walk long.
const (
	maxSpecPaths  = 8
	maxVias       = 4
	maxPathFields = 16
)

var (
	kindNameRE = regexp.MustCompile(`^[A-Z][A-Za-z0-9]{0,62}$`)
	fieldRE    = regexp.MustCompile(`^([A-Za-z0-9_-]{1,63}|\*)$`)
	specNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)
)

// ParseKind reads one --workload-kind value (see above). Kinds via names
// that imagepin knows are those of the table; another is read as a custom
// resource.
func ParseKind(value string) (*Kind, error) {
	parts := strings.Split(value, ",")
	gvk, err := parseGVK(parts[0])
	if err != nil {
		return nil, fmt.Errorf("--workload-kind %q: %w", value, err)
	}
	k := &Kind{
		Name: imagesv1alpha1.WorkloadKind(gvk.Kind), GVK: gvk,
		TemplateMutable: true, Workload: true, Admission: true, Optional: true, Configured: true,
		flag: value,
	}
	for _, opt := range parts[1:] {
		key, val, _ := strings.Cut(strings.TrimSpace(opt), "=")
		switch key {
		case "spec":
			p, err := parseSpecPath(val)
			if err != nil {
				return nil, fmt.Errorf("--workload-kind %q: spec %q: %w", value, val, err)
			}
			k.Specs = append(k.Specs, p)
		case "via":
			v, err := parseGVK(val)
			if err != nil {
				return nil, fmt.Errorf("--workload-kind %q: via %q: %w", value, val, err)
			}
			k.Via = append(k.Via, viaKind(v))
		case "template-label":
			if errs := validation.IsQualifiedName(val); len(errs) > 0 {
				return nil, fmt.Errorf("--workload-kind %q: template-label %q: %s", value, val, strings.Join(errs, "; "))
			}
			k.TemplateLabel = val
		case "immutable":
			if val != "" {
				return nil, fmt.Errorf("--workload-kind %q: immutable takes no value", value)
			}
			k.TemplateMutable = false
		default:
			return nil, fmt.Errorf("--workload-kind %q: unknown option %q (spec=, via=, template-label=, immutable)", value, key)
		}
	}
	switch {
	case len(k.Specs) == 0:
		return nil, fmt.Errorf("--workload-kind %q: no spec=<path> names where its pod spec is", value)
	case len(k.Specs) > maxSpecPaths:
		return nil, fmt.Errorf("--workload-kind %q: %d spec paths, at most %d", value, len(k.Specs), maxSpecPaths)
	case len(k.Via) > maxVias:
		return nil, fmt.Errorf("--workload-kind %q: %d via kinds, at most %d", value, len(k.Via), maxVias)
	}
	// Several templates need keys that tell them apart in status: a
	// wildcard's or a name.
	if len(k.Specs) > 1 {
		names := map[string]bool{}
		for _, p := range k.Specs {
			if p.Name == "" || names[p.Name] {
				return nil, fmt.Errorf("--workload-kind %q: with several spec paths each needs a distinct name (spec=leader:spec.…)", value)
			}
			names[p.Name] = true
		}
	}
	return k, nil
}

func parseGVK(s string) (schema.GroupVersionKind, error) {
	parts := strings.Split(strings.TrimSpace(s), "/")
	var gvk schema.GroupVersionKind
	switch len(parts) {
	case 2: // the core group: v1/Pod
		gvk = schema.GroupVersionKind{Version: parts[0], Kind: parts[1]}
	case 3:
		gvk = schema.GroupVersionKind{Group: parts[0], Version: parts[1], Kind: parts[2]}
	default:
		return gvk, fmt.Errorf("%q is not <group>/<version>/<Kind>", s)
	}
	if gvk.Version == "" || !kindNameRE.MatchString(gvk.Kind) || len(gvk.Group) > 253 || len(gvk.Version) > 63 {
		return gvk, fmt.Errorf("%q is not <group>/<version>/<Kind> (a Kind starts with a capital letter)", s)
	}
	return gvk, nil
}

func parseSpecPath(s string) (SpecPath, error) {
	var p SpecPath
	if name, path, ok := strings.Cut(s, ":"); ok {
		if !specNameRE.MatchString(name) {
			return p, fmt.Errorf("template name %q: lower-case letters, digits and '-'", name)
		}
		p.Name, s = name, path
	}
	p.Fields = strings.Split(s, ".")
	if len(p.Fields) > maxPathFields {
		return p, fmt.Errorf("%d fields, at most %d", len(p.Fields), maxPathFields)
	}
	for _, f := range p.Fields {
		if !fieldRE.MatchString(f) {
			return p, fmt.Errorf("field %q: a field name, or %q for each key or item", f, Wildcard)
		}
	}
	if p.Fields[0] == Wildcard {
		return p, fmt.Errorf("a path starts at a field of the object, not %q", Wildcard)
	}
	return p, nil
}

// viaKind is the kind of the table a via names, or a custom resource
// kind, read as unstructured objects, that stands between a workload and
// its pods.
func viaKind(gvk schema.GroupVersionKind) *Kind {
	if k := kindOfRef(gvk.GroupVersion().String(), gvk.Kind); k != nil {
		return k
	}
	return &Kind{Name: imagesv1alpha1.WorkloadKind(gvk.Kind), GVK: gvk, Optional: true, Configured: true}
}

// Configure adds the configured kinds to the table before anything reads
// it (the manager's cache and watches, the webhook, the CLI). A name
// imagepin already knows is refused, unless it was configured by the same
// flag value before (Configure is then a no-op for it).
func Configure(configured []*Kind) error {
	next := slices.Clone(kinds)
	var added []*Kind
	for _, k := range configured {
		if slices.ContainsFunc(next, func(have *Kind) bool { return have.flag != "" && have.flag == k.flag }) {
			continue
		}
		for _, have := range next {
			// (A custom kind another flag names as a via is no clash.)
			if have.Name == k.Name && (have.Workload || !have.Configured) {
				return fmt.Errorf("--workload-kind %q: the kind %s is already imagepin's (%s)", k.flag, k.Name, have.GVK.GroupVersion().String())
			}
		}
		next = append(next, k)
		added = append(added, k)
	}
	// Then the kinds between them and their pods: a via may name a kind
	// another flag configures, in any order.
	for _, k := range added {
		for i, v := range k.Via {
			// One entry per custom via kind, however many kinds name it.
			if j := slices.IndexFunc(next, func(have *Kind) bool { return have.GVK == v.GVK }); j >= 0 {
				k.Via[i] = next[j]
				continue
			}
			next = append(next, v)
		}
	}
	kinds = next
	selectable = selectableOf(kinds)
	vias = viasOf(kinds)
	return nil
}

// KindFlag is the flag.Value of --workload-kind, the manager's and
// `imagepin pin`'s: each value is parsed as it is set, so that a bad one
// is a flag error naming it; Configure adds them to the table.
type KindFlag []*Kind

func (f *KindFlag) String() string {
	if f == nil {
		return ""
	}
	values := make([]string, len(*f))
	for i, k := range *f {
		values[i] = k.flag
	}
	return strings.Join(values, " ")
}

// Set parses one value.
func (f *KindFlag) Set(value string) error {
	k, err := ParseKind(value)
	if err != nil {
		return err
	}
	*f = append(*f, k)
	return nil
}

// ConfigureFlags parses and adds the --workload-kind values.
func ConfigureFlags(values []string) error {
	var ks []*Kind
	for _, v := range values {
		k, err := ParseKind(v)
		if err != nil {
			return err
		}
		ks = append(ks, k)
	}
	return Configure(ks)
}
