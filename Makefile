# Images, charts and the install steps of docs/delivery.md. `make help` lists the targets (the `## ` comments).
REGISTRY ?= localhost:5000
TAG ?= dev
DOCKER ?= docker
HELM ?= helm
KUBECTL ?= kubectl
PYTHON ?= python3
# Production bases; CI passes locally built ones (scripts/docker-ci.sh), as no registry is reachable there.
BASE_IMAGE ?= python:3.11-slim-bookworm
APISIX_IMAGE ?= apache/apisix:3.14.1-debian
PYTHON_IMAGE ?= python:3.11-slim-bullseye
DOCKER_BUILD_FLAGS ?=
NAMESPACE ?= istio-system

IMAGES := amesh-iptables amesh-sidecar amesh-controller

.DEFAULT_GOAL := help
.PHONY: help constraints prepare-images push-images build-iptables build-sidecar build-controller chart-deps \
        install-controller install-crd install-amesh install bookinfo uninstall test test-delivery docker-ci

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /\1\t/' | expand -t 22
	@echo "variables: REGISTRY=$(REGISTRY) TAG=$(TAG) NAMESPACE=$(NAMESPACE) (make VAR=value target)"

prepare-images: build-iptables build-sidecar build-controller ## Build amesh-iptables, amesh-sidecar, amesh-controller as $(REGISTRY)/<name>:$(TAG) (+ chart-deps when helm is there)
	@# The install step `helm install ... ./charts/amesh` needs Istio's charts in charts/amesh/charts/.
	@if command -v $(HELM) >/dev/null 2>&1; then $(MAKE) --no-print-directory chart-deps; \
	 else echo "note: helm not found; run 'make chart-deps' before 'helm install amesh'"; fi
	@echo "built: $(foreach i,$(IMAGES),$(REGISTRY)/$(i):$(TAG))"

build-iptables: ## Build only $(REGISTRY)/amesh-iptables:$(TAG)
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  -f Dockerfile.iptables -t $(REGISTRY)/amesh-iptables:$(TAG) .

build-sidecar: ## Build only $(REGISTRY)/amesh-sidecar:$(TAG)
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) --build-arg APISIX_IMAGE=$(APISIX_IMAGE) --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) \
	  -f Dockerfile.sidecar -t $(REGISTRY)/amesh-sidecar:$(TAG) .

build-controller: ## Build only $(REGISTRY)/amesh-controller:$(TAG) and record it as the controller chart default
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  -f Dockerfile.controller -t $(REGISTRY)/amesh-controller:$(TAG) .
	@# The controller chart's default image: what was just built (see its values.yaml).
	echo "$(REGISTRY)/amesh-controller:$(TAG)" > controller/charts/amesh-controller/built-image

push-images: ## Push the three images to $(REGISTRY)
	$(foreach i,$(IMAGES),$(DOCKER) push $(REGISTRY)/$(i):$(TAG) &&) true

# Istio's base and istiod charts, the declared dependencies of charts/amesh.
chart-deps: ## Fetch Istio's base and istiod charts into charts/amesh/charts/ (helm dependency update)
	$(HELM) dependency update charts/amesh

# The install steps, in order (docs/delivery.md).
install-controller: ## helm install amesh-controller into $(NAMESPACE)
	$(KUBECTL) get namespace $(NAMESPACE) >/dev/null 2>&1 || $(KUBECTL) create namespace $(NAMESPACE)
	$(HELM) install amesh-controller -n $(NAMESPACE) ./controller/charts/amesh-controller \
	  --set image.repository=$(REGISTRY)/amesh-controller --set image.tag=$(TAG)

install-crd: ## kubectl apply the AmeshPluginConfig CRD
	$(KUBECTL) apply -k controller/config/crd/

install-amesh: ## helm install the mesh (istiod + the APISIX injection template) into $(NAMESPACE)
	$(HELM) install amesh --namespace $(NAMESPACE) --set pilot.image=istio/pilot:1.13.1 \
	  --set global.proxy.privileged=true --set global.proxy_init.image=$(REGISTRY)/amesh-iptables:$(TAG) \
	  --set global.proxy.image=$(REGISTRY)/amesh-sidecar:$(TAG) --set global.imagePullPolicy=IfNotPresent \
	  --set global.hub=docker.io/istio --set global.tag=1.13.1 ./charts/amesh

install: install-controller install-crd install-amesh ## install-controller, install-crd, install-amesh

bookinfo: ## Label the default namespace for injection and deploy Bookinfo
	$(KUBECTL) label ns default istio-injection=enabled --overwrite
	$(KUBECTL) apply -f e2e/bookinfo/bookinfo.yaml

uninstall: ## Remove Bookinfo, the mesh, the CRD and the controller
	-$(KUBECTL) delete -f e2e/bookinfo/bookinfo.yaml
	-$(HELM) uninstall amesh -n $(NAMESPACE)
	-$(KUBECTL) delete -k controller/config/crd/
	-$(HELM) uninstall amesh-controller -n $(NAMESPACE)

test: ## Run the whole test suite (.venv)
	.venv/bin/python -m pytest

test-delivery: ## Run the chart, manifest and dependency tests
	.venv/bin/python -m pytest tests/delivery -q

# Re-pin constraints.txt: the newest versions pyproject.toml allows (runtime + test extras), resolved in a
# fresh venv, frozen exactly. Then run `make setup` ... and the tests (a new grpcio-tools may need
# `python -m amesh_common.protogen`).
constraints: ## Re-pin constraints.txt from a fresh venv (then scripts/setup.sh and the tests)
	rm -rf .constraints-venv && $(PYTHON) -m venv .constraints-venv
	.constraints-venv/bin/pip install -q --upgrade pip
	.constraints-venv/bin/pip install -q '.[test]'
	{ echo "# Exact versions of every runtime and test dependency (pyproject.toml [project] + [test]); one source"; \
	  echo "# for scripts/setup.sh, CI and the Dockerfiles. Regenerate with 'make constraints', never by hand."; \
	  .constraints-venv/bin/pip freeze --exclude amesh; } > constraints.txt
	rm -rf .constraints-venv

# Real Docker engine: base image, the three images, the pod pattern (as root; see scripts/docker-ci.sh).
docker-ci: ## Build and run the images with a private Docker engine (root; scripts/docker-ci.sh)
	bash scripts/docker-ci.sh
