package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// figure is one row of the results.
type figure struct {
	// Section is the benchmark the figure belongs to.
	Section string `json:"section"`
	Name    string `json:"name"`
	// Value is the figure; Display is how the table shows it.
	Value   float64 `json:"value"`
	Unit    string  `json:"unit"`
	Display string  `json:"display"`
	// Goal is the goal or physical limit, as text; empty when the figure
	// is information only.
	Goal string `json:"goal,omitempty"`
	// Met is whether the goal was met; null for information only.
	Met  *bool  `json:"met"`
	Note string `json:"note,omitempty"`
}

// machine describes where the figures were taken.
type machine struct {
	CPU       string `json:"cpu"`
	Cores     int    `json:"cores"`
	GoVersion string `json:"goVersion"`
	OS        string `json:"os"`
	Date      string `json:"date"`
	// LoadStart and LoadEnd are /proc/loadavg when the run began and
	// ended: the machine may be shared.
	LoadStart string `json:"loadStart"`
	LoadEnd   string `json:"loadEnd"`
	// LoadByBenchmark is /proc/loadavg as each benchmark began.
	LoadByBenchmark map[string]string `json:"loadByBenchmark"`
}

// report is everything the benchmark writes.
type report struct {
	Machine    machine           `json:"machine"`
	Parameters map[string]any    `json:"parameters"`
	Figures    []figure          `json:"figures"`
	Methods    map[string]string `json:"methods"`
	// Errors are failures that kept a figure from being taken.
	Errors []string `json:"errors,omitempty"`
	// Elapsed is the run's wall time.
	Elapsed string `json:"elapsed"`
}

func (r *report) add(f figure) {
	if f.Display == "" {
		f.Display = formatValue(f.Value, f.Unit)
	}
	r.Figures = append(r.Figures, f)
}

// info adds a figure without a goal.
func (r *report) info(section, name string, value float64, unit, note string) {
	r.add(figure{Section: section, Name: name, Value: value, Unit: unit, Note: note})
}

// limit adds a figure beside a physical limit it cannot beat, without a
// goal of its own.
func (r *report) limit(section, name string, value float64, unit, limit, note string) {
	r.add(figure{Section: section, Name: name, Value: value, Unit: unit, Goal: limit, Note: note})
}

// goal adds a figure with a goal, and whether it is met.
func (r *report) goal(section, name string, value float64, unit, goal string, met bool, note string) {
	r.add(figure{Section: section, Name: name, Value: value, Unit: unit, Goal: goal, Met: &met, Note: note})
}

// failed records a figure that could not be taken.
func (r *report) failed(section, name, goal string, err error) {
	met := false
	r.add(figure{Section: section, Name: name, Display: "not measured", Goal: goal, Met: &met, Note: err.Error()})
	r.Errors = append(r.Errors, fmt.Sprintf("%s: %s: %v", section, name, err))
}

func formatValue(v float64, unit string) string {
	var s string
	switch {
	case strings.HasPrefix(unit, "/"):
		return fmt.Sprintf("%.2f %s", v, unit)
	case v == float64(int64(v)) && (unit == "" || unit == "requests" || unit == "count" || unit == "workloads"):
		s = fmt.Sprintf("%d", int64(v))
	case v >= 100:
		s = fmt.Sprintf("%.0f", v)
	case v >= 10:
		s = fmt.Sprintf("%.1f", v)
	default:
		s = fmt.Sprintf("%.3g", v)
	}
	if unit != "" && unit != "count" {
		s += " " + unit
	}
	return s
}

func describeMachine() machine {
	m := machine{
		Cores:     runtime.NumCPU(),
		GoVersion: runtime.Version(),
		OS:        runtime.GOOS + "/" + runtime.GOARCH,
		Date:      time.Now().UTC().Format(time.RFC3339),
		CPU:       "unknown",
		LoadStart: loadAverage(),

		LoadByBenchmark: map[string]string{},
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer func() { _ = f.Close() }()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// loadAverage returns the 1, 5 and 15 minute load averages.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// markdown renders the report as the table the README quotes.
func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## imagepin cluster benchmarks\n\n")
	fmt.Fprintf(&b, "Machine: %s, %d cores, %s, %s; %s (run took %s; load average %s at the start, %s at the end).\n\n",
		r.Machine.CPU, r.Machine.Cores, r.Machine.GoVersion, r.Machine.OS, r.Machine.Date, r.Elapsed, r.Machine.LoadStart, r.Machine.LoadEnd)
	if len(r.Machine.LoadByBenchmark) > 0 {
		var loads []string
		for _, k := range []string{"cluster", "admission", "cli", "writes"} {
			if v, ok := r.Machine.LoadByBenchmark[k]; ok {
				loads = append(loads, k+" "+v)
			}
		}
		fmt.Fprintf(&b, "Load average as each benchmark began (the machine is shared): %s.\n\n", strings.Join(loads, "; "))
	}
	var params []string
	for _, k := range []string{"deployments", "namespaces", "tags", "repositories", "interval", "followInterval", "admissionSamples", "cliDocuments"} {
		if v, ok := r.Parameters[k]; ok {
			params = append(params, fmt.Sprintf("%s=%v", k, v))
		}
	}
	fmt.Fprintf(&b, "Parameters: %s.\n\n", strings.Join(params, ", "))
	if src, ok := r.Parameters["source"]; ok {
		fmt.Fprintf(&b, "imagepin built from %v.\n\n", src)
	}
	b.WriteString("| figure | value | goal / limit | met? |\n| --- | --- | --- | --- |\n")
	for _, f := range r.sorted() {
		met := "—"
		if f.Met != nil {
			met = "yes"
			if !*f.Met {
				met = "**no**"
			}
		}
		goal := f.Goal
		if goal == "" {
			goal = "—"
		}
		name := f.Section + ": " + f.Name
		if f.Note != "" {
			name += " (" + f.Note + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", escape(name), escape(f.Display), escape(goal), met)
	}
	if len(r.Errors) > 0 {
		b.WriteString("\nFigures not taken:\n\n")
		for _, e := range r.Errors {
			fmt.Fprintf(&b, "- %s\n", e)
		}
	}
	b.WriteString("\nMethods:\n\n")
	for _, k := range []string{"layout", "registry", "convergence", "steady", "detection", "memory", "admission", "cli", "writes"} {
		if v, ok := r.Methods[k]; ok {
			fmt.Fprintf(&b, "- **%s**: %s\n", k, v)
		}
	}
	return b.String()
}

// sorted returns the figures by section, in the order each section added
// them.
func (r *report) sorted() []figure {
	out := append([]figure(nil), r.Figures...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Section < out[j].Section })
	return out
}

func escape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// write writes <out>.md and <out>.json, creating the directory.
func (r *report) write(out string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(out+".md", []byte(r.markdown()), 0o644); err != nil {
		return err
	}
	sorted := *r
	sorted.Figures = r.sorted()
	js, err := json.MarshalIndent(&sorted, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(out+".json", append(js, '\n'), 0o644)
}
