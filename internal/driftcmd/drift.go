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

// Package driftcmd is `imagepin drift` (and `kubectl imagepin drift`): one
// table of the drift across a cluster, read from the status of the
// ImagePins and ClusterImagePins in scope, one row per workload container
// and image. It reads what the operator last reported and changes nothing.
// The package also says which subcommand a command line names when the
// binary runs as the kubectl plugin kubectl-imagepin (plugin.go).
package driftcmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Exit codes of Run.
const (
	// ExitOK: the table was printed (possibly empty) and --fail-on did not
	// match.
	ExitOK = 0
	// ExitFailOn: a printed row has a reason --fail-on names.
	ExitFailOn = 1
	// ExitError: bad usage, or the cluster could not be read.
	ExitError = 2
)

// reasons are the drift reasons of the API, in the order the API lists
// them: the names --reason and --fail-on accept.
var reasons = []imagesv1alpha1.DriftReason{
	imagesv1alpha1.DriftUnpinned,
	imagesv1alpha1.DriftTagMoved,
	imagesv1alpha1.DriftMixedReplicas,
	imagesv1alpha1.DriftRolloutPending,
	imagesv1alpha1.DriftUnresolvable,
	imagesv1alpha1.DriftUnverified,
}

// Output formats of -o.
const (
	outputTable = "table"
	outputWide  = "wide"
	outputJSON  = "json"
	outputYAML  = "yaml"
)

var outputs = []string{outputTable, outputWide, outputJSON, outputYAML}

// options are the command's flags.
type options struct {
	namespace     string
	allNamespaces bool
	reasons       reasonSet // --reason; empty: any reason
	failOn        reasonSet
	all           bool
	output        string
	kubeconfig    string
	context       string
}

// reasonSet is a set of drift reasons.
type reasonSet []imagesv1alpha1.DriftReason

func (s reasonSet) String() string {
	names := make([]string, len(s))
	for i, r := range s {
		names[i] = string(r)
	}
	return strings.Join(names, ",")
}

// parseReasons reads the values of a --reason or --fail-on flag, each
// R1,R2: names of the API's drift reasons, spelt as the API spells them.
func parseReasons(flagName string, values []string) (reasonSet, error) {
	var s reasonSet
	var bad []string
	for _, v := range values {
		for name := range strings.SplitSeq(v, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				continue
			}
			r := imagesv1alpha1.DriftReason(name)
			switch {
			case !slices.Contains(reasons, r):
				bad = append(bad, strconv.Quote(name))
			case !slices.Contains(s, r):
				s = append(s, r)
			}
		}
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("--%s: unknown drift %s %s; valid reasons are %s", flagName, plural(len(bad), "reason"), strings.Join(bad, ", "), validReasons())
	}
	if len(values) > 0 && len(s) == 0 {
		return nil, fmt.Errorf("--%s: no drift reason given; valid reasons are %s", flagName, validReasons())
	}
	return s, nil
}

// has reports whether any of rs is in the set.
func (s reasonSet) has(rs []imagesv1alpha1.DriftReason) bool {
	for _, r := range rs {
		if slices.Contains(s, r) {
			return true
		}
	}
	return false
}

func validReasons() string {
	names := make([]string, len(reasons))
	for i, r := range reasons {
		names[i] = string(r)
	}
	return strings.Join(names, ", ")
}

const usage = `Usage: imagepin drift [-n NAMESPACE | -A] [--reason R,...] [--all] [-o wide|json|yaml] [--fail-on R,...]

Lists the workload containers that drift from what their image tags mean,
as the ImagePins and ClusterImagePins in scope last reported them in their
status: one row per workload container and image. Where an ImagePin and a
ClusterImagePin report the same container, the ImagePin's row is shown, as
the ImagePin takes precedence. Runs as "kubectl imagepin drift" too.

Examples:
  # Every drifted container in the cluster
  imagepin drift -A

  # The containers of namespace shop whose tag moved, with full digests and nodes
  kubectl imagepin drift -n shop --reason TagMoved -o wide

  # A runbook or CI check: exit 1 if a running workload lags behind its tag
  imagepin drift -A --fail-on TagMoved,RolloutPending,MixedReplicas

Flags:
  -n, --namespace NS     namespace to list (default: the kubeconfig context's namespace, else "default")
  -A, --all-namespaces   list every namespace
      --reason R,...     only rows with at least one of these drift reasons
      --all              also list containers without drift
  -o, --output FORMAT    table (default), wide (full digests, pinned digest, nodes), json or yaml
      --fail-on R,...    exit 1 when a listed row has one of these drift reasons
      --kubeconfig PATH  kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)
      --context NAME     kubeconfig context to use (default: the current context)

Drift reasons: Unpinned, TagMoved, MixedReplicas, RolloutPending, Unresolvable, Unverified.
Exit codes: 0 listed; 1 --fail-on matched a listed row; 2 usage or cluster error.
`

