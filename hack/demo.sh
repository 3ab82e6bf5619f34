#!/usr/bin/env bash
# `make demo`: start a local control plane and a registry from bin/, install
# the ImagePin CRD, run imagepin against them, deploy an image by tag, watch
# an ImagePin resolve it, push the tag again and watch imagepin see it move,
# stop the registry and watch imagepin keep the last digest, then Pin, Follow
# and roll back by override. Every process it starts is stopped on exit, also
# on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_DIR=${K8S_DIR:?set by make demo}
REGISTRY_BIN=${REGISTRY_BIN:?set by make demo}
CRANE=${CRANE:?set by make demo}
REG=127.0.0.1:5055
export PATH="$PWD/bin/k8s/$(basename "$K8S_DIR"):$PATH"
WORK=$PWD/tmp/demo
rm -rf "$WORK" && mkdir -p "$WORK"
export KUBECONFIG=$WORK/kubeconfig

cluster_pid=""
manager_pid=""
registry_pid=""
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	echo
	echo "== cleaning up"
	if [[ -n $manager_pid ]]; then kill -TERM "$manager_pid" 2>/dev/null || true; wait "$manager_pid" 2>/dev/null || true; fi
	if [[ -n $registry_pid ]]; then kill -TERM "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
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
	local secs=$1 what=$2
	shift 2
	for _ in $(seq $((secs * 10))); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.1
	done
	echo "timed out after ${secs}s waiting for $what" >&2
	return 1
}

start_registry() {
	"$REGISTRY_BIN" serve "$WORK/registry.yml" >>"$WORK/registry.log" 2>&1 &
	registry_pid=$!
	wait_for 30 "the registry (see tmp/demo/registry.log)" curl -sf "http://$REG/v2/"
}

# push_build <text>: push a one-file image holding <text> as
# demo/myimage:v1, the way a CI pipeline pushes a tag again; print its digest.
push_build() {
	mkdir -p "$WORK/build"
	printf '%s\n' "$1" >"$WORK/build/version.txt"
	tar -C "$WORK/build" -cf "$WORK/layer.tar" version.txt
	local ref
	ref=$("$CRANE" append --insecure --oci-empty-base -f "$WORK/layer.tar" -t "$REG/demo/myimage:v1" 2>>"$WORK/crane.log")
	echo "${ref##*@}"
}

step "Start a local control plane: etcd, kube-apiserver and kube-controller-manager from bin/"
setsid bin/localcluster --assets "$K8S_DIR" --dir "$WORK" >"$WORK/localcluster.log" 2>&1 &
cluster_pid=$!
wait_for 90 "the local control plane (see tmp/demo/localcluster.log)" grep -q '^KUBECONFIG=' "$WORK/localcluster.log"
head -1 "$WORK/localcluster.log"
show kubectl version

step "Start a registry (the distribution registry from bin/) and push demo/myimage:v1"
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: "$REG"}
EOF
start_registry
first=$(push_build "build 1")
echo "pushed $REG/demo/myimage:v1 -> $first"

step "Install the ImagePin CRD"
show kubectl apply -f config/crd/bases
show kubectl wait --for condition=established --timeout=30s crd/imagepins.images.imagepin.dev

step "Run imagepin (the manager and its admission webhook) against both"
# A CA and a serving certificate for the webhook on 127.0.0.1, and the
# webhook configuration of config/webhook pointed at it with that CA.
certs=$WORK/certs
mkdir -p "$certs"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=imagepin-demo-ca" -keyout "$certs/ca.key" -out "$certs/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$certs/tls.key" -out "$certs/tls.csr" 2>/dev/null
echo "subjectAltName=IP:127.0.0.1" >"$certs/ext"
openssl x509 -req -in "$certs/tls.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" -CAcreateserial -days 1 \
	-extfile "$certs/ext" -out "$certs/tls.crt" 2>/dev/null
bin/imagepin --kubeconfig "$KUBECONFIG" --insecure-registry "$REG" \
	--webhook-cert-dir "$certs" --webhook-port 19443 \
	--metrics-bind-address 127.0.0.1:18080 --health-probe-bind-address 127.0.0.1:18081 >"$WORK/imagepin.log" 2>&1 &
manager_pid=$!
wait_for 60 "imagepin to be ready (see tmp/demo/imagepin.log)" curl -sf http://127.0.0.1:18081/readyz
ca=$(base64 -w0 <"$certs/ca.crt")
sed -e '/^    service:$/,/^      path: /c\    url: https://127.0.0.1:19443/mutate-imagepin\n    caBundle: '"$ca" \
	config/webhook/manifests.yaml >"$WORK/webhook.yaml"
show kubectl apply -f "$WORK/webhook.yaml"
echo "imagepin is running (pid $manager_pid), its webhook registered; its log is tmp/demo/imagepin.log"

step "Deploy an app that names its image by tag"
show kubectl create deployment demo --image="$REG/demo/myimage:v1" --replicas=2
wait_for 30 "the Deployment's pods" bash -c '[[ $(kubectl get pods -l app=demo -o name | wc -l) -ge 2 ]]'
show kubectl get deployments -o wide
echo "(no kubelet runs here, so the pods stay Pending and run no digest yet; a node simulator arrives with the end-to-end story)"
show kubectl get pods -o wide

