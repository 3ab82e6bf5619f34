package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/imagepin/imagepin/internal/testenv"
)

// sourceState names what imagepin is built from: the commit, and the
// files that differ from it (the working tree is built as it is).
func sourceState(ctx context.Context) string {
	head, err := exec.CommandContext(ctx, "git", "-C", testenv.RepoRoot(), "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown (no git)"
	}
	status, err := exec.CommandContext(ctx, "git", "-C", testenv.RepoRoot(), "status", "--porcelain", "--untracked-files=no").Output()
	if err != nil {
		return strings.TrimSpace(string(head))
	}
	var changed []string
	for _, line := range strings.Split(strings.TrimSpace(string(status)), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			changed = append(changed, f[len(f)-1])
		}
	}
	if len(changed) == 0 {
		return strings.TrimSpace(string(head))
	}
	return fmt.Sprintf("%s with uncommitted changes to %s", strings.TrimSpace(string(head)), strings.Join(changed, ", "))
}

// managerOpts say how to run one manager process.
type managerOpts struct {
	name string
	// webhook, when set, serves the admission webhook there.
	webhook *testenv.WebhookServing
	// extra flags, from --manager-flag.
	extra []string
}

// managerProc is one running imagepin manager; Started is taken just
// before its process started: convergence counts from there.
type managerProc struct{ *testenv.ManagerProcess }

// startManager runs the built imagepin as its own process against the
// control plane, trusting the proxy's CA, and waits until /readyz answers.
func (b *bench) startManager(ctx context.Context, o managerOpts) (*managerProc, error) {
	args := []string{
		"--kubeconfig=" + b.kubeconfig,
		"--registry-ca-file=" + b.proxy.CAFile,
		// Nothing here has a cloud identity; asking for one only waits.
		"--cloud-keychains=false",
	}
	env := []string{"ENABLE_WEBHOOKS=false"}
	if o.webhook != nil {
		args = append(args, "--webhook-cert-dir="+o.webhook.CertDir, fmt.Sprintf("--webhook-port=%d", o.webhook.Port))
		env = []string{"ENABLE_WEBHOOKS=true"}
	}
	p, err := testenv.StartManagerProcess(ctx, o.name, b.bin, filepath.Join(b.dir, o.name+".log"), append(args, o.extra...), env)
	if err != nil {
		return nil, err
	}
	b.defers = append(b.defers, p.Stop)
	return &managerProc{p}, nil
}

// sample is one metric series: its labels as written, and its value.
type sample struct {
	labels string
	value  float64
}

// metrics is a parsed Prometheus text exposition: series by metric name.
type metrics map[string][]sample

// scrape reads the manager's /metrics.
func (m *managerProc) scrape(ctx context.Context) (metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.MetricsURL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", m.MetricsURL, resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text format, enough for the series a
// manager exposes: `name{labels} value` or `name value`.
func parseMetrics(r io.Reader) (metrics, error) {
	out := metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var nameLabels, rest string
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			nameLabels, rest = line[:j+1], strings.TrimSpace(line[j+1:])
		} else {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			nameLabels, rest = f[0], f[1]
		}
		valStr := strings.Fields(rest)
		if len(valStr) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(valStr[0], 64)
		if err != nil {
			continue
		}
		name, labels := nameLabels, ""
		if i := strings.IndexByte(nameLabels, '{'); i >= 0 {
			name, labels = nameLabels[:i], nameLabels[i+1:len(nameLabels)-1]
		}
		out[name] = append(out[name], sample{labels: labels, value: v})
	}
	return out, sc.Err()
}

// sum adds the series of name whose labels contain every one of match
// (each `key="value"`).
func (ms metrics) sum(name string, match ...string) float64 {
	var total float64
	for _, s := range ms[name] {
		ok := true
		for _, m := range match {
			if !strings.Contains(s.labels, m) {
				ok = false
				break
			}
		}
		if ok {
			total += s.value
		}
	}
	return total
}

// has reports whether the exposition holds a series of name.
func (ms metrics) has(name string) bool { return len(ms[name]) > 0 }
