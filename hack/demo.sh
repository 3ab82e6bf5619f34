#!/usr/bin/env bash
# `make demo`: the mutable-tag story of docs (DESIGN.md), narrated on the
# local cluster (`bin/devcluster`): a control plane, a registry with auth and
# TLS, three simulated nodes with their own image caches, and imagepin with
# its webhook. A re-pushed tag splits a Deployment's replicas across two
# builds; imagepin reports it, pins it, follows the tag with one rollout per
# change, rolls back by override, pins at admission and rides out a registry
# outage. Every process it starts is stopped on exit, also on Ctrl-C.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

K8S_DIR=${K8S_DIR:?set by make demo}
CRANE=${CRANE:?set by make demo}
COSIGN=${COSIGN:?set by make demo}
REGISTRY_BIN=${REGISTRY_BIN:?set by make demo}
export PATH="$K8S_DIR:$PATH"
WORK=$PWD/tmp/demo
DEVCLUSTER="bin/devcluster"

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	echo
	echo "== cleaning up"
	"$DEVCLUSTER" down --dir "$WORK" || true
	echo "logs are in tmp/demo/"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '\033[2m# %s\033[0m\n' "$*"; }

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
	for _ in $(seq $((secs * 5))); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	echo "timed out after ${secs}s waiting for $what" >&2
	return 1
}

# push_build <text> [tag] [repo]: push a one-file image holding <text> as
# demo/<repo>:<tag> (demo/web:v1), the way a CI pipeline pushes a tag
# again; print its digest.
push_build() {
	local tag=${2:-v1} repo=${3:-web}
	mkdir -p "$WORK/build"
	printf '%s\n' "$1" >"$WORK/build/version.txt"
	tar -C "$WORK/build" -cf "$WORK/layer.tar" version.txt
	local ref
	ref=$(SSL_CERT_FILE=$REGISTRY_CA "$CRANE" append --oci-empty-base -f "$WORK/layer.tar" -t "$REGISTRY/demo/$repo:$tag" 2>>"$WORK/crane.log")
	[[ $ref == *@sha256:* ]] || { echo "push of demo/$repo:$tag failed; see tmp/demo/crane.log" >&2; return 1; }
	echo "${ref##*@}"
}

pods() {
	show kubectl get pods -l app=web --sort-by=.spec.nodeName \
		-o custom-columns='POD:.metadata.name,NODE:.spec.nodeName,STATUS:.status.phase,IMAGE ID (the digest the node runs):.status.containerStatuses[0].imageID'
}

pods_split() { # pods_split <digest> <digest>: two Running pods, one on each digest, none terminating
	local got
	got=$(kubectl get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.deletionTimestamp}|{.status.phase}|{.status.containerStatuses[0].imageID}{"\n"}{end}')
	[[ $(grep -c . <<<"$got") -eq 2 ]] && grep -q "^|Running|.*@$1\$" <<<"$got" && grep -q "^|Running|.*@$2\$" <<<"$got"
}

tags_failing() { # tags_failing <n>: the ImagePin shows a resolution error on <n> tags
	[[ $(kubectl get ipin web -o jsonpath='{range .status.images[*]}{.error}{"\n"}{end}' | grep -c .) -eq $1 ]]
}

pods_running() { # pods_running <count> <digest>: <count> Running pods, all on <digest>, none terminating
	local want=$1 digest=$2 got
	got=$(kubectl get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.deletionTimestamp}|{.status.phase}|{.status.containerStatuses[0].imageID}{"\n"}{end}')
	[[ $(grep -c . <<<"$got") -eq $want ]] && [[ $(grep -c "^|Running|.*@$digest\$" <<<"$got") -eq $want ]]
}

# deployment_yaml <name> <tag>: a one-replica Deployment of demo/web:<tag>,
# labelled app=web so that the ImagePin selects it, its pods labelled apart.
deployment_yaml() {
	cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $1
  labels: {app: web}
spec:
  replicas: 1
  selector: {matchLabels: {run: $1}}
  template:
    metadata: {labels: {run: $1}}
    spec:
      containers:
      - name: web
        image: $REGISTRY/demo/web:$2
EOF
}

step "Start the local cluster: etcd, kube-apiserver, kube-controller-manager, a registry with auth and TLS, three simulated nodes, and imagepin with its webhook"
mkdir -p "$WORK"
"$DEVCLUSTER" down --dir "$WORK" >/dev/null
rm -rf "$WORK/registry" # a registry as new: nothing left from an earlier run
if [[ -f tmp/dev-cluster/devcluster.pid ]] && kill -0 "$(cat tmp/dev-cluster/devcluster.pid)" 2>/dev/null; then
	echo "a dev cluster (make dev-cluster) is running and holds the registry's port 127.0.0.1:5055; stop it with make dev-cluster-down" >&2
	exit 1