step "Ask imagepin to watch it: an ImagePin in Observe mode, checking every 10s"
cat >"$WORK/imagepin.yaml" <<EOF
apiVersion: images.imagepin.dev/v1alpha1
kind: ImagePin
metadata:
  name: demo
spec:
  selector: {matchLabels: {app: demo}}
  mode: Observe
  interval: 10s
EOF
show cat "$WORK/imagepin.yaml"
show kubectl apply -f "$WORK/imagepin.yaml"
show kubectl wait --for=condition=Ready --timeout=30s imagepin/demo
show kubectl get imagepins -o wide
show kubectl get ipin demo -o jsonpath='{range .status.images[*]}{.image} -> {.digest}{"\n"}{range .workloads[*]}  {.kind}/{.name} container {.container}: drift {.drift}{"\n"}{end}{end}'

step "CI pushes :v1 again, with new content"
second=$(push_build "build 2")
echo "pushed $REG/demo/myimage:v1 -> $second (it was $first)"
echo "imagepin sees it within one interval:"
show kubectl wait --for=jsonpath='{.status.images[0].digest}'="$second" --timeout=30s imagepin/demo
show kubectl get ipin demo -o jsonpath='{range .status.images[0].history[*]}{.firstSeen}  {.digest}{"\n"}{end}'
wait_for 10 "the TagMoved event" bash -c 'kubectl get events --field-selector reason=TagMoved -o name | grep -q .'
show kubectl get events --field-selector reason=TagMoved -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message

step "The registry goes down: imagepin keeps the last digest and says why"
kill -TERM "$registry_pid" && wait "$registry_pid" 2>/dev/null || true
registry_pid=""
show kubectl wait --for=condition=Ready=false --timeout=60s imagepin/demo
show kubectl get ipin -o wide
show kubectl get ipin demo -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}{"\n"}'
show kubectl get ipin demo -o jsonpath='digest kept: {.status.images[0].digest}{"\n"}'

step "The registry is back: imagepin recovers on its next check"
start_registry
show kubectl wait --for=condition=Ready --timeout=60s imagepin/demo
show kubectl get ipin -o wide

step "Pin: every replica on every node runs the same bits"
show kubectl patch ipin demo --type merge -p '{"spec":{"mode":"Pin"}}'
show kubectl wait --for=jsonpath='{.spec.template.spec.containers[0].image}'="$REG/demo/myimage:v1@$second" --timeout=30s deployment/demo
show kubectl get deployments -o wide
show kubectl get replicasets -l app=demo
echo "(one new ReplicaSet: the single rollout that pinned the digest; the tag stays in the reference for people)"

step "Follow: CI pushes :v1 again; imagepin rolls it out once"
show kubectl patch ipin demo --type merge -p '{"spec":{"mode":"Follow"}}'
third=$(push_build "build 3")
echo "pushed $REG/demo/myimage:v1 -> $third"
show kubectl wait --for=jsonpath='{.spec.template.spec.containers[0].image}'="$REG/demo/myimage:v1@$third" --timeout=45s deployment/demo
show kubectl get replicasets -l app=demo
wait_for 10 "the ImageWritten event" bash -c 'kubectl get events --field-selector reason=ImageWritten -o name | grep -q .'
show kubectl get events --field-selector reason=ImageWritten -o custom-columns=REASON:.reason,MESSAGE:.message

step "Roll back to build 1 by override, although the tag points to build 3"
show kubectl get ipin demo -o jsonpath='{range .status.images[0].history[*]}{.firstSeen}  {.digest}{"\n"}{end}'
show kubectl patch ipin demo --type merge -p "{\"spec\":{\"overrides\":[{\"image\":\"$REG/demo/myimage:v1\",\"digest\":\"$first\"}]}}"
show kubectl wait --for=jsonpath='{.spec.template.spec.containers[0].image}'="$REG/demo/myimage:v1@$first" --timeout=30s deployment/demo
show kubectl get deployments -o wide
show kubectl get ipin -o wide

step "Pin on deploy: a new Deployment applied through the webhook arrives pinned"
cat >"$WORK/web2.yaml" <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo-web2
  labels: {app: demo}
spec:
  replicas: 1
  selector: {matchLabels: {tier: web2}}
  template:
    metadata: {labels: {tier: web2}}
    spec:
      containers:
      - name: myimage
        image: $REG/demo/myimage:v1
EOF
show kubectl apply -f "$WORK/web2.yaml"
show kubectl get deployment demo-web2 -o jsonpath='{.spec.template.spec.containers[0].image}{"\n"}'
echo "(the ImagePin's override holds this image at build 1, so the new Deployment starts there too)"
show kubectl get replicasets -l tier=web2

step "What imagepin exports to Prometheus (a few series)"
curl -s http://127.0.0.1:18080/metrics | grep -E '^imagepin_(registry_requests_total|registry_cache_results_total|drifted_containers|workload_writes_total|admission_decisions_total)' | sort || true

step "A spec imagepin cannot honour is refused, naming the field"
show kubectl patch ipin demo --type merge -p '{"spec":{"interval":"1s"}}' || true
