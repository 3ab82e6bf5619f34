package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

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

// buildImagepin builds the imagepin binary from the repository into dir.
func buildImagepin(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "imagepin")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, ".")
	cmd.Dir = testenv.RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build imagepin: %w\n%s", err, b)
	}
	return out, nil
}

// managerOpts say how to run one manager process.
type managerOpts struct {
	name string
	// webhook, when set, serves the admission webhook from certDir on port.
	webhook *webhookServing
	// extra flags, from --manager-flag.
	extra []string
}

// webhookServing is where a manager serves its webhook.
type webhookServing struct {
	certDir string
	caPEM   []byte
	port    int
}

// managerProc is one running imagepin manager.
type managerProc struct {
	name       string
	metricsURL string
	logFile    string
	// started is taken just before the process is started: convergence
	// counts from here.
	started time.Time

	cmd  *exec.Cmd
	done chan struct{}
	once sync.Once
}

// startManager runs the built imagepin as its own process against the
// control plane, trusting the proxy's CA, and waits until /readyz answers.
func (b *bench) startManager(ctx context.Context, o managerOpts) (*managerProc, error) {
	metricsPort, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	probePort, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	args := []string{
		"--kubeconfig=" + b.kubeconfig,
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metricsPort),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probePort),
		"--registry-ca-file=" + b.proxy.CAFile,
		// Nothing here has a cloud identity; asking for one only waits.
		"--cloud-keychains=false",
	}
	env := os.Environ()
	if o.webhook != nil {
		args = append(args, "--webhook-cert-dir="+o.webhook.certDir, fmt.Sprintf("--webhook-port=%d", o.webhook.port))
		env = append(env, "ENABLE_WEBHOOKS=true")
	} else {
		env = append(env, "ENABLE_WEBHOOKS=false")
	}
	args = append(args, o.extra...)
	m := &managerProc{
		name:       o.name,
		metricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort),
		logFile:    filepath.Join(b.dir, o.name+".log"),
		done:       make(chan struct{}),
	}
	log, err := os.OpenFile(m.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	m.cmd = exec.Command(b.bin, args...)
	m.cmd.Env = env
	m.cmd.Stdout, m.cmd.Stderr = log, log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	m.started = time.Now()
	if err := m.cmd.Start(); err != nil {
		_ = log.Close()
		return nil, fmt.Errorf("start the imagepin manager: %w", err)
	}
	go func() { _ = m.cmd.Wait(); _ = log.Close(); close(m.done) }()
	b.defers = append(b.defers, m.stop)

	ready := fmt.Sprintf("http://127.0.0.1:%d/readyz", probePort)
	err = poll(ctx, 50*time.Millisecond, 60*time.Second, func() (bool, error) {
		select {
		case <-m.done:
			return false, fmt.Errorf("the imagepin manager %s exited; see %s", o.name, m.logFile)
		default:
		}
		return httpOK(ctx, ready), nil
	})
	if err != nil {
		m.stop()
		return nil, err
	}
	return m, nil
}

// stop stops the manager with SIGTERM, as a rollout does, and waits.
func (m *managerProc) stop() {
	m.once.Do(func() {
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(15 * time.Second):
			_ = m.cmd.Process.Kill()
			<-m.done
		}
	})
}

func httpOK(ctx context.Context, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.metricsURL, nil)
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
		return nil, fmt.Errorf("GET %s: %s", m.metricsURL, resp.Status)
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
