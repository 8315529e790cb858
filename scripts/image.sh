#!/usr/bin/env bash
# Build and test the container image (Containerfile) with podman; docs/container.md.
#
#   scripts/image.sh build [serve|ray]   wheels on the host, then the image agegender:latest (ray: agegender:ray)
#   scripts/image.sh test  [serve|ray]   build, then run it read-only on a loopback port (scripts/image_check.py)
#
# Needs podman and runc; without BASE also debootstrap and root. Environment:
#   BASE     base image to build on. Unset: a minimal Debian bookworm with python3 made by debootstrap, imported
#            once as localhost/agegender-base:$BASE_TAG and its tarball kept under $CACHE for later podman stores.
#   IMAGE    name of the image to build (default agegender:latest, agegender:ray for the ray target)
#   PYTHON   host Python 3.11 that builds the wheels and gives the reference answer (default .venv/bin/python)
#   CACHE    default ${XDG_CACHE_HOME:-~/.cache}/agegender-image
#   HEALTHY_S  most seconds from start to healthy (default 5)
#   DEBIAN_MIRROR   for debootstrap (default http://deb.debian.org/debian)
set -euo pipefail
cd "$(dirname "$0")/.."

ACTION=${1:-}
TARGET=${2:-serve}
case "$ACTION:$TARGET" in
  build:serve | build:ray | test:serve | test:ray) ;;
  *) echo "usage: scripts/image.sh build|test [serve|ray]" >&2; exit 2 ;;
esac
if [ "$TARGET" = ray ]; then IMAGE=${IMAGE:-agegender:ray}; else IMAGE=${IMAGE:-agegender:latest}; fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agegender-image}
# Bump when the base's recipe below changes, so that a cached base of the old recipe is not reused.
BASE_TAG=bookworm-py311-1
BASE_NAME=localhost/agegender-base:$BASE_TAG

# crun (podman's default where installed) fails on this kind of host's hybrid cgroups; podman's default ulimits
# exceed an unprivileged hard limit, so ask for what the host allows.
nofile=$(ulimit -Hn)
if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then nofile=65536; fi
PODMAN=(podman --runtime runc --cgroup-manager=cgroupfs)
ULIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)

# Temporary folders, removed however the script ends.
TEMPS=()
trap 'if [ ${#TEMPS[@]} -gt 0 ]; then rm -rf "${TEMPS[@]}"; fi' EXIT

say() { printf 'image.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
elapsed() { echo $(( $(date +%s) - $1 )); }

require() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (Debian: apt-get install -y podman runc debootstrap)"
}

# A Debian bookworm minbase with Python 3.11 and venv, without apt's lists and package files or docs (about 130 MB).
make_base() {
  if "${PODMAN[@]}" image exists "$BASE_NAME"; then return; fi
  local tarball=$CACHE/agegender-base-$BASE_TAG.tar
  if [ ! -s "$tarball" ]; then
    require debootstrap
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root (or set BASE to an image with Python 3.11)"
    local started rootfs
    started=$(date +%s)
    mkdir -p "$CACHE"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    TEMPS+=("$rootfs" "$tarball.part")
    say "debootstrap bookworm into $rootfs (once; the tarball is kept in $CACHE)"
    if ! debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" \
         "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$CACHE/debootstrap.log" 2>&1; then
      tail -20 "$CACHE/debootstrap.log" >&2
      die "debootstrap failed (log: $CACHE/debootstrap.log)"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* \
      "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
    find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
    tar -C "$rootfs" --numeric-owner -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    say "base made in $(elapsed "$started") s"
  fi
  "${PODMAN[@]}" import -q "$tarball" "$BASE_NAME" >/dev/null
}

# The project's wheel and its dependencies' for the host's Python, which must match the image's (3.11).
make_wheels() {
  local version src
  version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "no Python at $PYTHON"
  [ "$version" = 3.11 ] || die "$PYTHON is Python $version; the image has 3.11, so the wheels must be built by 3.11"
  # Built from a copy of the files git would commit: setuptools reuses an in-tree build/lib, which keeps
  # modules since moved or deleted.
  src=$(mktemp -d)
  TEMPS+=("$src")
  if git rev-parse --git-dir >/dev/null 2>&1; then
    git ls-files -co --exclude-standard -- pyproject.toml README.md 'LICEN[CS]E*' MODEL_LICENSE.md src \
      | while IFS= read -r f; do if [ -e "$f" ]; then printf '%s\n' "$f"; fi; done | tar -cf - -T - | tar -xf - -C "$src"
  else
    tar -cf - --exclude=__pycache__ --exclude='*.egg-info' pyproject.toml README.md LICENSE MODEL_LICENSE.md src | tar -xf - -C "$src"
  fi
  rm -rf build/image/wheels
  # A fixed timestamp makes the same sources give the same wheel, so podman's layer cache holds across builds.
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 315532800) \
    "$PYTHON" -m pip wheel -q --disable-pip-version-check --wheel-dir build/image/wheels "$src"
  if [ "$TARGET" = ray ]; then
    # One resolution with the project, so that the two sets of wheels agree (numpy and friends).
    rm -rf build/image/wheels-ray
    "$PYTHON" -m pip wheel -q --disable-pip-version-check --wheel-dir build/image/wheels-ray \
      --find-links build/image/wheels "$src[ray]" "ray[default]"
  fi
}

build() {
  local started base
  require podman runc
  started=$(date +%s)
  if [ -n "${BASE:-}" ]; then base=$BASE; else make_base; base=$BASE_NAME; fi
  make_wheels
  mkdir -p build/image/wheels-ray  # COPY needs it even where the ray stage is skipped by the builder
  # docker format: the OCI format has no HEALTHCHECK.
  "${PODMAN[@]}" build -q --format docker "${ULIMITS[@]}" --build-arg "BASE=$base" --target "$TARGET" \
    -t "$IMAGE" -f Containerfile . >/dev/null
  say "built $IMAGE ($TARGET) on $base in $(elapsed "$started") s"
}

build
if [ "$ACTION" = test ]; then
  "$PYTHON" scripts/image_check.py --image "$IMAGE" --target "$TARGET" --healthy-s "${HEALTHY_S:-5}" -- \
    "${PODMAN[@]}" run "${ULIMITS[@]}"
fi
