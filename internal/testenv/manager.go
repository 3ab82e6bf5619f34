package testenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/yaml"
)

// BuildImagepin builds the imagepin binary from the repository into dir
// and returns its path, for tests and tools that run the manager as a
// process.
func BuildImagepin(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "imagepin")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, ".")
	cmd.Dir = RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build imagepin: %w\n%s", err, b)
	}
	return out, nil
}

// WebhookServing is where a manager process serves its admission webhook:
// a certificate directory (tls.crt, tls.key, and the ca.crt that signed
// them) and a port on 127.0.0.1.
type WebhookServing struct {
	CertDir string
	CAPEM   []byte
	Port    int
}

// NewWebhookServing writes a serving certificate for 127.0.0.1 into dir,
// signed by a CA named caName, and picks a free port.
func NewWebhookServing(dir, caName string) (*WebhookServing, error) {
	caPEM, certPEM, keyPEM, err := MakeCerts(caName)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for name, data := range map[string][]byte{"ca.crt": caPEM, "tls.crt": certPEM, "tls.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	return &WebhookServing{CertDir: dir, CAPEM: caPEM, Port: port}, nil
}

// Configuration returns config/webhook's MutatingWebhookConfiguration,
// named name, pointed at this serving address with its CA.
func (w *WebhookServing) Configuration(name string) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	raw, err := os.ReadFile(filepath.Join(RepoRoot(), "config", "webhook", "manifests.yaml"))
	if err != nil {
		return nil, err
	}
	var cfg admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict([]byte(strings.TrimPrefix(string(raw), "---\n")), &cfg); err != nil {
		return nil, fmt.Errorf("config/webhook/manifests.yaml: %w", err)
	}
	cfg.Name = name
	for i := range cfg.Webhooks {
		path := "/mutate-imagepin"
		if svc := cfg.Webhooks[i].ClientConfig.Service; svc != nil && svc.Path != nil {
			path = *svc.Path
		}
		url := fmt.Sprintf("https://127.0.0.1:%d%s", w.Port, path)
		cfg.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: w.CAPEM}
	}
	return &cfg, nil
}

// ManagerProcess is one imagepin manager running as its own process.
type ManagerProcess struct {
	Name string
	// MetricsURL is its Prometheus endpoint.
	MetricsURL string
	// LogFile is where its output goes.
	LogFile string
	// Started is taken just before the process started.
	Started time.Time

	cmd  *exec.Cmd
	done chan struct{}
	once sync.Once
}

// StartManagerProcess runs bin with args plus the metrics and probe
// addresses it picks, env added to this process's environment, its output
// appended to logFile, and waits until /readyz answers.
func StartManagerProcess(ctx context.Context, name, bin, logFile string, args, env []string) (*ManagerProcess, error) {
	metricsPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	probePort, err := FreePort()
	if err != nil {
		return nil, err
	}
	args = append([]string{
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metricsPort),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probePort),
	}, args...)
	m := &ManagerProcess{
		Name:       name,
		MetricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort),
		LogFile:    logFile,
		done:       make(chan struct{}),
	}
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	m.cmd = exec.Command(bin, args...)
	m.cmd.Env = append(os.Environ(), env...)
	m.cmd.Stdout, m.cmd.Stderr = log, log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	m.Started = time.Now()
	if err := m.cmd.Start(); err != nil {
		_ = log.Close()
		return nil, fmt.Errorf("start the imagepin manager %s: %w", name, err)
	}
	go func() { _ = m.cmd.Wait(); _ = log.Close(); close(m.done) }()

	ready := fmt.Sprintf("http://127.0.0.1:%d/readyz", probePort)
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		if !m.Running() {
			return false, fmt.Errorf("the imagepin manager %s exited; see %s", name, logFile)
		}
		return httpOK(ctx, ready), nil
	})
	if err != nil {
		m.Stop()
		return nil, err
	}
	return m, nil
}

// Running reports whether the process is still running.
func (m *ManagerProcess) Running() bool {
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// Stop stops the manager as a rollout does (SIGTERM), waiting for it.
func (m *ManagerProcess) Stop() {
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

// Kill kills the manager without warning (SIGKILL), as a node failure does.
func (m *ManagerProcess) Kill() {
	m.once.Do(func() {
		_ = m.cmd.Process.Kill()
		<-m.done
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
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// RunWithManager runs a test binary's tests while mgr runs, then stops mgr
// and returns the tests' exit code, or 1 if mgr failed.
func RunWithManager(m interface{ Run() int }, mgr manager.Manager) int {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	code := m.Run()
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		return 1
	}
	return code
}