fi
"$DEVCLUSTER" up --detach --dir "$WORK" --registry-addr 127.0.0.1:5055 --manager bin/imagepin
# shellcheck source=/dev/null
source "$WORK/env"
show kubectl get nodes -o wide
say "The nodes are simulated: each binds pods, pulls images honouring imagePullPolicy into its own image cache, and reports imageID, as a kubelet does."

step "CI pushes demo/web:v1 (build 1), and a Deployment runs it by tag with two replicas"
first=$(push_build "build 1")
echo "pushed $REGISTRY/demo/web:v1 -> $first"
cat >"$WORK/web.yaml" <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: $REGISTRY/demo/web:v1
EOF
show cat "$WORK/web.yaml"
show kubectl apply -f "$WORK/web.yaml"
wait_for 60 "two pods running build 1" pods_running 2 "$first"
pods
say "The registry needs credentials: the pull secret '$(kubectl get sa default -o jsonpath='{.imagePullSecrets[0].name}')' on the default ServiceAccount provides them, to the nodes and to imagepin."

step "Ask imagepin to watch it: an ImagePin in Observe mode, checking every 10 minutes"
cat >"$WORK/imagepin.yaml" <<EOF
apiVersion: images.imagepin.dev/v1alpha1
kind: ImagePin
metadata:
  name: web
spec:
  selector: {matchLabels: {app: web}}
  mode: Observe
  interval: 10m
EOF
show cat "$WORK/imagepin.yaml"
show kubectl apply -f "$WORK/imagepin.yaml"
show kubectl wait --for=condition=Ready --timeout=30s imagepin/web
show kubectl get imagepins -o wide
say "Not drifted: the pods run what the tag names. The Deployment is only unpinned (it names a tag without a digest)."

step "CI pushes :v1 again, with new content (build 2)"
pushed_at=$(date +%s%N)
second=$(push_build "build 2")
echo "pushed $REGISTRY/demo/web:v1 -> $second (it was $first)"
say "Nothing changes in the cluster: the pods keep running build 1. The registry notifies imagepin's receiver of the push, so imagepin sees the tag move at once, not within the 10-minute interval:"
show kubectl wait --for=jsonpath='{.status.images[0].digest}'="$second" --timeout=30s imagepin/web
echo "seen in status $(( ($(date +%s%N) - pushed_at) / 1000000 )) ms after the push ended (kubectl's own start included)"
show kubectl get ipin web -o jsonpath='{range .status.images[0].history[*]}{.firstSeen}  {.digest}{"\n"}{end}'
wait_for 15 "the TagMoved event" bash -c 'kubectl get events --field-selector reason=TagMoved -o name | grep -q .'
show kubectl get events --field-selector reason=TagMoved -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message

step "node-a is drained for maintenance: its pod goes, and the replacement lands on a node that never pulled :v1"
victim=$(kubectl get pods -l app=web --field-selector spec.nodeName=node-a -o jsonpath='{.items[0].metadata.name}')
show kubectl cordon node-a
show kubectl delete pod "$victim"
wait_for 60 "one pod on build 1 and one on build 2" pods_split "$first" "$second"
pods
say "Two replicas of one Deployment, one manifest, two different builds: node-b still runs build 1, node-c pulled build 2."
show kubectl uncordon node-a
wait_for 30 "MixedReplicas" bash -c "kubectl get ipin web -o jsonpath='{.status.images[0].workloads[0].drift}' | grep -q MixedReplicas"
show kubectl get ipin web -o jsonpath='{range .status.images[0].workloads[*]}{.kind}/{.name} container {.container}: drift {.drift}{"\n"}{range .running[*]}  {.pods} pod(s) on {.nodes} run {.digest}{"\n"}{end}{end}'

step "Re-apply the same manifest: nothing rolls out, the spec did not change"
show kubectl apply -f "$WORK/web.yaml"
show kubectl get replicasets -l app=web
say "imagepin says why the replicas differ:"
show kubectl get ipin web -o jsonpath='{.status.conditions[?(@.type=="Drifted")].message}{"\n"}'

step "Pin: imagepin writes the tag's digest into the Deployment; every replica runs the same bits"
show kubectl patch ipin web --type merge -p '{"spec":{"mode":"Pin"}}'
show kubectl wait --for=jsonpath='{.spec.template.spec.containers[0].image}'="$REGISTRY/demo/web:v1@$second" --timeout=30s deployment/web
show kubectl rollout status deployment/web --timeout=60s
wait_for 60 "two pods on build 2" pods_running 2 "$second"
pods
show kubectl get deployments -o wide
wait_for 30 "no drift" bash -c "kubectl get ipin web -o jsonpath='{.status.conditions[?(@.type==\"Drifted\")].status}' | grep -qx False"
show kubectl get ipin -o wide
say "The tag stays in the reference for people; the digest is what the nodes pull."

