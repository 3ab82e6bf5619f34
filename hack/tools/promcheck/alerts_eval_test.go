package promcheck

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
)

// The alerts are evaluated here as Prometheus evaluates them, once a
// minute, against series in promqltest's load notation (one sample a
// minute from time 0: "1x30" is 31 samples of 1, "0+1x30" counts up from 0,
// "_x5" is 6 missing samples). Two replicas are told apart by pod.

// firing is one alert firing at some minute.
type firing struct {
	value       float64
	annotations map[string]string
}

// evalAlert evaluates the alert named name of rules.yaml each minute from 0
// to minutes over the series of load, and returns, per minute, the alerts
// firing then, keyed by their labels but alertname and severity.
func evalAlert(t *testing.T, name, load string, minutes int) []map[string]firing {
	t.Helper()
	var rule *rulefmt.Rule
	for _, g := range parseRules(t).Groups {
		for i := range g.Rules {
			if g.Rules[i].Alert == name {
				rule = &g.Rules[i]
			}
		}
	}
	if rule == nil {
		t.Fatalf("no alert %s in %s", name, rulesPath)
	}
	expr, err := promql().ParseExpr(rule.Expr)
	if err != nil {
		t.Fatal(err)
	}
	storage := promqltest.LoadedStorage(t, "load 1m\n"+strings.Trim(load, "\n"))
	engine := promqltest.NewTestEngine(t, false, 0, 1_000_000)
	query := rules.EngineQueryFunc(engine, storage)
	alert := rules.NewAlertingRule(name, expr, time.Duration(rule.For), time.Duration(rule.KeepFiringFor),
		labels.FromMap(rule.Labels), labels.FromMap(rule.Annotations), labels.EmptyLabels(), "", true,
		slog.New(slog.DiscardHandler))

	out := make([]map[string]firing, minutes+1)
	for m := 0; m <= minutes; m++ {
		if _, err := alert.Eval(context.Background(), 0, time.Unix(0, 0).Add(time.Duration(m)*time.Minute), query, nil, 0); err != nil {
			t.Fatalf("%s at %dm: %v", name, m, err)
		}
		out[m] = map[string]firing{}
		for _, a := range alert.ActiveAlerts() {
			if a.State != rules.StateFiring {
				continue
			}
			key := labels.NewBuilder(a.Labels).Del(labels.AlertName, "severity").Labels().String()
			out[m][key] = firing{value: a.Value, annotations: a.Annotations.Map()}
		}
	}
	return out
}

// firstFired returns the first minute the alert with labels key fired, -1
// if never.
func firstFired(timeline []map[string]firing, key string) int {
	for m, f := range timeline {
		if _, ok := f[key]; ok {
			return m
		}
	}
	return -1
}

