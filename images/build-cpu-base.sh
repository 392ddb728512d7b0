#!/usr/bin/env bash
# Build the CPU base image (Python, PyTorch and torchvision) and print its tag on the last line.
# The tag carries a hash of every input, so an unchanged recipe is never rebuilt; the image is also
# tagged REPO:latest, so a job.yaml can name `launch-cpu-base:latest`.
#
#   BASE=python:3.11-slim images/build-cpu-base.sh   # where a registry can be reached
#   images/build-cpu-base.sh                         # default: no registry needed; Debian is made
#                                                    # with debootstrap from this machine's apt mirror
#   REQUIREMENTS=FILE REPO=NAME images/build-cpu-base.sh   # the same recipe with other packages
#                                                    # (the tests' lab uses a torch-only one)
# Wheels are resolved on this machine (pip download, with this machine's pip configuration) and
# installed in the build without any index, so the build needs no network.
set -euo pipefail
[ -z "${REQUIREMENTS:-}" ] || REQUIREMENTS=$(realpath "$REQUIREMENTS")  # before the cd below
cd "$(dirname "$0")"

BASE=${BASE:-debootstrap}
SUITE=${SUITE:-bookworm}
REPO=${REPO:-launch-cpu-base}
REQUIREMENTS=${REQUIREMENTS:-$PWD/cpu/requirements.txt}
CACHE=${LAUNCH_CACHE:-/var/cache/launch}
INCLUDE=python3,python3-venv,python3-pip

log() { echo "build-cpu-base: $*" >&2; }

inputs_hash() {
    { cat build-cpu-base.sh cpu/Dockerfile "$REQUIREMENTS"; echo "$BASE $SUITE $INCLUDE"; } | sha256sum | cut -c1-12
}

apt_mirror() {
    # The first Debian mirror this machine's apt uses (deb822 or one-line format).
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 ~ /^[a-z]+$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || { log "no apt mirror found in /etc/apt; set BASE to an image you can pull"; exit 1; }
    echo "$uri"
}

debian_image() {
    # A minimal Debian with python3, made without a registry; cached as its own image.
    local tag="launch-debian:$SUITE-$(printf '%s' "$SUITE $INCLUDE" | sha256sum | cut -c1-12)"
    if ! docker image inspect "$tag" >/dev/null 2>&1; then
        local root
        root=$(mktemp -d "${TMPDIR:-/tmp}/launch-rootfs.XXXXXX")
        trap 'rm -rf "$root"' RETURN
        log "debootstrap $SUITE into $root (about a minute)"
        debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$(apt_mirror)" >&2
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" -c . | docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["/bin/bash"]' - "$tag" >&2
    fi
    echo "$tag"
}

tag="$REPO:$(inputs_hash)"
if docker image inspect "$tag" >/dev/null 2>&1; then
    log "$tag is up to date"
    docker tag "$tag" "$REPO:latest"
    echo "$tag"
    exit 0
fi

base_image=$BASE
[ "$BASE" = debootstrap ] && base_image=$(debian_image)

context=$(mktemp -d "${TMPDIR:-/tmp}/launch-cpu-base.XXXXXX")
server=
cleanup() { [ -z "$server" ] || kill "$server" 2>/dev/null || true; rm -rf "$context"; }
trap cleanup EXIT
wheels="$CACHE/wheelhouse-$(sha256sum "$REQUIREMENTS" | cut -c1-12)"
if [ ! -e "$wheels/.complete" ]; then
    log "resolving wheels into $wheels"
    mkdir -p "$wheels"
    if ! python3 -m pip download --quiet --only-binary=:all: -d "$wheels" -r "$REQUIREMENTS" 2>"$context/pip.log"; then
        grep -v "is ignored: it is neither a file nor a directory" "$context/pip.log" >&2 || true
        log "pip could not resolve $REQUIREMENTS"
        exit 1
    fi
    touch "$wheels/.complete"
fi
cp "$REQUIREMENTS" "$context/requirements.txt"
# The wheels are served on loopback for the build (host networking): they never enter the context or a layer.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$wheels" "$port" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break; sleep 0.1; done
log "building $tag on $base_image"
docker build --quiet --network host --build-arg "BASE=$base_image" --build-arg "WHEELS_URL=http://127.0.0.1:$port/" \
    -f cpu/Dockerfile -t "$tag" -t "$REPO:latest" "$context" >&2
echo "$tag"
