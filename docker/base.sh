#!/bin/sh
# Local base image for docker/Dockerfile when no container registry is reachable: a Debian bookworm minbase
# root file system (debootstrap from a Debian mirror), trimmed and imported into podman as `xlir-base`.
#   docker/base.sh                 # skips the work when the image exists
#   docker/base.sh --force         # rebuild it
# Environment: XLIR_BASE_IMAGE (xlir-base), DEBIAN_MIRROR (the mirror of this machine's apt sources, else
# http://deb.debian.org/debian), DEBIAN_SECURITY (http://deb.debian.org/debian-security), DEBIAN_SUITE (bookworm).
# Needs root, `debootstrap` and `podman` (`apt-get install -y podman debootstrap`).
set -eu

IMAGE=${XLIR_BASE_IMAGE:-xlir-base}
# the Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org
host_mirror() {
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        [ -r "$f" ] || continue
        sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\/\{0,1\}\)$/\1/p' \
            -e 's/^deb[[:space:]]\{1,\}\([^[:space:]]*\/debian\/\{0,1\}\)[[:space:]].*/\1/p' "$f" | head -n 1
    done | head -n 1
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
SUITE=${DEBIAN_SUITE:-bookworm}

if [ "${1:-}" != "--force" ] && podman image exists "$IMAGE"; then
    echo "base image $IMAGE exists (docker/base.sh --force rebuilds it)"
    exit 0
fi
for tool in debootstrap podman; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "error: $tool is not installed: run \`apt-get install -y podman debootstrap\` (as root)" >&2
        exit 2
    }
done

ROOTFS=$(mktemp -d "${TMPDIR:-/var/tmp}/xlir-rootfs.XXXXXX")
trap 'rm -rf "$ROOTFS"' EXIT INT TERM
echo "debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes)"
nice -n 5 debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
    tail -20 "$ROOTFS.log" >&2
    echo "error: debootstrap failed (full log: $ROOTFS.log); is $MIRROR reachable? set DEBIAN_MIRROR" >&2
    exit 1
}
rm -f "$ROOTFS.log"

# the same mirror inside the image, with the point-release and security updates
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
# packages installed later skip documentation, manuals and translations (as the official slim images do)
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-xlir-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
# no package cache kept by apt in the image
cat >"$ROOTFS/etc/apt/apt.conf.d/01-xlir-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Binary::apt::APT::Keep-Downloaded-Packages "false";
EOF
# trim what debootstrap left: the downloaded .debs, the package lists, docs, manuals and translations
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/var/log/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
find "$ROOTFS/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true

tar --numeric-owner -C "$ROOTFS" -c . | podman import --message "debootstrap minbase $SUITE" - "$IMAGE" >/dev/null
echo "base image $IMAGE: $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
