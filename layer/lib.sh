# shellcheck shell=bash
# Shared helpers for layer/build.sh and layer/test-in-bullseye.sh (sourced).
# Roots are Debian bullseye (glibc 2.31), the oldest base the layer supports:
# what builds and runs there runs on Amazon Linux 2023 (glibc 2.34).

# shellcheck disable=SC2034 # used by the scripts that source this file
CACHE=${SECRETCACHE_LAYER_CACHE:-/var/cache/secretcache-layer}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
ROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '==> [%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Install what the host needs (a fresh machine may lack all of it).
ensure_host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v zip >/dev/null || missing+=(zip)
    command -v unzip >/dev/null || missing+=(unzip)
    command -v objdump >/dev/null || missing+=(binutils)
    command -v patch >/dev/null || missing+=(patch)
    [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
    if ((${#missing[@]})); then
        log "installing host tools: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# Unmount everything mounted under a root, deepest first. Safe to call often;
# also guards rm -rf of a root against deleting through a live mount.
umount_under() {
    local root
    root=$(readlink -m -- "$1")
    awk -v r="$root" 'index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
}

# Mount /proc in a root (dpkg scripts and the CPython build expect it). The
# caller's EXIT trap must call umount_under. debootstrap already made /dev's
# nodes (null, zero, urandom, ...), so the host's /dev is never bind-mounted.
mount_proc() {
    local root=$1
    mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
}

# Run a command in a root with a clean environment: the host's variables (pip's
# CA path, find-links to host folders) point at things the root lacks.
in_root() {
    local root=$1
    shift
    env -i HOME=/root PATH="$ROOT_PATH" LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
        chroot "$root" "$@"
}

# make_root DIR [PKG...]: a minbase bullseye root with PKGs installed, made
# once and reused while its marker exists (the marker is written last, so a
# half-made root is redone).
make_root() {
    local root=$1
    shift
    local marker="$root/.secretcache-root-ok"
    local want="$*"
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
        log "reusing root $root"
        return 0
    fi
    if [ -f "$marker" ] && (($#)); then
        # Same root, another package list: add what is missing.
        log "updating packages in root $root"
        mount_proc "$root"
        in_root "$root" apt-get update -qq
        in_root "$root" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
        in_root "$root" apt-get clean
        umount_under "$root"
        printf '%s' "$want" >"$marker"
        return 0
    fi
    log "debootstrap bullseye minbase -> $root"
    umount_under "$root"
    rm -rf -- "$root"
    mkdir -p "$(dirname "$root")"
    debootstrap --variant=minbase bullseye "$root" "$DEBIAN_MIRROR" >"$root.debootstrap.log" 2>&1 ||
        { tail -20 "$root.debootstrap.log" >&2; die "debootstrap failed (log: $root.debootstrap.log)"; }
    # Security updates matter for what the layer bundles (libssl, zlib, ...).
    cat >"$root/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bullseye main
deb $DEBIAN_MIRROR bullseye-updates main
deb $DEBIAN_SECURITY_MIRROR bullseye-security main
EOF
    mount_proc "$root"
    in_root "$root" apt-get update -qq
    in_root "$root" apt-get -y -qq dist-upgrade >/dev/null
    if (($#)); then
        log "installing in root: $*"
        in_root "$root" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    fi
    in_root "$root" apt-get clean
    umount_under "$root"
    printf '%s' "$want" >"$marker"
}
