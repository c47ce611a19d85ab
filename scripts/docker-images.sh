#!/usr/bin/env bash
# Builds the snapkv container images: snapkv-broker:dev and snapkv-store:dev.
#
#   scripts/docker-images.sh            # from anywhere inside the repository
#   SNAPKV_REQUIRE_DOCKER=1 make test   # then runs the container tests against them
#
# On a project machine (where ../shared/ci/docker-env.sh sits beside the clone) it first calls
# that script, which installs and starts Docker when absent and builds the local Python base image
# when missing (these machines cannot pull images); its last stdout line is the base tag, passed
# to both builds as --build-arg BASE_IMAGE. Anywhere else it needs a running Docker and the
# Dockerfiles' default base (python:3.12-slim) applies.
#
# Env:
#   SNAPKV_BROKER_IMAGE  broker tag (default snapkv-broker:dev)
#   SNAPKV_STORE_IMAGE   store tag  (default snapkv-store:dev)
#   SNAPKV_BASE_IMAGE    base image to build on; with docker-env.sh, the tag it builds
#   SNAPKV_SHARED_DIR    the shared folder holding ci/docker-env.sh (default: ../shared beside the repo)
# Progress goes to stderr; stdout stays empty so callers can rely on the exit code.
set -euo pipefail
say() { echo "docker-images: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${SNAPKV_SHARED_DIR:-$repo/../shared}
broker_image=${SNAPKV_BROKER_IMAGE:-snapkv-broker:dev}
store_image=${SNAPKV_STORE_IMAGE:-snapkv-store:dev}

build_args=()
if [ -f "$shared/ci/docker-env.sh" ]; then
  say "preparing Docker and the base image with $shared/ci/docker-env.sh"
  base=$(bash "$shared/ci/docker-env.sh" | tail -n 1)
  [ -n "$base" ] || { say "docker-env.sh printed no base image tag"; exit 1; }
  build_args=(--build-arg "BASE_IMAGE=$base")
elif [ -n "${SNAPKV_BASE_IMAGE:-}" ]; then
  build_args=(--build-arg "BASE_IMAGE=$SNAPKV_BASE_IMAGE")
fi
docker info >/dev/null 2>&1 || { say "no Docker daemon is reachable (is dockerd running?)"; exit 1; }

build() {  # build IMAGE DOCKERFILE
  local start=$SECONDS
  say "building $1 from $2 ${build_args[*]:-}"
  docker build "${build_args[@]}" -f "$repo/$2" -t "$1" "$repo" >&2
  say "built $1 in $((SECONDS - start))s"
}
build "$broker_image" Dockerfile.broker
build "$store_image" Dockerfile.store
