package driftcmd

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

const (
	batchOmitted = "imagepin drift: 2 containers of ImagePin batch/pins are not listed (status is bounded)\n"
	cipOmitted   = "imagepin drift: 3 containers of ClusterImagePin everywhere are not listed (status is bounded)\n"
)

// The table, as an SRE reads it: rows of ImagePins and of the
// ClusterImagePin in one table, sorted, filtered by namespace and reason,
// the ImagePin's row kept where both report a container; and the exit
// code --fail-on gives.
func TestDriftTable(t *testing.T) {
	kc := needCluster(t)
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{{
		name: "all namespaces: a moved tag in shop and split replicas in batch, in one table",
		args: []string{"-A"},
		stdout: `NAMESPACE   WORKLOAD                 CONTAINER      IMAGE                                      TAG NOW               RUNNING                                       DRIFT                   PIN
batch       Deployment/worker        worker         registry.example.com/batch/worker:latest   sha256:d4d4d4d4d4d4   sha256:d4d4d4d4d4d4×2,sha256:e5e5e5e5e5e5×1   MixedReplicas           ImagePin/pins
ops         DaemonSet/agent          proxy          registry.example.com/mesh/proxy:1.2        sha256:070707070707   sha256:070707070707×5                         Unpinned                ClusterImagePin/everywhere
ops         TrainJob/train[Worker]   trainer        registry.example.com/ml/trainer:v3         sha256:292929292929   sha256:181818181818×4                         TagMoved                ClusterImagePin/everywhere
shop        Deployment/web           app            registry.example.com/shop/web:v2           sha256:b2b2b2b2b2b2   sha256:a1a1a1a1a1a1×3                         TagMoved                ImagePin/pins
shop        Deployment/web           init:migrate   registry.example.com/shop/migrate:1        <error>               -                                             Unpinned,Unresolvable   ImagePin/pins
shop        Deployment/web           proxy          registry.example.com/mesh/proxy:1.2        sha256:070707070707   sha256:070707070707×3                         Unpinned                ClusterImagePin/everywhere
`,
		stderr: batchOmitted + cipOmitted,
	}, {
		name: "one namespace: its ImagePin's rows and the ClusterImagePin's rows in it",
		args: []string{"-n", "shop"},
		stdout: `WORKLOAD         CONTAINER      IMAGE                                 TAG NOW               RUNNING                 DRIFT                   PIN
Deployment/web   app            registry.example.com/shop/web:v2      sha256:b2b2b2b2b2b2   sha256:a1a1a1a1a1a1×3   TagMoved                ImagePin/pins
Deployment/web   init:migrate   registry.example.com/shop/migrate:1   <error>               -                       Unpinned,Unresolvable   ImagePin/pins
Deployment/web   proxy          registry.example.com/mesh/proxy:1.2   sha256:070707070707   sha256:070707070707×3   Unpinned                ClusterImagePin/everywhere
`,
	}, {
		name: "a namespace with the ClusterImagePin's rows only, and its omitted count there",
		args: []string{"--namespace=ops"},
		stdout: `WORKLOAD                 CONTAINER   IMAGE                                 TAG NOW               RUNNING                 DRIFT      PIN
DaemonSet/agent          proxy       registry.example.com/mesh/proxy:1.2   sha256:070707070707   sha256:070707070707×5   Unpinned   ClusterImagePin/everywhere
TrainJob/train[Worker]   trainer     registry.example.com/ml/trainer:v3    sha256:292929292929   sha256:181818181818×4   TagMoved   ClusterImagePin/everywhere
`,
		stderr: cipOmitted,
	}, {
		name: "--reason keeps the rows with one of its reasons",
		args: []string{"--all-namespaces", "--reason", "TagMoved,Unresolvable"},
		stdout: `NAMESPACE   WORKLOAD                 CONTAINER      IMAGE                                 TAG NOW               RUNNING                 DRIFT                   PIN
ops         TrainJob/train[Worker]   trainer        registry.example.com/ml/trainer:v3    sha256:292929292929   sha256:181818181818×4   TagMoved                ClusterImagePin/everywhere
shop        Deployment/web           app            registry.example.com/shop/web:v2      sha256:b2b2b2b2b2b2   sha256:a1a1a1a1a1a1×3   TagMoved                ImagePin/pins
shop        Deployment/web           init:migrate   registry.example.com/shop/migrate:1   <error>               -                       Unpinned,Unresolvable   ImagePin/pins
`,
		stderr: batchOmitted + cipOmitted,
	}, {
		name:   "the ClusterImagePin's row of a container its namespace's ImagePin reports is not shown",
		args:   []string{"-n", "shop", "--reason", "RolloutPending"},
		stderr: "No drift found in namespace shop.\n",
	}, {
		name:   "no drift in any namespace",
		args:   []string{"-A", "--reason", "RolloutPending"},
		stderr: batchOmitted + cipOmitted + "No drift found in any namespace.\n",
	}, {
		name:   "a namespace without ImagePins",
		args:   []string{"-n", "quiet"},
		stderr: "No drift found in namespace quiet.\n",
	}, {
		name: "--all lists the containers without drift too",
		args: []string{"-n", "shop", "--all"},
		stdout: `WORKLOAD            CONTAINER      IMAGE                                 TAG NOW               RUNNING                 DRIFT                   PIN
Deployment/web      app            registry.example.com/shop/web:v2      sha256:b2b2b2b2b2b2   sha256:a1a1a1a1a1a1×3   TagMoved                ImagePin/pins
Deployment/web      init:migrate   registry.example.com/shop/migrate:1   <error>               -                       Unpinned,Unresolvable   ImagePin/pins
Deployment/web      proxy          registry.example.com/mesh/proxy:1.2   sha256:070707070707   sha256:070707070707×3   Unpinned                ClusterImagePin/everywhere
StatefulSet/cache   redis          registry.example.com/shop/cache:7     sha256:c3c3c3c3c3c3   sha256:c3c3c3c3c3c3×2   -                       ImagePin/pins
`,
	}, {
		name: "--fail-on matches a listed row: exit 1",
		args: []string{"-n", "shop", "--fail-on", "TagMoved"},
		code: 1,
		stdout: `WORKLOAD         CONTAINER      IMAGE                                 TAG NOW               RUNNING                 DRIFT                   PIN
Deployment/web   app            registry.example.com/shop/web:v2      sha256:b2b2b2b2b2b2   sha256:a1a1a1a1a1a1×3   TagMoved                ImagePin/pins
Deployment/web   init:migrate   registry.example.com/shop/migrate:1   <error>               -                       Unpinned,Unresolvable   ImagePin/pins
Deployment/web   proxy          registry.example.com/mesh/proxy:1.2   sha256:070707070707   sha256:070707070707×3   Unpinned                ClusterImagePin/everywhere
`,
		stderr: "imagepin drift: 1 container with TagMoved (--fail-on)\n",
	}, {
		name: "--fail-on matches nothing in the namespace: exit 0",
		args: []string{"-n", "batch", "--fail-on", "TagMoved,Unresolvable"},
		stdout: `WORKLOAD            CONTAINER   IMAGE                                      TAG NOW               RUNNING                                       DRIFT           PIN
Deployment/worker   worker      registry.example.com/batch/worker:latest   sha256:d4d4d4d4d4d4   sha256:d4d4d4d4d4d4×2,sha256:e5e5e5e5e5e5×1   MixedReplicas   ImagePin/pins
`,
		stderr: batchOmitted,
	}, {
		name: "--fail-on looks at every row, whatever --reason shows",
		args: []string{"-A", "--reason", "Unresolvable", "--fail-on", "MixedReplicas"},
		code: 1,
		stdout: `NAMESPACE   WORKLOAD         CONTAINER      IMAGE                                 TAG NOW   RUNNING   DRIFT                   PIN
shop        Deployment/web   init:migrate   registry.example.com/shop/migrate:1   <error>   -         Unpinned,Unresolvable   ImagePin/pins
`,
		stderr: batchOmitted + cipOmitted + "imagepin drift: 1 container with MixedReplicas (--fail-on)\n",
	}, {
		name:   "--fail-on with nothing listed: exit 0",
		args:   []string{"-n", "quiet", "--fail-on", "TagMoved"},
		stderr: "No drift found in namespace quiet.\n",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := run(t, append(tc.args, "--kubeconfig", kc)...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.code, errs)
			}
			if out != tc.stdout {
				t.Errorf("stdout:\n%s\nwant:\n%s", out, tc.stdout)
			}
			if errs != tc.stderr {
				t.Errorf("stderr:\n%s\nwant:\n%s", errs, tc.stderr)
			}
		})
	}
}