step "Follow: CI pushes :v1 again (build 3); imagepin rolls it out exactly once"
show kubectl patch ipin web --type merge -p '{"spec":{"mode":"Follow"}}'
third=$(push_build "build 3")
echo "pushed $REGISTRY/demo/web:v1 -> $third"
show kubectl wait --for=jsonpath='{.spec.template.spec.containers[0].image}'="$REGISTRY/demo/web:v1@$third" --timeout=45s deployment/web
show kubectl rollout status deployment/web --timeout=60s
wait_for 60 "two pods on build 3" pods_running 2 "$third"
pods
show kubectl get replicasets -l app=web
say "Three ReplicaSets: the one the tag made, the Pin, the Follow. One rollout per real change."
wait_for 15 "the ImageWritten event" bash -c 'kubectl get events --field-selector reason=ImageWritten -o name | grep -q .'
show kubectl get events --field-selector reason=ImageWritten -o custom-columns=REASON:.reason,MESSAGE:.message

step "Roll back to build 1 by override, although the tag now names build 3"
show kubectl get ipin web -o jsonpath='{range .status.images[0].history[*]}{.firstSeen}  {.digest}{"\n"}{end}'
show kubectl patch ipin web --type merge -p "{\"spec\":{\"overrides\":[{\"image\":\"$REGISTRY/demo/web:v1\",\"digest\":\"$first\"}]}}"
show kubectl wait --for=jsonpath='{.spec.template.spec.containers[0].image}'="$REGISTRY/demo/web:v1@$first" --timeout=30s deployment/web
show kubectl rollout status deployment/web --timeout=60s
wait_for 60 "two pods on build 1" pods_running 2 "$first"
pods

step "The registry's garbage collection deletes untagged builds: keep what a backout needs"
say "Build 1 runs by override, but no tag names it any more, nor build 2: the registry's garbage collection deletes untagged manifests."
say "Retention keeps what runs and the newest history digests (here the newest one: keepLast 1) with a tag of imagepin's own:"
show kubectl patch ipin web --type merge -p '{"spec":{"retention":{"protect":true,"keepLast":1}}}'
show kubectl wait --for=jsonpath='{.status.conditions[?(@.type=="Retained")].status}'=True --timeout=30s imagepin/web
show kubectl get ipin web -o jsonpath='{range .status.keepTags[*]}{.image}:{.tag} -> {.digest}{"\n"}{end}'
say "The registry's operator runs its garbage collection, with the registry stopped:"
show "$DEVCLUSTER" registry down --dir "$WORK"
printf '\033[36m$ %s\033[0m\n' "registry garbage-collect --delete-untagged $WORK/registry/config.yml   # (the manifests it deletes)"
"$REGISTRY_BIN" garbage-collect --delete-untagged "$WORK/registry/config.yml" >"$WORK/gc.log" 2>&1
grep -E 'manifest eligible for deletion|manifests eligible for deletion' "$WORK/gc.log" || true
show "$DEVCLUSTER" registry up --dir "$WORK"
say "Build 2 was untagged, ran nowhere and was not kept: it is gone. Build 1 was untagged too, but its keep tag saved it. A rollback to build 2 is refused, and web keeps running build 1:"
show kubectl patch ipin web --type merge -p "{\"spec\":{\"overrides\":[{\"image\":\"$REGISTRY/demo/web:v1\",\"digest\":\"$second\"}]}}"
show kubectl wait --for=jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'=OverrideDigestGone --timeout=30s imagepin/web
show kubectl get ipin web -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}{"\n"}'
show kubectl get deployment web -o jsonpath='{.spec.template.spec.containers[0].image}{"\n"}'
show kubectl patch ipin web --type merge -p "{\"spec\":{\"overrides\":[{\"image\":\"$REGISTRY/demo/web:v1\",\"digest\":\"$first\"}]}}"
show kubectl wait --for=condition=Ready --timeout=30s imagepin/web

step "Pin on deploy: a new Deployment applied through the webhook arrives pinned"
fourth=$(push_build "build 4" v2)
echo "pushed $REGISTRY/demo/web:v2 -> $fourth"
deployment_yaml web-v2 v2 >"$WORK/web-v2.yaml"
show cat "$WORK/web-v2.yaml"
show kubectl apply -f "$WORK/web-v2.yaml"
show kubectl get deployment web-v2 -o jsonpath='{.spec.template.spec.containers[0].image}{"\n"}'
say "The manifest named :v2; the webhook pinned it to the digest :v2 names now, before anything ran."

