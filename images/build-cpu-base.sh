#!/usr/bin/env bash
# Build the CPU base image (Python + PyTorch CPU build) and print its tag on the last line.
# The tag carries a hash of every input, so an unchanged recipe is never rebuilt.
#
#   BASE=python:3.11-slim images/build-cpu-base.sh   # where a registry can be reached
#   images/build-cpu-base.sh                         # default: no registry needed; Debian is made
#                                                    # with debootstrap from this machine's apt mirror
# Wheels are resolved on this machine (pip download, with this machine's pip configuration) and
# installed in the build without any index, so the build needs no network.
set -euo pipefail
cd "$(dirname "$0")"

BASE=${BASE:-debootstrap}
SUITE=${SUITE:-bookworm}
REPO=${REPO:-launch-cpu-base}
CACHE=${LAUNCH_CACHE:-/var/cache/launch}
INCLUDE=python3,python3-venv,python3-pip

log() { echo "build-cpu-base: $*" >&2; }

inputs_hash() {
    { cat build-cpu-base.sh cpu/Dockerfile cpu/requirements.txt; echo "$BASE $SUITE $INCLUDE"; } | sha256sum | cut -c1-12
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
    echo "$tag"
    exit 0
fi

base_image=$BASE
[ "$BASE" = debootstrap ] && base_image=$(debian_image)

context=$(mktemp -d "${TMPDIR:-/tmp}/launch-cpu-base.XXXXXX")
trap 'rm -rf "$context"' EXIT
mkdir -p "$CACHE/wheelhouse"
log "resolving wheels into $CACHE/wheelhouse"
python3 -m pip download --quiet -d "$CACHE/wheelhouse" -r cpu/requirements.txt 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
cp -r "$CACHE/wheelhouse" "$context/wheelhouse"
cp cpu/requirements.txt "$context/requirements.txt"
log "building $tag on $base_image"
docker build --quiet --build-arg "BASE=$base_image" -f cpu/Dockerfile -t "$tag" "$context" >&2
echo "$tag"