// Run runs `imagepin drift` with args, what follows "drift" on the command
// line, and returns its exit code: ExitOK, ExitFailOn or ExitError.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parse(args)
	if errors.Is(err, flag.ErrHelp) {
		sayf(stdout, "%s", usage)
		return ExitOK
	}
	if err != nil {
		say(stderr, "imagepin drift:", oneLine(err.Error())+` (see "imagepin drift -h")`)
		return ExitError
	}
	c, namespace, err := connect(o, stderr)
	if err != nil {
		say(stderr, "imagepin drift:", oneLine(err.Error()))
		return ExitError
	}
	if o.allNamespaces {
		namespace = ""
	}
	report, err := read(ctx, c, namespace, stderr)
	if err != nil {
		say(stderr, "imagepin drift:", oneLine(err.Error()))
		return ExitError
	}
	for _, w := range report.omitted {
		say(stderr, "imagepin drift:", w)
	}
	rows := selectRows(report.rows, o)
	if err := write(stdout, rows, o); err != nil {
		say(stderr, "imagepin drift:", oneLine(err.Error()))
		return ExitError
	}
	if len(rows) == 0 && (o.output == outputTable || o.output == outputWide) {
		say(stderr, noneFound(namespace, o.all))
	}
	if len(o.failOn) > 0 {
		// Every row in the namespaces asked about counts, whatever
		// --reason and --all show: a runbook's check does not depend on
		// what it prints.
		matched := 0
		for _, r := range report.rows {
			if o.failOn.has(r.w.Drift) {
				matched++
			}
		}
		if matched > 0 {
			sayf(stderr, "imagepin drift: %d %s with %s (--fail-on)\n", matched, plural(matched, "container"), strings.ReplaceAll(o.failOn.String(), ",", " or "))
			return ExitFailOn
		}
	}
	return ExitOK
}

// parse reads the flags. Errors are one line each; flag.ErrHelp asks for
// the usage.
func parse(args []string) (options, error) {
	o := options{}
	fs := flag.NewFlagSet("imagepin drift", flag.ContinueOnError)
	// Errors are said in one line by Run, and -h prints the usage to
	// stdout: the flag package writes nothing itself.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&o.namespace, "n", "", "namespace")
	fs.StringVar(&o.namespace, "namespace", "", "namespace")
	fs.BoolVar(&o.allNamespaces, "A", false, "all namespaces")
	fs.BoolVar(&o.allNamespaces, "all-namespaces", false, "all namespaces")
	var reasonValues, failOnValues []string
	fs.Func("reason", "drift reasons", func(v string) error { reasonValues = append(reasonValues, v); return nil })
	fs.Func("fail-on", "drift reasons", func(v string) error { failOnValues = append(failOnValues, v); return nil })
	fs.BoolVar(&o.all, "all", false, "also rows without drift")
	fs.StringVar(&o.output, "o", "", "output format")
	fs.StringVar(&o.output, "output", "", "output format")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file")
	fs.StringVar(&o.context, "context", "", "kubeconfig context")
	if err := fs.Parse(kubectlStyle(args)); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if o.reasons, err = parseReasons("reason", reasonValues); err != nil {
		return o, err
	}
	if o.failOn, err = parseReasons("fail-on", failOnValues); err != nil {
		return o, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.allNamespaces && (set["n"] || set["namespace"]) {
		return o, errors.New("--namespace and --all-namespaces cannot be used together")
	}
	if (set["n"] || set["namespace"]) && o.namespace == "" {
		return o, errors.New("--namespace needs a namespace name")
	}
	if o.output == "" {
		o.output = outputTable
	}
	if !slices.Contains(outputs, o.output) {
		return o, fmt.Errorf("unknown output format %q; valid formats are %s", o.output, strings.Join(outputs, ", "))
	}
	return o, nil
}

// kubectlStyle accepts -owide, -ojson, -oyaml and -otable, as kubectl does,
// for -o wide and so on. Nothing else is rewritten: -output stays a flag.
func kubectlStyle(args []string) []string {
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if f, ok := strings.CutPrefix(a, "-o"); ok && slices.Contains(outputs, f) {
			out = append(out, "-o", f)
			continue
		}
		out = append(out, a)
	}
	return out
}

