# imagepin — `make help` lists the targets.
#
# Every tool and every part of the control plane is built from the Go module
# proxy at a pinned version into bin/, once, and reused: nothing is
# downloaded as a prebuilt binary. A binary is rebuilt when the go.mod that
# pins it changes.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Pinned versions. Kubernetes and etcd are pinned by hack/tools/*/go.mod;
# K8S_VERSION must match hack/tools/kubernetes/go.mod and
# internal/testenv.KubernetesVersion.
K8S_VERSION            ?= v1.37.2
CONTROLLER_GEN_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION  ?= v2.15.0
REGISTRY_VERSION       ?= v3.1.2
CRANE_VERSION          ?= v0.22.1
# Argo Rollouts is pinned by hack/tools/argo-rollouts/go.mod; keep this in
# step with it and with internal/testenv.ArgoRolloutsVersion.
ARGO_ROLLOUTS_VERSION  ?= v1.10.0
HELM_VERSION           ?= v4.3.1
COSIGN_VERSION         ?= v3.1.3

ROOT      := $(abspath .)
BIN       := $(ROOT)/bin
K8S_DIR   := $(BIN)/k8s/$(K8S_VERSION)
GO        ?= go

CONTROLLER_GEN := $(BIN)/controller-gen-$(CONTROLLER_GEN_VERSION)
GOLANGCI_LINT  := $(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
REGISTRY       := $(BIN)/registry-$(REGISTRY_VERSION)
CRANE          := $(BIN)/crane-$(CRANE_VERSION)
ARGO_ROLLOUTS  := $(BIN)/argo-rollouts-$(ARGO_ROLLOUTS_VERSION)/rollouts-controller
HELM           := $(BIN)/helm-$(HELM_VERSION)
COSIGN         := $(BIN)/cosign-$(COSIGN_VERSION)
KUBE_APISERVER := $(K8S_DIR)/kube-apiserver
KUBE_CM        := $(K8S_DIR)/kube-controller-manager
KUBECTL        := $(K8S_DIR)/kubectl
ETCD           := $(K8S_DIR)/etcd

# The build stamps the control plane with its version, as Kubernetes' own
# release build does, so that `kubectl version` and skew checks see it.
K8S_MINOR   := $(word 2,$(subst ., ,$(K8S_VERSION)))
K8S_LDFLAGS := -s -w \
	-X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 \
	-X k8s.io/component-base/version.gitMinor=$(K8S_MINOR) \
	-X k8s.io/component-base/version.gitTreeState=clean \
	-X k8s.io/client-go/pkg/version.gitVersion=$(K8S_VERSION) \
	-X k8s.io/client-go/pkg/version.gitMajor=1 \
	-X k8s.io/client-go/pkg/version.gitMinor=$(K8S_MINOR) \
	-X k8s.io/client-go/pkg/version.gitTreeState=clean

TEST_FLAGS ?= -race -count=1 -timeout 30m

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRD, RBAC role and webhook configuration from markers, and the chart's copies of them.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd webhook paths="./..." \
		output:crd:artifacts:config=config/crd/bases \
		output:rbac:artifacts:config=config/rbac \
		output:webhook:artifacts:config=config/webhook
	@# The chart renders these, so that there is one source of truth.
	cp config/crd/bases/*.yaml charts/imagepin/crds/
	cp config/rbac/role.yaml config/rbac/leader_election_role.yaml charts/imagepin/files/
	cp config/webhook/manifests.yaml charts/imagepin/files/webhook.yaml
	cp config/prometheus/rules.yaml config/prometheus/dashboard.json charts/imagepin/files/

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate DeepCopy methods from markers.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths="./..."

.PHONY: fmt
fmt: ## Run gofmt on the code.
	gofmt -l -w $$(find . -name '*.go' -not -path './bin/*' -not -path './tmp/*')

.PHONY: vet
vet: ## Run go vet.
	$(GO) vet ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint.
	$(GOLANGCI_LINT) run ./...

.PHONY: verify
verify: manifests generate fmt ## Fail if generated or formatted files differ from what is committed.
	@git diff --exit-code -- . || { echo "generated or formatted files are out of date: run make manifests generate fmt and commit"; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- api config charts)" || { git status --porcelain -- api config charts; echo "untracked generated files"; exit 1; }

.PHONY: test
test: manifests generate fmt vet control-plane $(REGISTRY) $(ARGO_ROLLOUTS) $(HELM) $(COSIGN) test-prometheus ## Run every test: unit, and integration against the real API server and registry.
	KUBEBUILDER_ASSETS=$(K8S_DIR) $(GO) test $(TEST_FLAGS) $$($(GO) list ./... | grep -v '/hack/image$$')
	@# The image test cross-compiles the manager twice: after the others,
	@# so that it does not crowd the timed end-to-end tests.
	$(GO) test -count=1 -timeout 30m ./hack/image/

BENCH_FLAGS ?=

.PHONY: bench
bench: control-plane $(REGISTRY) ## Run the Go benchmarks, then the cluster benchmarks (hack/bench; BENCH_FLAGS): figures in tmp/bench/results.{md,json}.
	KUBEBUILDER_ASSETS=$(K8S_DIR) $(GO) test -run '^$$' -bench . -benchmem ./...
	KUBEBUILDER_ASSETS=$(K8S_DIR) $(GO) run ./hack/bench --out tmp/bench/results $(BENCH_FLAGS)

.PHONY: test-prometheus
test-prometheus: ## Check config/prometheus: rules and dashboard parse, use only metrics imagepin exports, and each alert fires when it should.
	cd hack/tools/promcheck && $(GO) vet ./... && $(GO) test -count=1 ./...

.PHONY: test-unit
test-unit: ## Run the tests that need no control plane.
	$(GO) test $(TEST_FLAGS) $$($(GO) list -f '{{.ImportPath}} {{join .TestImports " "}} {{join .XTestImports " "}}' ./... | grep -v 'internal/testenv' | awk '{print $$1}')

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the imagepin binary into bin/imagepin.
	$(GO) build -o $(BIN)/imagepin .
	ln -sf imagepin $(BIN)/kubectl-imagepin

# --insecure (plain HTTP) or --ca-file FILE for the registry of IMAGE.
IMAGE_FLAGS ?=

.PHONY: image
image: ## Build the manager's multi-arch OCI image (linux/amd64, linux/arm64) without a Docker engine; IMAGE=<registry>/<repo>:<tag> pushes it, else it is written as an OCI layout to tmp/image.
	$(GO) run ./hack/image $(if $(IMAGE),--push $(IMAGE),--layout tmp/image) $(IMAGE_FLAGS)

.PHONY: run
run: manifests generate ## Run the manager against the cluster of $KUBECONFIG (webhooks off).
	ENABLE_WEBHOOKS=false $(GO) run . --kubeconfig "$${KUBECONFIG:-$$HOME/.kube/config}"

DEV_CLUSTER_DIR ?= tmp/dev-cluster

.PHONY: dev-cluster
dev-cluster: build control-plane $(REGISTRY) ## Start the local cluster in the background: control plane, registry, 3 simulated nodes, imagepin.
	$(GO) build -o $(BIN)/devcluster ./hack/devcluster
	KUBEBUILDER_ASSETS=$(K8S_DIR) $(BIN)/devcluster up --detach --dir $(DEV_CLUSTER_DIR) --manager $(BIN)/imagepin

.PHONY: dev-cluster-down
dev-cluster-down: ## Stop the local cluster `make dev-cluster` started, and every process it runs.
	$(GO) build -o $(BIN)/devcluster ./hack/devcluster
	$(BIN)/devcluster down --dir $(DEV_CLUSTER_DIR)

.PHONY: demo
demo: build control-plane $(REGISTRY) $(CRANE) $(COSIGN) ## Replay the mutable-tag story on the local cluster, narrated; clean up.
	$(GO) build -o $(BIN)/devcluster ./hack/devcluster
	KUBEBUILDER_ASSETS=$(K8S_DIR) K8S_DIR=$(K8S_DIR) CRANE=$(CRANE) COSIGN=$(COSIGN) REGISTRY_BIN=$(REGISTRY) hack/demo.sh

.PHONY: docker-build
docker-build: ## Build the container image (needs a Docker engine; none runs on the dev machines).
	docker build -t imagepin:dev .

##@ Tools and the control plane (built from the Go module proxy into bin/)

.PHONY: control-plane
control-plane: $(KUBE_APISERVER) $(KUBE_CM) $(KUBECTL) $(ETCD) ## Build etcd, kube-apiserver, kube-controller-manager and kubectl.

.PHONY: tools
tools: control-plane $(CONTROLLER_GEN) $(GOLANGCI_LINT) $(REGISTRY) $(CRANE) $(ARGO_ROLLOUTS) $(HELM) $(COSIGN) ## Build every pinned tool.

$(KUBE_APISERVER): hack/tools/kubernetes/go.mod
	cd hack/tools/kubernetes && $(GO) build -trimpath -ldflags "$(K8S_LDFLAGS)" -o $@ k8s.io/kubernetes/cmd/kube-apiserver

$(KUBE_CM): hack/tools/kubernetes/go.mod
	cd hack/tools/kubernetes && $(GO) build -trimpath -ldflags "$(K8S_LDFLAGS)" -o $@ k8s.io/kubernetes/cmd/kube-controller-manager

$(KUBECTL): hack/tools/kubernetes/go.mod
	cd hack/tools/kubernetes && $(GO) build -trimpath -ldflags "$(K8S_LDFLAGS)" -o $@ k8s.io/kubernetes/cmd/kubectl

$(ETCD): hack/tools/etcd/go.mod
	cd hack/tools/etcd && $(GO) build -trimpath -ldflags "-s -w" -o $@ .

# The controller, and its CRDs (Rollout, AnalysisRun, …) of the same version
# from its module.
# The CRDs are copied first: the binary, the target, is made last, so a
# failed copy is tried again on the next run.
$(ARGO_ROLLOUTS): hack/tools/argo-rollouts/go.mod
	cd hack/tools/argo-rollouts && $(GO) mod download github.com/argoproj/argo-rollouts
	mkdir -p $(dir $@)crds
	cp "$$(cd hack/tools/argo-rollouts && $(GO) list -m -f '{{.Dir}}' github.com/argoproj/argo-rollouts)"/manifests/crds/*-crd.yaml $(dir $@)crds/
	chmod u+w $(dir $@)crds/*.yaml
	cd hack/tools/argo-rollouts && $(GO) build -trimpath -ldflags "-s -w" -o $@ github.com/argoproj/argo-rollouts/cmd/rollouts-controller

$(REGISTRY): hack/tools/registry/go.mod
	cd hack/tools/registry && $(GO) build -trimpath -ldflags "-s -w" -o $@ github.com/distribution/distribution/v3/cmd/registry

# Tools whose modules carry no replace directives install straight from the
# module proxy; GOBIN is a scratch directory so that the versioned name is
# the only one in bin/.
define go-install
	@mkdir -p $(BIN)/.gobin
	GOBIN=$(BIN)/.gobin $(GO) install $(1)@$(2)
	mv $(BIN)/.gobin/$(notdir $(1)) $@
endef

$(CONTROLLER_GEN):
	$(call go-install,sigs.k8s.io/controller-tools/cmd/controller-gen,$(CONTROLLER_GEN_VERSION))

$(GOLANGCI_LINT):
	$(call go-install,github.com/golangci/golangci-lint/v2/cmd/golangci-lint,$(GOLANGCI_LINT_VERSION))

$(CRANE):
	$(call go-install,github.com/google/go-containerregistry/cmd/crane,$(CRANE_VERSION))

$(HELM):
	$(call go-install,helm.sh/helm/v4/cmd/helm,$(HELM_VERSION))

$(COSIGN):
	$(call go-install,github.com/sigstore/cosign/v3/cmd/cosign,$(COSIGN_VERSION))
