package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/imagepin/imagepin/internal/testenv"
)

const secCLI = "6 CLI"

// cliRuns is how many times `imagepin pin` runs; the median wall time is
// reported.
const cliRuns = 3

// cli times `imagepin pin -f` on documents naming the benchmark's tags and
// counts the registry requests each run sends; then, with --cli-large-documents,
// on that many documents naming --cli-large-tags tags of their own (pushed
// first). No manager runs meanwhile, so the proxy sees only the CLI.
func (b *bench) cli(ctx context.Context) error {
	if err := b.cliRun(ctx, "cli", b.o.cliDocuments, b.tags, 60); err != nil {
		return err
	}
	if b.o.cliLargeDocuments == 0 {
		return nil
	}
	var tags []string
	for i := range b.o.cliLargeTags {
		tags = append(tags, fmt.Sprintf("bench/large%02d:v%d", i%b.o.repos, i/b.o.repos+1))
	}
	logf("cli: pushing %d tags for %d documents", len(tags), b.o.cliLargeDocuments)
	if _, err := b.push.pushAll(ctx, tags); err != nil {
		return err
	}
	return b.cliRun(ctx, "cli-large", b.o.cliLargeDocuments, tags, 100)
}

// cliRun runs `imagepin pin` cliRuns times on docs Deployments naming tags
// in turn and reports its median wall time, its largest peak RSS (goal
// goalMiB) and the requests of the run that sent the most.
func (b *bench) cliRun(ctx context.Context, name string, docs int, tags []string, goalMiB float64) error {
	dir := filepath.Join(b.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), testenv.DockerConfigJSON(b.proxy.Host, b.reg.User, b.reg.Password), 0o600); err != nil {
		return err
	}
	var in strings.Builder
	for i := range docs {
		fmt.Fprintf(&in, "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-%d # service %d\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: %s\n",
			i, i, b.image(tags[i%len(tags)]))
	}
	file := filepath.Join(dir, "deployments.yaml")
	if err := os.WriteFile(file, []byte(in.String()), 0o600); err != nil {
		return err
	}

	var walls []time.Duration
	var counts []regCounts
	var peak int64 // KiB
	for run := range cliRuns {
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, b.bin, "pin", "-f", file, "--registry-ca-file", b.proxy.CAFile)
		// Credentials come from DOCKER_CONFIG only; HOME points away from
		// the user's own docker config.
		cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+dir, "HOME="+dir)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		start := time.Now()
		err := cmd.Run()
		end := time.Now()
		if err != nil {
			return fmt.Errorf("imagepin pin (%s, run %d): %w\n%s", name, run+1, err, stderr.String())
		}
		if n := strings.Count(stdout.String(), "@sha256:"); n != docs {
			return fmt.Errorf("imagepin pin pinned %d images, want %d", n, docs)
		}
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			peak = max(peak, ru.Maxrss)
		}
		walls = append(walls, end.Sub(start))
		counts = append(counts, count(b.proxy.between(start, end.Add(time.Millisecond))))
		logf("%s: run %d: %s; %s", name, run+1, end.Sub(start).Round(time.Millisecond), counts[run])
	}
	runs := durations(walls)
	sort.Slice(walls, func(i, j int) bool { return walls[i] < walls[j] })
	wall := walls[len(walls)/2]
	c := counts[0]
	for _, x := range counts[1:] {
		if x.Total > c.Total {
			c = x
		}
	}
	n := float64(len(tags))
	const qps, burst = 50, 50 // imagepin pin's defaults
	what := fmt.Sprintf("imagepin pin on %d documents naming %d tags", docs, len(tags))
	b.rep.limit(secCLI, "wall time of "+what+fmt.Sprintf(" (median of %d)", cliRuns),
		wall.Seconds(), "s", budgetFloor(c.Total, qps, burst),
		"runs: "+runs)
	mib := float64(peak) / 1024
	b.rep.goal(secCLI, "peak RSS of "+what, mib, "MiB", fmt.Sprintf("≤ %g MiB", goalMiB), mib <= goalMiB, "the largest of the runs")
	b.rep.goal(secCLI, fmt.Sprintf("manifest HEADs per distinct tag (%d documents)", docs), float64(c.ManifestHEADs)/n, "/tag", "1.0", c.ManifestHEADs == len(tags), "")
	b.rep.goal(secCLI, fmt.Sprintf("manifest GETs per distinct tag (%d documents)", docs), float64(c.ManifestGETs)/n, "/tag", "0", c.ManifestGETs == 0, "")
	b.rep.goal(secCLI, fmt.Sprintf("registry requests, all kinds (%d documents)", docs), float64(c.Total), "", fmt.Sprintf("≤ %d + tokens", len(tags)+1), c.Total-c.Tokens <= len(tags)+1,
		fmt.Sprintf("%d pings, %d tokens", c.Pings, c.Tokens))
	b.rep.Methods[name] = fmt.Sprintf("the built binary, `imagepin pin -f <file> --registry-ca-file <proxy CA>` on %d Deployments, DOCKER_CONFIG holding the credentials, no manager running; wall time from exec to exit; peak RSS from the kernel's accounting of the process (rusage maxrss); requests counted at the proxy during the run (the run with most: %s)", docs, c)
	return nil
}

func durations(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = fmt.Sprintf("%.2f s", d.Seconds())
	}
	return strings.Join(s, ", ")
}