// connect loads the kubeconfig as kubectl does (--kubeconfig, else
// $KUBECONFIG, else ~/.kube/config, else the in-cluster config; --context
// over the current context) and returns a client for the ImagePin API and
// the namespace to list: --namespace, else the context's, else "default".
// The API server's warnings go to stderr, as kubectl prints them.
func connect(o options, stderr io.Writer) (client.Client, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.context})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("load kubeconfig: %w", err)
	}
	namespace := o.namespace
	if namespace == "" && !o.allNamespaces {
		if namespace, _, err = cc.Namespace(); err != nil {
			return nil, "", fmt.Errorf("load kubeconfig: %w", err)
		}
		if namespace == "" {
			namespace = "default"
		}
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "imagepin-drift"
	cfg.WarningHandler = rest.NewWarningWriter(stderr, rest.WarningWriterOptions{Deduplicate: true})
	scheme := runtime.NewScheme()
	if err := imagesv1alpha1.AddToScheme(scheme); err != nil {
		return nil, "", err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, "", fmt.Errorf("connect to %s: %w", cfg.Host, err)
	}
	return c, namespace, nil
}

// report is what the ImagePins and ClusterImagePins in scope say: every
// row (before --reason and --all), and a warning per object whose status
// leaves entries out.
type report struct {
	rows    []row
	omitted []string
}

// read lists the ImagePins of namespace ("" for all) and every
// ClusterImagePin, and returns their rows, those of the ClusterImagePins
// kept to namespace. A cluster without the ClusterImagePin API (an older
// imagepin) has no ClusterImagePin rows; a user who may not list
// ClusterImagePins gets the ImagePins' rows and a warning on stderr.
func read(ctx context.Context, c client.Client, namespace string, stderr io.Writer) (report, error) {
	var pins imagesv1alpha1.ImagePinList
	var opts []client.ListOption
	if namespace != "" {
		opts = append(opts, client.InNamespace(namespace))
	}
	if err := c.List(ctx, &pins, opts...); err != nil {
		if meta.IsNoMatchError(err) {
			return report{}, errors.New("the ImagePin API (imagepins.images.imagepin.dev) is not installed in this cluster: is imagepin installed?")
		}
		return report{}, fmt.Errorf("list ImagePins: %w", err)
	}
	var cpins imagesv1alpha1.ClusterImagePinList
	if err := c.List(ctx, &cpins); err != nil {
		switch {
		case meta.IsNoMatchError(err):
			cpins.Items = nil
		case apierrors.IsForbidden(err):
			say(stderr, "imagepin drift: warning: ClusterImagePins not listed (forbidden), their rows are missing:", oneLine(err.Error()))
			cpins.Items = nil
		default:
			return report{}, fmt.Errorf("list ClusterImagePins: %w", err)
		}
	}
	return collect(pins.Items, cpins.Items, namespace), nil
}

// noneFound is the line said when no row matches.
func noneFound(namespace string, all bool) string {
	what := "No drift found"
	if all {
		what = "No workload containers found"
	}
	if namespace == "" {
		return what + " in any namespace."
	}
	return what + " in namespace " + namespace + "."
}

// oneLine keeps an error message, which may come from a server, on one
// line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' }), "; ")
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

func say(w io.Writer, args ...any) { _, _ = fmt.Fprintln(w, args...) }

func sayf(w io.Writer, format string, args ...any) { _, _ = fmt.Fprintf(w, format, args...) }