// everFired lists the label sets that fired at any minute.
func everFired(timeline []map[string]firing) []string {
	seen := map[string]bool{}
	for _, f := range timeline {
		for k := range f {
			seen[k] = true
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

func wantFired(t *testing.T, timeline []map[string]firing, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := everFired(timeline); !slices.Equal(got, want) {
		t.Errorf("fired for %q, want %q", got, want)
	}
}

func TestDriftPersistsFiresAfter30MinutesOfRealDrift(t *testing.T) {
	timeline := evalAlert(t, "ImagePinDriftPersists", `
  imagepin_drifted_containers{namespace="team",imagepin="web",reason="TagMoved",pod="a"} 2x60
  imagepin_drifted_containers{namespace="team",imagepin="web",reason="TagMoved",pod="b"} _x20 2x40
  imagepin_drifted_containers{namespace="team",imagepin="web",reason="Unpinned",pod="a"} 5x60
  imagepin_drifted_containers{namespace="team",imagepin="web",reason="Unresolvable",pod="a"} 1x60
  imagepin_drifted_containers{namespace="team",imagepin="rollout",reason="RolloutPending",pod="a"} 1x20 0x40
  imagepin_drifted_containers{imagepin="ClusterImagePin/platform",reason="MixedReplicas",pod="a"} 1x60
`, 60)
	web := `{imagepin="web", namespace="team", reason="TagMoved"}`
	cluster := `{imagepin="ClusterImagePin/platform", reason="MixedReplicas"}`
	// Unpinned is no alert, Unresolvable has its own, a rollout of 20
	// minutes is no alert.
	wantFired(t, timeline, web, cluster)
	if m := firstFired(timeline, web); m != 30 {
		t.Errorf("fired at %dm, want 30m", m)
	}
	// Two replicas reporting the same ImagePin count it once.
	f := timeline[60][web]
	if f.value != 2 {
		t.Errorf("value %v, want 2", f.value)
	}
	if want := "ImagePin team/web: TagMoved drift for more than 30 minutes"; f.annotations["summary"] != want {
		t.Errorf("summary %q, want %q", f.annotations["summary"], want)
	}
	if !strings.HasPrefix(f.annotations["description"], "2 container(s) selected by ImagePin team/web ") {
		t.Errorf("description %q", f.annotations["description"])
	}
	if !strings.Contains(f.annotations["runbook"], "--reason TagMoved") {
		t.Errorf("runbook %q", f.annotations["runbook"])
	}
	if want := "ClusterImagePin/platform: MixedReplicas drift for more than 30 minutes"; timeline[60][cluster].annotations["summary"] != want {
		t.Errorf("summary %q, want %q", timeline[60][cluster].annotations["summary"], want)
	}
}

func TestRegistryResolutionFailingFiresAfter15Minutes(t *testing.T) {
	timeline := evalAlert(t, "ImagePinRegistryResolutionFailing", `
  imagepin_drifted_containers{namespace="team",imagepin="web",reason="Unresolvable",pod="a"} 3x30
  imagepin_drifted_containers{namespace="team",imagepin="web",reason="TagMoved",pod="a"} 1x30
  imagepin_drifted_containers{namespace="team",imagepin="blip",reason="Unresolvable",pod="a"} 1x10 0x20
`, 30)
	web := `{imagepin="web", namespace="team"}`
	wantFired(t, timeline, web)
	if m := firstFired(timeline, web); m != 15 {
		t.Errorf("fired at %dm, want 15m", m)
	}
	if want := "ImagePin team/web cannot resolve its tags"; timeline[30][web].annotations["summary"] != want {
		t.Errorf("summary %q, want %q", timeline[30][web].annotations["summary"], want)
	}
}

func TestConflictFiresAfter5Minutes(t *testing.T) {
	timeline := evalAlert(t, "ImagePinConflict", `
  imagepin_conflict_workloads{namespace="team",imagepin="web",pod="a"} 0x5 2x20
  imagepin_conflict_workloads{namespace="team",imagepin="calm",pod="a"} 0x25
  imagepin_conflict_workloads{namespace="",imagepin="ClusterImagePin/platform",pod="a"} 1x3 0x22
`, 25)
	web := `{imagepin="web", namespace="team"}`
	wantFired(t, timeline, web)
	if m := firstFired(timeline, web); m != 11 {
		t.Errorf("fired at %dm, want 11m (5m after the conflict at 6m)", m)
	}
	for m, firing := range timeline {
		if len(firing) > 1 {
			t.Errorf("at %dm %d alerts fire, want only %s (a 3-minute conflict is below for: 5m)", m, len(firing), web)
		}
	}
}

func TestWebhookRefusingFiresOnARefusalAndClears(t *testing.T) {
	timeline := evalAlert(t, "ImagePinWebhookRefusing", `
  imagepin_admission_decisions_total{decision="refused",pod="a"} 0x10 1x30
  imagepin_admission_decisions_total{decision="refused",pod="b"} 0x40
  imagepin_admission_decisions_total{decision="pinned",pod="a"} 0+5x40
  imagepin_admission_decisions_total{decision="warned",pod="a"} 0+1x40
`, 40)
	wantFired(t, timeline, "{}")
	if m := firstFired(timeline, "{}"); m < 11 || m > 13 {
		t.Errorf("fired at %dm, want within 3 minutes of the refusal at 11m", m)
	}
	if len(timeline[30]) != 0 {
		t.Error("still firing 19 minutes after the only refusal")
	}
}

func TestRegistryRateLimitedFiresAfter10MinutesOf429s(t *testing.T) {
	timeline := evalAlert(t, "ImagePinRegistryRateLimited", `
  imagepin_registry_requests_total{registry="registry-1.docker.io",method="HEAD",code="429",pod="a"} 0x10 0+1x30
  imagepin_registry_requests_total{registry="registry-1.docker.io",method="HEAD",code="200",pod="a"} 0+10x40
  imagepin_registry_requests_total{registry="ghcr.io",method="HEAD",code="200",pod="a"} 0+10x40
`, 40)
	hub := `{registry="registry-1.docker.io"}`
	wantFired(t, timeline, hub)
	// The 429s start at 12m; the alert waits 10 minutes more.
	if m := firstFired(timeline, hub); m < 21 || m > 23 {
		t.Errorf("fired at %dm, want about 22m", m)
	}
}

func TestReceiverRefusingFiresOn401And400Only(t *testing.T) {
	timeline := evalAlert(t, "ImagePinReceiverRefusing", `
  imagepin_receiver_requests_total{endpoint="harbor",code="401",pod="a"} 0x5 1+1x30
  imagepin_receiver_requests_total{endpoint="harbor",code="202",pod="a"} 0+3x36
  imagepin_receiver_requests_total{endpoint="distribution",code="503",pod="b"} 0+1x36
  imagepin_receiver_requests_total{endpoint="distribution",code="429",pod="a"} 0+1x36
`, 36)
	harbor := `{code="401", endpoint="harbor"}`
	wantFired(t, timeline, harbor)
	if m := firstFired(timeline, harbor); m < 10 || m > 12 {
		t.Errorf("fired at %dm, want about 11m", m)
	}
	if want := "imagepin refuses push notifications on endpoint harbor (401)"; timeline[36][harbor].annotations["summary"] != want {
		t.Errorf("summary %q, want %q", timeline[36][harbor].annotations["summary"], want)
	}
}