// Bad usage exits 2 with one line on stderr saying what is wrong, and
// reads nothing from the cluster.
func TestDriftUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{name: "unknown reason", args: []string{"--reason", "Bogus"}, want: `--reason: unknown drift reason "Bogus"; valid reasons are Unpinned, TagMoved, MixedReplicas, RolloutPending, Unresolvable`},
		{name: "reasons are case-sensitive", args: []string{"--reason", "TagMoved,tagmoved,mixedreplicas"}, want: `--reason: unknown drift reasons "tagmoved", "mixedreplicas"; valid reasons are Unpinned, TagMoved, MixedReplicas, RolloutPending, Unresolvable`},
		{name: "unknown --fail-on reason", args: []string{"--fail-on", "Drifted"}, want: `--fail-on: unknown drift reason "Drifted"; valid reasons are Unpinned`},
		{name: "empty reason list", args: []string{"--reason", ","}, want: "--reason: no drift reason given; valid reasons are Unpinned"},
		{name: "unknown output format", args: []string{"-o", "xml"}, want: `unknown output format "xml"; valid formats are table, wide, json, yaml`},
		{name: "a namespace and all namespaces", args: []string{"-n", "shop", "-A"}, want: "--namespace and --all-namespaces cannot be used together"},
		{name: "empty namespace", args: []string{"--namespace="}, want: "--namespace needs a namespace name"},
		{name: "an argument", args: []string{"shop"}, want: `unexpected argument "shop"`},
		{name: "unknown flag", args: []string{"--watch"}, want: "flag provided but not defined: -watch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A kubeconfig that names no reachable cluster: usage is
			// checked before the cluster is.
			code, out, errs := run(t, append(tc.args, "--kubeconfig", filepath.Join(t.TempDir(), "missing"))...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			if !strings.HasPrefix(errs, "imagepin drift: ") || !strings.Contains(errs, tc.want) || strings.Count(errs, "\n") != 1 {
				t.Errorf("stderr %q, want one line with %q", errs, tc.want)
			}
		})
	}
}

