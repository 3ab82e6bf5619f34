package promcheck

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	promparser "github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite config/prometheus/alerts.yaml's spec from rules.yaml")

// repoRoot is the main module's root, seen from this module's directory.
const repoRoot = "../../.."

var (
	rulesPath     = filepath.Join(repoRoot, "config", "prometheus", "rules.yaml")
	alertsPath    = filepath.Join(repoRoot, "config", "prometheus", "alerts.yaml")
	dashboardPath = filepath.Join(repoRoot, "config", "prometheus", "dashboard.json")
)

// wantAlerts are the alerts the rules must keep (more may be added).
var wantAlerts = []string{
	"ImagePinDriftPersists",
	"ImagePinRegistryResolutionFailing",
	"ImagePinConflict",
	"ImagePinWebhookRefusing",
	"ImagePinRegistryRateLimited",
	"ImagePinReceiverRefusing",
}

func promql() promparser.Parser { return promparser.NewParser(promparser.Options{}) }

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// parseRules reads rules.yaml with Prometheus' own loader, which parses
// every expression and every annotation and label template.
func parseRules(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	groups, errs := rulefmt.Parse(read(t, rulesPath), false, model.LegacyValidation, promql(), slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("%s: %v", rulesPath, err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	return groups
}

func TestRulesAreValid(t *testing.T) {
	groups := parseRules(t)
	if len(groups.Groups) != 1 || groups.Groups[0].Name != "imagepin" {
		t.Errorf("want one rule group, imagepin; got %d", len(groups.Groups))
	}
	seen := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			if seen[name] {
				t.Errorf("%s: defined twice", name)
			}
			seen[name] = true
		}
	}
	for _, a := range wantAlerts {
		if !seen[a] {
			t.Errorf("alert %s is missing", a)
		}
	}
}

var labelRef = regexp.MustCompile(`\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`)

func TestEveryAlertIsDocumented(t *testing.T) {
	for _, g := range parseRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			if r.For <= 0 {
				t.Errorf("%s: no for: (alert only on a condition that lasts)", r.Alert)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			for _, a := range []string{"summary", "description", "runbook"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", r.Alert, a)
				}
			}
			if d := r.Annotations["description"]; !strings.Contains(d, "$labels") && !strings.Contains(d, "$value") {
				t.Errorf("%s: the description names neither $labels nor $value", r.Alert)
			}
			if strings.Contains(r.Annotations["runbook"], "\n") {
				t.Errorf("%s: the runbook is more than one line", r.Alert)
			}
			// Every $labels.x the templates use must survive the
			// expression's aggregation.
			expr, err := promql().ParseExpr(r.Expr)
			if err != nil {
				t.Fatal(err)
			}
			kept, known := outputLabels(expr)
			if !known {
				continue
			}
			for k, v := range r.Annotations {
				for _, m := range labelRef.FindAllStringSubmatch(v, -1) {
					if !slices.Contains(kept, m[1]) {
						t.Errorf("%s: annotation %s uses $labels.%s, which the expression drops (it keeps %v)", r.Alert, k, m[1], kept)
					}
				}
			}
		}
	}
}

// outputLabels says which labels an alert's series carry, for the shapes
// the rules use: an aggregation "by", possibly compared with a number.
func outputLabels(e promparser.Expr) ([]string, bool) {
	for {
		switch n := e.(type) {
		case *promparser.ParenExpr:
			e = n.Expr
		case *promparser.BinaryExpr:
			if _, ok := n.RHS.(*promparser.NumberLiteral); !ok {
				return nil, false
			}
			e = n.LHS
		case *promparser.AggregateExpr:
			if n.Without {
				return nil, false
			}
			return n.Grouping, true
		default:
			return nil, false
		}
	}
}

