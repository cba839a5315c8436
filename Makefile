# Images, charts and the install steps of docs/delivery.md.
#   make prepare-images REGISTRY=docker.io/you TAG=dev     build amesh-iptables, amesh-sidecar, amesh-controller
#   make push-images    REGISTRY=docker.io/you TAG=dev
REGISTRY ?= localhost:5000
TAG ?= dev
DOCKER ?= docker
HELM ?= helm
KUBECTL ?= kubectl
# Production bases; CI passes locally built ones (scripts/docker-ci.sh), as no registry is reachable there.
BASE_IMAGE ?= python:3.11-slim-bookworm
APISIX_IMAGE ?= apache/apisix:3.14.1-debian
PYTHON_IMAGE ?= python:3.11-slim-bullseye
DOCKER_BUILD_FLAGS ?=
NAMESPACE ?= istio-system

IMAGES := amesh-iptables amesh-sidecar amesh-controller

.PHONY: prepare-images push-images build-iptables build-sidecar build-controller chart-deps \
        install-controller install-crd install-amesh install bookinfo uninstall test test-delivery docker-ci

prepare-images: build-iptables build-sidecar build-controller
	@# The install step `helm install ... ./charts/amesh` needs Istio's charts in charts/amesh/charts/.
	@if command -v $(HELM) >/dev/null 2>&1; then $(MAKE) --no-print-directory chart-deps; \
	 else echo "note: helm not found; run 'make chart-deps' before 'helm install amesh'"; fi
	@echo "built: $(foreach i,$(IMAGES),$(REGISTRY)/$(i):$(TAG))"

build-iptables:
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  -f Dockerfile.iptables -t $(REGISTRY)/amesh-iptables:$(TAG) .

build-sidecar:
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) --build-arg APISIX_IMAGE=$(APISIX_IMAGE) --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) \
	  -f Dockerfile.sidecar -t $(REGISTRY)/amesh-sidecar:$(TAG) .

build-controller:
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  -f Dockerfile.controller -t $(REGISTRY)/amesh-controller:$(TAG) .
	@# The controller chart's default image: what was just built (see its values.yaml).
	echo "$(REGISTRY)/amesh-controller:$(TAG)" > controller/charts/amesh-controller/built-image

push-images:
	$(foreach i,$(IMAGES),$(DOCKER) push $(REGISTRY)/$(i):$(TAG) &&) true

# Istio's base and istiod charts, the declared dependencies of charts/amesh.
chart-deps:
	$(HELM) dependency update charts/amesh

# The install steps, in order (docs/delivery.md).
install-controller:
	$(KUBECTL) get namespace $(NAMESPACE) >/dev/null 2>&1 || $(KUBECTL) create namespace $(NAMESPACE)
	$(HELM) install amesh-controller -n $(NAMESPACE) ./controller/charts/amesh-controller \
	  --set image.repository=$(REGISTRY)/amesh-controller --set image.tag=$(TAG)

install-crd:
	$(KUBECTL) apply -k controller/config/crd/

install-amesh:
	$(HELM) install amesh --namespace $(NAMESPACE) --set pilot.image=istio/pilot:1.13.1 \
	  --set global.proxy.privileged=true --set global.proxy_init.image=$(REGISTRY)/amesh-iptables:$(TAG) \
	  --set global.proxy.image=$(REGISTRY)/amesh-sidecar:$(TAG) --set global.imagePullPolicy=IfNotPresent \
	  --set global.hub=docker.io/istio --set global.tag=1.13.1 ./charts/amesh

install: install-controller install-crd install-amesh

bookinfo:
	$(KUBECTL) label ns default istio-injection=enabled --overwrite
	$(KUBECTL) apply -f e2e/bookinfo/bookinfo.yaml

uninstall:
	-$(KUBECTL) delete -f e2e/bookinfo/bookinfo.yaml
	-$(HELM) uninstall amesh -n $(NAMESPACE)
	-$(KUBECTL) delete -k controller/config/crd/
	-$(HELM) uninstall amesh-controller -n $(NAMESPACE)

test:
	.venv/bin/python -m pytest

test-delivery:
	.venv/bin/python -m pytest tests/delivery -q

# Real Docker engine: base image, the three images, the pod pattern (as root; see scripts/docker-ci.sh).
docker-ci:
	bash scripts/docker-ci.sh