step "The registry goes down: imagepin keeps the last digests and says why; deploys still go through"
say "No registry sends an event for its own outage: polling is the safety net. Check every 10s from now on:"
show kubectl patch ipin web --type merge -p '{"spec":{"interval":"10s"}}'
show "$DEVCLUSTER" registry down --dir "$WORK"
show kubectl wait --for=condition=Ready=false --timeout=60s imagepin/web
show kubectl get ipin -o wide
show kubectl get ipin web -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}{"\n"}'
show kubectl get ipin web -o jsonpath='{range .status.images[*]}{.image} -> {.digest} (kept){"\n"}{end}'
wait_for 30 "both tags to show the error" tags_failing 2
deployment_yaml web-v3 v2 >"$WORK/web-v3.yaml"
say "A deploy naming a tag imagepin cannot resolve now is admitted unpinned, with a warning (failurePolicy: Ignore); Follow pins it once the registry is back:"
show kubectl apply -f "$WORK/web-v3.yaml"
show "$DEVCLUSTER" registry up --dir "$WORK"
show kubectl wait --for=condition=Ready --timeout=60s imagepin/web
show kubectl get ipin -o wide

step "Follow only what is signed: an ImagePin with spec.verify rolls out only digests signed with the team's key"
say "CI makes a key pair once; imagepin gets the public half in a Secret. (cosign signs offline here: no Rekor, no Fulcio.)"
mkdir -p "$WORK/keys"
rm -f "$WORK/keys/cosign.key" "$WORK/keys/cosign.pub"
(cd "$WORK/keys" && COSIGN_PASSWORD=demo "$COSIGN" generate-key-pair >/dev/null 2>&1)
show kubectl create secret generic signing-keys --from-file=cosign.pub="$WORK/keys/cosign.pub"
sign() { # sign <digest>: what CI does after pushing demo/signed
	show env COSIGN_PASSWORD=demo SSL_CERT_FILE="$REGISTRY_CA" "$COSIGN" sign --key "$WORK/keys/cosign.key" \
		--tlog-upload=false --use-signing-config=false -y "$REGISTRY/demo/signed@$1" 2>&1 | grep -v -e '^Flag --' || true
}
signed1=$(push_build "signed build 1" v1 signed)
echo "pushed $REGISTRY/demo/signed:v1 -> $signed1"
sign "$signed1"
{
	cat <<EOF
apiVersion: images.imagepin.dev/v1alpha1
kind: ImagePin
metadata: {name: signed}
spec:
  selector: {matchLabels: {app: signed}}
  mode: Follow
  interval: 10s
  verify:
    keys:
    - secretKeyRef: {name: signing-keys, key: cosign.pub}
---
EOF
	deployment_yaml signed v1 | sed -e 's/app: web/app: signed/' -e 's|demo/web:v1|demo/signed:v1|'
} >"$WORK/signed.yaml"
show cat "$WORK/signed.yaml"
show kubectl apply -f "$WORK/signed.yaml"
show kubectl wait --for=jsonpath='{.spec.template.spec.containers[0].image}'="$REGISTRY/demo/signed:v1@$signed1" --timeout=45s deployment/signed
show kubectl wait --for=condition=Verified --timeout=30s imagepin/signed
say "CI pushes :v1 again, but nobody signs it: imagepin reports it and writes nothing."
unsigned=$(push_build "unsigned build 2" v1 signed)
echo "pushed $REGISTRY/demo/signed:v1 -> $unsigned"
show kubectl wait --for=condition=Verified=false --timeout=30s imagepin/signed
show kubectl get ipin signed -o jsonpath='{.status.conditions[?(@.type=="Verified")].message}{"\n"}'
show kubectl get deployment signed -o jsonpath='{.spec.template.spec.containers[0].image}{"\n"}'
say "Still the signed build 1. Once the new build is signed, it rolls out (the signature's push event has imagepin check at once):"
sign "$unsigned"
show kubectl wait --for=jsonpath='{.spec.template.spec.containers[0].image}'="$REGISTRY/demo/signed:v1@$unsigned" --timeout=45s deployment/signed
show kubectl get ipin signed -o jsonpath='{range .status.images[0].history[*]}{.digest}  verified={.verification.verified} ({.verification.reason}){"\n"}{end}'

step "What imagepin exports to Prometheus (a few series)"
curl -s "$IMAGEPIN_METRICS" | grep -E '^imagepin_(registry_requests_total|registry_cache_results_total|drifted_containers|workload_writes_total|admission_decisions_total|receiver_pushes_total|verification_total)' | sort || true

step "A spec imagepin cannot honour is refused, naming the field"
show kubectl patch ipin web --type merge -p '{"spec":{"interval":"1s"}}' || true

step "The drift view: one table across the cluster (imagepin drift, also the kubectl plugin kubectl imagepin)"
say "web runs build 1 by override while :v1 names build 3: the one drifted container of the cluster. bin/kubectl-imagepin on PATH makes it a kubectl plugin:"
export PATH="$PWD/bin:$PATH"
show kubectl imagepin drift -A
