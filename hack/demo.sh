#!/usr/bin/env bash
# `make demo`: start a local control plane from bin/, install the ImagePin CRD,
# run imagepin against it, apply a Deployment and an ImagePin, and show what
# `kubectl get imagepins` reports. Every process it starts is stopped on exit,
# also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_DIR=${K8S_DIR:?set by make demo}
export PATH="$PWD/bin/k8s/$(basename "$K8S_DIR"):$PATH"
WORK=$PWD/tmp/demo
rm -rf "$WORK" && mkdir -p "$WORK"
export KUBECONFIG=$WORK/kubeconfig

cluster_pid=""
manager_pid=""
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	echo
	echo "== cleaning up"
	if [[ -n $manager_pid ]]; then kill -TERM "$manager_pid" 2>/dev/null || true; wait "$manager_pid" 2>/dev/null || true; fi
	if [[ -n $cluster_pid ]]; then
		# localcluster stops etcd, kube-apiserver and kube-controller-manager
		# on SIGTERM; its process group catches anything left.
		kill -TERM "$cluster_pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$cluster_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL -- "-$cluster_pid" 2>/dev/null || true
	fi
	echo "stopped every process the demo started; logs are in tmp/demo/"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# show prints a command as a user would type it, then runs it.
show() {
	local out="" a
	for a in "$@"; do
		if [[ $a =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then out+="$a "; else out+="'${a//\'/\'\\\'\'}' "; fi
	done
	printf '\033[36m$ %s\033[0m\n' "${out% }"
	"$@"
}

wait_for() { # wait_for <seconds> <what> <command...>
	local secs=$1 what=$2; shift 2
	for _ in $(seq $((secs * 10))); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.1
	done
	echo "timed out after ${secs}s waiting for $what" >&2
	return 1
}

step "Start a local control plane: etcd, kube-apiserver and kube-controller-manager from bin/"
setsid bin/localcluster --assets "$K8S_DIR" --kubeconfig-out "$KUBECONFIG" >"$WORK/localcluster.log" 2>&1 &
cluster_pid=$!
wait_for 90 "the local control plane (see tmp/demo/localcluster.log)" grep -q '^KUBECONFIG=' "$WORK/localcluster.log"
head -1 "$WORK/localcluster.log"
show kubectl version

step "Install the ImagePin CRD"
show kubectl apply -f config/crd/bases
show kubectl wait --for condition=established --timeout=30s crd/imagepins.images.imagepin.dev

step "Run imagepin (the manager) against it"
ENABLE_WEBHOOKS=false bin/imagepin --kubeconfig "$KUBECONFIG" \
	--metrics-bind-address 0 --health-probe-bind-address 127.0.0.1:18081 >"$WORK/imagepin.log" 2>&1 &
manager_pid=$!
wait_for 60 "imagepin to be ready (see tmp/demo/imagepin.log)" curl -sf http://127.0.0.1:18081/readyz
echo "imagepin is running (pid $manager_pid); its log is tmp/demo/imagepin.log"

step "Deploy an app that names its image by tag"
show kubectl apply -f config/samples/demo_deployment.yaml
wait_for 30 "the Deployment's pods" bash -c '[[ $(kubectl get pods -l app=demo -o name | wc -l) -ge 2 ]]'
show kubectl get deployments -o wide
echo "(no kubelet runs here, so the pods stay Pending; the node simulator arrives with the end-to-end story)"
show kubectl get pods -o wide

step "Ask imagepin to watch it: an ImagePin in Observe mode"
show cat config/samples/images_v1alpha1_imagepin_observe.yaml
show kubectl apply -f config/samples/images_v1alpha1_imagepin_observe.yaml
show kubectl wait --for=condition=Ready --timeout=30s imagepin/demo-observe
show kubectl get imagepins -o wide

step "A second workload joins when it gets the label"
show kubectl create deployment demo-canary --image=registry.example.com/demo/myimage:v2 --replicas=1
show kubectl label deployment demo-canary app=demo --overwrite
show kubectl wait --for=jsonpath='{.status.summary.workloads}'=2 --timeout=30s imagepin/demo-observe
show kubectl get ipin -o wide
show kubectl get ipin demo-observe -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}{"\n"}'

step "A spec imagepin cannot honour is refused, naming the field"
show kubectl patch ipin demo-observe --type merge -p '{"spec":{"interval":"1s"}}' || true