func TestDriftHelp(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{{name: "-h", args: []string{"-h"}}, {name: "--help", args: []string{"--help"}}} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := run(t, tc.args...)
			if code != 0 || errs != "" {
				t.Errorf("exit %d, stderr %q; want 0 and nothing", code, errs)
			}
			for _, want := range []string{"Usage: imagepin drift", "Examples:", "imagepin drift -A --fail-on", "--kubeconfig PATH", "RolloutPending"} {
				if !strings.Contains(out, want) {
					t.Errorf("usage lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// -o wide has the digests in full, the pinned digest, and the nodes each
// running digest is on; -owide is kubectl's spelling.
func TestDriftWide(t *testing.T) {
	kc := needCluster(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{name: "-o wide", args: []string{"-n", "batch", "--all", "-o", "wide"}},
		{name: "-owide", args: []string{"-n", "batch", "--all", "-owide"}},
		{name: "--output=wide", args: []string{"-n", "batch", "--all", "--output=wide"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := run(t, append(tc.args, "--kubeconfig", kc)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if len(lines) != 3 {
				t.Fatalf("%d lines, want a header and 2 rows:\n%s", len(lines), out)
			}
			if got := strings.Fields(lines[0]); strings.Join(got, " ") != "WORKLOAD CONTAINER IMAGE TAG NOW RUNNING DRIFT PIN PINNED NODES" {
				t.Errorf("header %q", lines[0])
			}
			want := map[string][]string{
				"volume:models": {string(models), string(models) + "×3", "ImagePin/pins", "sha256:f6f6f6f6f6f6×3 on node-a,node-b"},
				"worker": {string(worker), string(worker) + "×2," + string(stale) + "×1", "MixedReplicas",
					"sha256:d4d4d4d4d4d4×2 on node-a; sha256:e5e5e5e5e5e5×1 on node-b"},
			}
			for _, line := range lines[1:] {
				container := strings.Fields(line)[1]
				for _, s := range want[container] {
					if !strings.Contains(line, s) {
						t.Errorf("row of %s lacks %q:\n%s", container, s, line)
					}
				}
				// TAG NOW and PINNED are the full digest, twice.
				if container == "worker" && strings.Count(line, string(worker)+" ") != 2 {
					t.Errorf("row of worker has not the full digest in TAG NOW and PINNED:\n%s", line)
				}
				delete(want, container)
			}
			if len(want) > 0 {
				t.Errorf("rows missing: %v\n%s", want, out)
			}
		})
	}
}

// jsonItem is the -o json and -o yaml schema, field by field: decoding
// refuses any other field.
type jsonItem struct {
	Namespace    string `json:"namespace"`
	Kind         string `json:"kind"`
	Name         string `json:"name"`
	Template     string `json:"template"`
	Container    string `json:"container"`
	Init         bool   `json:"init"`
	Volume       bool   `json:"volume"`
	Image        string `json:"image"`
	TagDigest    string `json:"tagDigest"`
	PinnedDigest string `json:"pinnedDigest"`
	Running      []struct {
		Digest string   `json:"digest"`
		Pods   int      `json:"pods"`
		Nodes  []string `json:"nodes"`
	} `json:"running"`
	Drift  []string `json:"drift"`
	Source struct {
		Kind string `json:"kind"`
		Name string `json:"name"`
	} `json:"source"`
	Error string `json:"error"`
}

type jsonList struct {
	Items []jsonItem `json:"items"`
}

func TestDriftJSON(t *testing.T) {
	kc := needCluster(t)
	code, out, errs := run(t, "-A", "-o", "json", "--kubeconfig", kc)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	var l jsonList
	if err := dec.Decode(&l); err != nil {
		t.Fatalf("decode: %v\n%s", err, out)
	}
	var got []string
	for _, it := range l.Items {
		got = append(got, it.Namespace+"/"+it.Kind+"/"+it.Name+"/"+it.Container+" "+it.Source.Kind)
	}
	want := []string{
		"batch/Deployment/worker/worker ImagePin",
		"ops/DaemonSet/agent/proxy ClusterImagePin",
		"ops/TrainJob/train/trainer ClusterImagePin",
		"shop/Deployment/web/app ImagePin",
		"shop/Deployment/web/migrate ImagePin",
		"shop/Deployment/web/proxy ClusterImagePin",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("items:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, tc := range []struct {
		name  string
		item  jsonItem
		check func(jsonItem) bool
	}{
		{name: "split replicas: every running digest in full with its pods and nodes", item: l.Items[0], check: func(it jsonItem) bool {
			return it.TagDigest == string(worker) && it.PinnedDigest == string(worker) && len(it.Running) == 2 &&
				it.Running[0].Digest == string(worker) && it.Running[0].Pods == 2 && strings.Join(it.Running[0].Nodes, ",") == "node-a" &&
				it.Running[1].Digest == string(stale) && it.Running[1].Pods == 1 && strings.Join(it.Running[1].Nodes, ",") == "node-b" &&
				strings.Join(it.Drift, ",") == "MixedReplicas" && it.Source.Name == "pins" && it.Image == reg+"batch/worker:latest"
		}},
		{name: "a template of a configured kind", item: l.Items[2], check: func(it jsonItem) bool {
			return it.Template == "Worker" && it.TagDigest == string(trainNew) && it.PinnedDigest == string(trainOld) && it.Source.Name == "everywhere"
		}},
		{name: "the ImagePin's row, not the ClusterImagePin's", item: l.Items[3], check: func(it jsonItem) bool {
			return strings.Join(it.Drift, ",") == "TagMoved" && it.Source.Kind == "ImagePin"
		}},
		{name: "an init container whose tag does not resolve", item: l.Items[4], check: func(it jsonItem) bool {
			return it.Init && it.TagDigest == "" && it.PinnedDigest == "" && it.Running != nil && len(it.Running) == 0 &&
				strings.Contains(it.Error, "MANIFEST_UNKNOWN") && strings.Join(it.Drift, ",") == "Unpinned,Unresolvable"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.check(tc.item) {
				t.Errorf("item %+v", tc.item)
			}
		})
	}
	if !strings.Contains(out, `"running": [],`) {
		t.Errorf("a container with no pods has no empty running list:\n%s", out)
	}
}

func TestDriftYAML(t *testing.T) {
	kc := needCluster(t)
	for _, tc := range []struct {
		name  string
		args  []string
		items int
	}{
		{name: "a namespace with all its containers", args: []string{"-n", "batch", "--all", "-o", "yaml"}, items: 2},
		{name: "nothing drifted: an empty list", args: []string{"-n", "quiet", "-oyaml"}, items: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := run(t, append(tc.args, "--kubeconfig", kc)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			var l jsonList
			if err := yaml.UnmarshalStrict([]byte(out), &l); err != nil {
				t.Fatalf("decode: %v\n%s", err, out)
			}
			if len(l.Items) != tc.items || l.Items == nil {
				t.Fatalf("%d items, want %d:\n%s", len(l.Items), tc.items, out)
			}
			if tc.items > 0 && (!l.Items[0].Volume || l.Items[0].Container != "models" || l.Items[0].TagDigest != string(models)) {
				t.Errorf("first item %+v, want the image volume models", l.Items[0])
			}
		})
	}
}

// --kubeconfig, $KUBECONFIG and --context as kubectl has them: a
// kubeconfig whose current context names an unreachable cluster, and a
// context "envtest" of the test cluster, with namespace batch.
func TestDriftKubeconfig(t *testing.T) {
	kc := needCluster(t)
	cfg, err := clientcmd.LoadFromFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	var real *clientcmdapi.Context
	for _, c := range cfg.Contexts {
		real = c.DeepCopy()
	}
	real.Namespace = "batch"
	cfg.Contexts = map[string]*clientcmdapi.Context{
		"envtest": real,
		"gone":    {Cluster: "gone", AuthInfo: real.AuthInfo},
	}
	cfg.Clusters["gone"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:1"}
	cfg.CurrentContext = "gone"
	two := filepath.Join(t.TempDir(), "two-contexts")
	if err := clientcmd.WriteToFile(*cfg, two); err != nil {
		t.Fatal(err)
	}
	batchRow := "Deployment/worker   worker"

	for _, tc := range []struct {
		name       string
		args       []string
		env        string // $KUBECONFIG
		code       int
		stdout     string // contained
		stderr     string // contained
		stderrLine bool   // stderr is one line
	}{
		{name: "--context picks the test cluster, whose namespace is the default", args: []string{"--kubeconfig", two, "--context", "envtest"}, stdout: batchRow},
		{name: "-n wins over the context's namespace", args: []string{"--kubeconfig", two, "--context", "envtest", "-n", "ops"}, stdout: "TrainJob/train[Worker]"},
		{name: "the current context's cluster is unreachable", args: []string{"--kubeconfig", two}, code: 2, stderr: "127.0.0.1:1", stderrLine: true},
		{name: "a context the kubeconfig has not", args: []string{"--kubeconfig", two, "--context", "nope"}, code: 2, stderr: `context "nope" does not exist`, stderrLine: true},
		{name: "a kubeconfig that does not exist", args: []string{"--kubeconfig", filepath.Join(t.TempDir(), "missing")}, code: 2, stderr: "imagepin drift: load kubeconfig:", stderrLine: true},
		{name: "a context without a namespace lists namespace default", args: []string{"--kubeconfig", kc}, stderr: "No drift found in namespace default.\n", stderrLine: true},
		{name: "$KUBECONFIG when --kubeconfig is not given", env: two, args: []string{"--context", "envtest"}, stdout: batchRow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KUBECONFIG", tc.env)
			code, out, errs := run(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr: %s", code, tc.code, errs)
			}
			if !strings.Contains(out, tc.stdout) {
				t.Errorf("stdout lacks %q:\n%s", tc.stdout, out)
			}
			if !strings.Contains(errs, tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, errs)
			}
			if tc.stderrLine && strings.Count(errs, "\n") != 1 {
				t.Errorf("stderr is not one line:\n%s", errs)
			}
		})
	}
}

// A user who may read the ImagePins of one namespace and not the
// ClusterImagePins gets that namespace's ImagePin rows and a warning; asking
// for all namespaces is an error.
func TestDriftForbidden(t *testing.T) {
	kc := shopViewer(t)
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr []string
	}{
		{
			name: "-n shop: the ImagePin's rows, and a warning for the ClusterImagePins",
			args: []string{"-n", "shop"},
			stdout: `WORKLOAD         CONTAINER      IMAGE                                 TAG NOW               RUNNING                 DRIFT                   PIN
Deployment/web   app            registry.example.com/shop/web:v2      sha256:b2b2b2b2b2b2   sha256:a1a1a1a1a1a1×3   TagMoved                ImagePin/pins
Deployment/web   init:migrate   registry.example.com/shop/migrate:1   <error>               -                       Unpinned,Unresolvable   ImagePin/pins
`,
			stderr: []string{"imagepin drift: warning: ClusterImagePins not listed (forbidden)", `cannot list resource "clusterimagepins"`},
		},
		{
			name:   "-A: the ImagePins of every namespace are forbidden",
			args:   []string{"-A"},
			code:   2,
			stderr: []string{"imagepin drift: list ImagePins:", "forbidden"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := run(t, append(tc.args, "--kubeconfig", kc)...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr: %s", code, tc.code, errs)
			}
			if out != tc.stdout {
				t.Errorf("stdout:\n%s\nwant:\n%s", out, tc.stdout)
			}
			for _, s := range tc.stderr {
				if !strings.Contains(errs, s) {
					t.Errorf("stderr lacks %q:\n%s", s, errs)
				}
			}
			if strings.Count(errs, "\n") != 1 {
				t.Errorf("stderr is not one line:\n%s", errs)
			}
		})
	}
}

// The kubectl plugin: the subcommand is os.Args[1] under either name, and
// kubectl-imagepin without one never starts the manager.
func TestSubcommand(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		sub    string
		rest   []string
		plugin bool
	}{
		{name: "imagepin drift", args: []string{"imagepin", "drift", "-A"}, sub: "drift", rest: []string{"-A"}},
		{name: "imagepin pin", args: []string{"/usr/local/bin/imagepin", "pin", "-f", "x.yaml"}, sub: "pin", rest: []string{"-f", "x.yaml"}},
		{name: "the manager", args: []string{"/manager", "--leader-elect"}},
		{name: "the manager without flags", args: []string{"imagepin"}},
		{name: "kubectl imagepin drift", args: []string{"/home/me/bin/kubectl-imagepin", "drift", "-A"}, sub: "drift", rest: []string{"-A"}, plugin: true},
		{name: "kubectl imagepin pin on Windows", args: []string{`kubectl-imagepin.exe`, "pin"}, sub: "pin", rest: []string{}, plugin: true},
		{name: "kubectl imagepin", args: []string{"kubectl-imagepin"}, plugin: true},
		{name: "kubectl imagepin with manager flags", args: []string{"kubectl-imagepin", "--leader-elect"}, plugin: true},
		{name: "no arguments at all", args: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sub, rest, plugin := Subcommand(tc.args)
			if sub != tc.sub || plugin != tc.plugin || strings.Join(rest, " ") != strings.Join(tc.rest, " ") {
				t.Errorf("Subcommand(%q) = %q, %q, %v; want %q, %q, %v", tc.args, sub, rest, plugin, tc.sub, tc.rest, tc.plugin)
			}
		})
	}
}

func TestPluginUsage(t *testing.T) {
	for _, tc := range []struct {
		name           string
		args           []string
		code           int
		stdout, stderr string
	}{
		{name: "no subcommand", args: []string{"kubectl-imagepin"}, code: 2, stderr: pluginUsage + "\n"},
		{name: "help", args: []string{"kubectl-imagepin", "--help"}, stdout: pluginUsage + "\n"},
		{name: "an unknown subcommand", args: []string{"kubectl-imagepin", "status"}, code: 2, stderr: "kubectl imagepin: unknown command \"status\"\n" + pluginUsage + "\n"},
		{name: "a manager flag", args: []string{"kubectl-imagepin", "--leader-elect"}, code: 2, stderr: "kubectl imagepin: unknown command \"--leader-elect\"\n" + pluginUsage + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errs bytes.Buffer
			code := PluginUsage(tc.args, &out, &errs)
			if code != tc.code || out.String() != tc.stdout || errs.String() != tc.stderr {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, out.String(), errs.String(), tc.code, tc.stdout, tc.stderr)
			}
			if !strings.Contains(pluginUsage, "drift") || !strings.Contains(pluginUsage, "pin") {
				t.Errorf("usage %q names not drift and pin", pluginUsage)
			}
		})
	}
}