// TestAlertsYAMLFollowsRules keeps one source: alerts.yaml's spec is
// rules.yaml's groups, indented. -update rewrites it.
func TestAlertsYAMLFollowsRules(t *testing.T) {
	rules := read(t, rulesPath)
	alerts := read(t, alertsPath)

	// The text: everything from "groups:" in rules.yaml, under "spec:".
	i := bytes.Index(rules, []byte("\ngroups:\n"))
	if i < 0 {
		t.Fatalf("%s: no top-level groups:", rulesPath)
	}
	var want bytes.Buffer
	for _, line := range strings.SplitAfter(string(rules[i+1:]), "\n") {
		if strings.TrimSpace(line) != "" {
			want.WriteString("  ")
		}
		want.WriteString(line)
	}
	j := bytes.Index(alerts, []byte("\nspec:\n"))
	if j < 0 {
		t.Fatalf("%s: no top-level spec:", alertsPath)
	}
	head := alerts[:j+len("\nspec:\n")]
	if got := alerts[len(head):]; !bytes.Equal(got, want.Bytes()) {
		if *update {
			if err := os.WriteFile(alertsPath, append(head[:len(head):len(head)], want.Bytes()...), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("rewrote %s", alertsPath)
			alerts = read(t, alertsPath)
		} else {
			t.Errorf("%s's spec differs from %s: run go test -run TestAlertsYAMLFollowsRules -update here", alertsPath, rulesPath)
		}
	}

	// The meaning: the same groups, whatever the text.
	var rule struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			Groups any `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(alerts, &rule); err != nil {
		t.Fatalf("%s: %v", alertsPath, err)
	}
	if rule.APIVersion != "monitoring.coreos.com/v1" || rule.Kind != "PrometheusRule" || rule.Metadata.Name != "imagepin" {
		t.Errorf("%s: want the monitoring.coreos.com/v1 PrometheusRule imagepin, got %s %s %s", alertsPath, rule.APIVersion, rule.Kind, rule.Metadata.Name)
	}
	var plain struct {
		Groups any `json:"groups"`
	}
	if err := yaml.Unmarshal(rules, &plain); err != nil {
		t.Fatalf("%s: %v", rulesPath, err)
	}
	if !reflect.DeepEqual(rule.Spec.Groups, plain.Groups) {
		t.Errorf("%s: spec.groups differ from %s's groups", alertsPath, rulesPath)
	}
}

// dashboard is the part of Grafana's dashboard model the checks read.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query string `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID          int         `json:"id"`
	Type        string      `json:"type"`
	Title       string      `json:"title"`
	Description string      `json:"description"`
	Datasource  *datasource `json:"datasource"`
	GridPos     struct {
		X int `json:"x"`
		Y int `json:"y"`
		W int `json:"w"`
		H int `json:"h"`
	} `json:"gridPos"`
	Targets []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	// Panels are those of a collapsed row.
	Panels []panel `json:"panels"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func (d *datasource) isVariable() bool {
	return d != nil && d.Type == "prometheus" && d.UID == "${datasource}"
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(read(t, dashboardPath), &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// allPanels lists the panels, those of rows included.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

func TestDashboardPanels(t *testing.T) {
	d := readDashboard(t)
	if d.UID != "imagepin" {
		t.Errorf("uid %q, want imagepin", d.UID)
	}
	if d.SchemaVersion < 39 {
		t.Errorf("schemaVersion %d, want 39 or later", d.SchemaVersion)
	}
	hasVar := false
	for _, v := range d.Templating.List {
		if v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus" {
			hasVar = true
		}
	}
	if !hasVar {
		t.Error("no datasource variable of type datasource and query prometheus")
	}
	for i, a := range d.Panels {
		g := a.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v is off the 24-column grid", a.Title, g)
		}
		for _, b := range d.Panels[:i] {
			h := b.GridPos
			if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
				t.Errorf("panels %q and %q overlap", b.Title, a.Title)
			}
		}
	}
	ids := map[int]string{}
	panels := allPanels(d.Panels)
	if len(panels) == 0 {
		t.Fatal("no panels")
	}
	for _, p := range panels {
		if p.ID <= 0 {
			t.Errorf("panel %q: no id", p.Title)
		} else if other, ok := ids[p.ID]; ok {
			t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if p.Type == "row" {
			continue
		}
		if !p.Datasource.isVariable() {
			t.Errorf("panel %q: datasource %+v, want prometheus ${datasource}", p.Title, p.Datasource)
		}
		if strings.TrimSpace(p.Description) == "" {
			t.Errorf("panel %q: no description", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource != nil && !tg.Datasource.isVariable() {
				t.Errorf("panel %q, query %s: datasource %+v, want prometheus ${datasource}", p.Title, tg.RefID, tg.Datasource)
			}
		}
	}
}

// grafanaVars are Grafana's interval variables, given a duration so that
// the expression parses.
var grafanaVars = regexp.MustCompile(`\$(__[a-z_]+|\{__[a-z_]+\})`)

// dashboardExprs returns each query's expression, Grafana's variables
// replaced, by where it is.
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range allPanels(readDashboard(t).Panels) {
		for _, tg := range p.Targets {
			where := fmt.Sprintf("panel %q, query %s", p.Title, tg.RefID)
			expr := grafanaVars.ReplaceAllString(tg.Expr, "5m")
			if strings.Contains(expr, "$") {
				t.Errorf("%s: a variable other than Grafana's intervals: %s", where, tg.Expr)
			}
			out[where] = expr
		}
	}
	return out
}

func TestDashboardExpressionsParse(t *testing.T) {
	exprs := dashboardExprs(t)
	if len(exprs) == 0 {
		t.Fatal("no queries")
	}
	for where, e := range exprs {
		if _, err := promql().ParseExpr(e); err != nil {
			t.Errorf("%s: %v", where, err)
		}
	}
}

// metric is one the main module exports.
type metric struct {
	kind   string // Counter, Gauge, Histogram or Summary
	labels []string
	at     string
}

// exportedMetrics finds the metrics the main module's code creates with
// prometheus.New…(prometheus.…Opts{Name: "…"}, []string{labels}), in every
// Go file but tests, hack/ (tools, other modules) and bin/ and tmp/.
func exportedMetrics(t *testing.T) map[string]metric {
	t.Helper()
	out := map[string]metric{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			rel, _ := filepath.Rel(repoRoot, path)
			switch {
			case rel == ".":
			case strings.HasPrefix(d.Name(), "."), d.Name() == "testdata", d.Name() == "vendor",
				rel == "bin", rel == "tmp", rel == "hack":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "prometheus" {
				return true
			}
			kind, ok := strings.CutPrefix(sel.Sel.Name, "New")
			kind = strings.TrimSuffix(kind, "Vec")
			if !ok || !slices.Contains([]string{"Counter", "Gauge", "Histogram", "Summary"}, kind) {
				return true
			}
			opts, ok := call.Args[0].(*ast.CompositeLit)
			if !ok {
				return true
			}
			var parts [3]string // Namespace, Subsystem, Name
			for _, el := range opts.Elts {
				kv, ok := el.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				key, _ := kv.Key.(*ast.Ident)
				lit, _ := kv.Value.(*ast.BasicLit)
				if key == nil || lit == nil || lit.Kind != token.STRING {
					continue
				}
				v, err := strconv.Unquote(lit.Value)
				if err != nil {
					continue
				}
				switch key.Name {
				case "Namespace":
					parts[0] = v
				case "Subsystem":
					parts[1] = v
				case "Name":
					parts[2] = v
				}
			}
			if parts[2] == "" {
				return true
			}
			var nonEmpty []string
			for _, p := range parts {
				if p != "" {
					nonEmpty = append(nonEmpty, p)
				}
			}
			m := metric{kind: kind, at: fset.Position(call.Pos()).String()}
			if len(call.Args) > 1 {
				if ls, ok := call.Args[1].(*ast.CompositeLit); ok {
					for _, el := range ls.Elts {
						if lit, ok := el.(*ast.BasicLit); ok && lit.Kind == token.STRING {
							v, _ := strconv.Unquote(lit.Value)
							m.labels = append(m.labels, v)
						}
					}
				}
			}
			out[strings.Join(nonEmpty, "_")] = m
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("found no metric in the main module")
	}
	return out
}

// series returns the metric a series name belongs to and that series'
// labels: a histogram is queried by its _bucket (with le), _sum and
// _count, a summary by its name (with quantile), _sum and _count.
func series(exported map[string]metric, name string) (metric, []string, bool) {
	if m, ok := exported[name]; ok && m.kind != "Histogram" {
		if m.kind == "Summary" {
			return m, append(slices.Clone(m.labels), "quantile"), true
		}
		return m, m.labels, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if m, ok := exported[base]; ok && (m.kind == "Histogram" || m.kind == "Summary" && suffix != "_bucket") {
			if suffix == "_bucket" {
				return m, append(slices.Clone(m.labels), "le"), true
			}
			return m, m.labels, true
		}
	}
	return metric{}, nil, false
}

// The labels Prometheus adds to every scraped series.
var targetLabels = []string{"job", "instance", "namespace", "pod", "service", "container", "endpoint"}

// checkExpr reports the metrics an expression selects that the main module
// does not export, and the labels it matches or groups by that those
// metrics do not have.
func checkExpr(exported map[string]metric, expr string) []string {
	e, err := promql().ParseExpr(expr)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	seriesLabels := func(n promparser.Node) (names []string, ls [][]string) {
		promparser.Inspect(n, func(n promparser.Node, _ []promparser.Node) error {
			if vs, ok := n.(*promparser.VectorSelector); ok {
				if _, l, ok := series(exported, selectorName(vs)); ok {
					names = append(names, selectorName(vs))
					ls = append(ls, l)
				}
			}
			return nil
		})
		return names, ls
	}
	promparser.Inspect(e, func(n promparser.Node, _ []promparser.Node) error {
		switch n := n.(type) {
		case *promparser.VectorSelector:
			name := selectorName(n)
			_, ls, ok := series(exported, name)
			if !ok {
				problems = append(problems, fmt.Sprintf("metric %q is not one the main module exports", name))
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name != labels.MetricName && !slices.Contains(ls, m.Name) {
					problems = append(problems, fmt.Sprintf("%s has no label %q", name, m.Name))
				}
			}
		case *promparser.AggregateExpr:
			names, lss := seriesLabels(n.Expr)
			for _, g := range n.Grouping {
				for i, ls := range lss {
					// A label Prometheus gives every target (pod,
					// instance…) may be grouped by too.
					if !slices.Contains(ls, g) && !slices.Contains(targetLabels, g) {
						problems = append(problems, fmt.Sprintf("%s groups by %q, a label %s does not have", n.Op, g, names[i]))
					}
				}
			}
		}
		return nil
	})
	return problems
}

func selectorName(vs *promparser.VectorSelector) string {
	if vs.Name != "" {
		return vs.Name
	}
	for _, m := range vs.LabelMatchers {
		if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
			return m.Value
		}
	}
	return ""
}

func TestEveryMetricUsedIsExported(t *testing.T) {
	exported := exportedMetrics(t)
	used := map[string]bool{}
	check := func(where, expr string) {
		for _, p := range checkExpr(exported, expr) {
			t.Errorf("%s: %s", where, p)
		}
		e, err := promql().ParseExpr(expr)
		if err != nil {
			return
		}
		promparser.Inspect(e, func(n promparser.Node, _ []promparser.Node) error {
			if vs, ok := n.(*promparser.VectorSelector); ok {
				if m, _, ok := series(exported, selectorName(vs)); ok {
					used[m.at] = true
				}
			}
			return nil
		})
	}
	for _, g := range parseRules(t).Groups {
		for _, r := range g.Rules {
			check("rule "+r.Alert+r.Record, r.Expr)
		}
	}
	for where, e := range dashboardExprs(t) {
		check(where, e)
	}
	// The dashboard shows every imagepin metric but the receiver's
	// counters of hints dropped and rechecks; a metric added to the code
	// and to no panel is worth a look.
	for name, m := range exported {
		if !used[m.at] && name != "imagepin_receiver_hints_dropped_total" && name != "imagepin_receiver_rechecks_total" {
			t.Logf("metric %s (%s) is in no rule and no panel", name, m.at)
		}
	}
}

// TestCheckExprCatchesMistakes makes sure the metric check fails where it
// should.
func TestCheckExprCatchesMistakes(t *testing.T) {
	exported := map[string]metric{
		"imagepin_x_total":          {kind: "Counter", labels: []string{"reason"}, at: "a"},
		"imagepin_latency_seconds":  {kind: "Histogram", labels: []string{"decision"}, at: "b"},
		"imagepin_drifted_whatever": {kind: "Gauge", at: "c"},
	}
	for expr, wantProblem := range map[string]bool{
		`sum by (reason) (rate(imagepin_x_total[5m]))`:                                                   false,
		`histogram_quantile(0.9, sum by (le, decision) (rate(imagepin_latency_seconds_bucket[5m])))`:     false,
		`rate(imagepin_latency_seconds_sum[5m]) / rate(imagepin_latency_seconds_count[5m])`:              false,
		`sum by (pod) (imagepin_drifted_whatever)`:                                                       false,
		`rate(imagepin_y_total[5m])`:                                                                     true,
		`rate(imagepin_x_total{reasons="Pin"}[5m])`:                                                      true,
		`sum by (reasons) (rate(imagepin_x_total[5m]))`:                                                  true,
		`imagepin_latency_seconds`:                                                                       true,
		`imagepin_x_total_bucket`:                                                                        true,
		`histogram_quantile(0.9, sum by (le, reason) (rate(imagepin_latency_seconds_bucket[5m])))`:       true,
		`{__name__="imagepin_nope"}`:                                                                     true,
		`max by (namespace, imagepin) (imagepin_drifted_whatever{reason="Unresolvable"}) > 0`:            true,
		`sum by (reason) (rate(imagepin_x_total[5m])) / sum by (reason) (rate(imagepin_y_total[5m]))`:    true,
		`sum by (le) (rate(imagepin_latency_seconds_count[5m]))`:                                         true,
		`sum(increase(imagepin_x_total{reason="Pin"}[10m])) > 0`:                                         false,
		`sum by (instance) (rate(imagepin_x_total[5m])) > 0 and on () absent(imagepin_drifted_whatever)`: false,
	} {
		if got := len(checkExpr(exported, expr)) > 0; got != wantProblem {
			t.Errorf("%s: problem found %v, want %v (%v)", expr, got, wantProblem, checkExpr(exported, expr))
		}
	}
}
