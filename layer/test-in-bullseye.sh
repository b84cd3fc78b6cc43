#!/usr/bin/env bash
# Test the self-contained layer where it must run: a fresh minbase Debian
# bullseye root (glibc 2.31, older than Amazon Linux 2023's 2.34) with no
# Python at all. The layer is unpacked in a directory that is not /opt (it
# must run from anywhere), mounted read-only (as /opt is in Lambda), and run
# as an unprivileged user with only Lambda's variables (env -i).
#
# Then layer/lifecycle_check.py, on the host, runs it under chroot through
# Lambda's lifecycle against the Extensions API emulator and moto's server,
# both on the host's loopback (the root shares the network namespace): init,
# INVOKE, a secret served, SHUTDOWN; bad configuration; TLS trust; start-up
# times (median of $SECRETCACHE_LAYER_RUNS, default 10). The slim layer runs
# through one lifecycle with each Python 3.12+ found on the host.
#
# Usage (as root, at the root of a checkout): bash layer/test-in-bullseye.sh [LAYER.zip]
# $PYTHON: a Python with moto[server], boto3 and trustme for the driver (tox
# passes its own); otherwise a venv is made once under the cache.
# Exits non-zero when any check fails.
set -euo pipefail

LAYER_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
PROJECT=$(pwd -P)
# shellcheck source=layer/lib.sh
. "$LAYER_DIR/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
[ -f "$PROJECT/secretcache/extensions_emulator.py" ] || die "run at the root of a secretcache checkout"
ZIP=$(readlink -f -- "${1:-$PROJECT/dist/secretcache-layer.zip}")
SLIM_ZIP=$PROJECT/dist/secretcache-layer-python.zip
[ -f "$ZIP" ] || die "no layer zip at $ZIP (run layer/build.sh first)"
TEST_ROOT=$CACHE/bullseye-test
LAYER=/srv/unpacked-elsewhere/layer # inside the test root
RUNS=${SECRETCACHE_LAYER_RUNS:-10}
FAILED=0

trap 'umount_under "$TEST_ROOT"' EXIT

run_in_test_root() { # as nobody (Lambda runs extensions as a non-root user)
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot --userspec=65534:65534 "$TEST_ROOT" \
        /usr/bin/env -i PATH="$ROOT_PATH" "$@"
}
check() { # check NAME CMD...: run, report, remember a failure
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        printf 'ok   %s\n' "$name"
        [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/     | /'
    else
        printf 'FAIL %s\n' "$name"
        printf '%s\n' "$out" | sed 's/^/     | /'
        FAILED=1
    fi
}

# The driver's Python: $PYTHON when it has what the driver needs, else a venv
# made (once) from the host's python3.
driver_python() {
    local need='import moto.server, boto3, trustme'
    if [ -n "${PYTHON:-}" ] && "$PYTHON" -c "$need" 2>/dev/null; then
        echo "$PYTHON"
        return 0
    fi
    local venv=$CACHE/driver-venv
    if ! "$venv/bin/python" -c "$need" 2>/dev/null; then
        log "making the driver's venv at $venv (moto[server], boto3, trustme)"
        rm -rf -- "$venv"
        "${HOST_PYTHON:-python3}" -m venv "$venv" >&2
        "$venv/bin/pip" install -q 'moto[server]>=5.0' boto3 'trustme>=1.1' >&2
    fi
    echo "$venv/bin/python"
}

# Every distinct Python 3.12+ on the host (pyenv's versions included).
slim_pythons() {
    local p seen=" "
    for p in $(command -v python3.12 python3.13 python3.14 2>/dev/null || true) \
        /root/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/bin/python3.1[2-9] /usr/local/bin/python3.1[2-9]; do
        [ -x "$p" ] || continue
        local real
        # The interpreter's own path: a pyenv shim and its target are one.
        real=$("$p" -c 'import os, sys; assert sys.version_info >= (3, 12); print(os.path.realpath(sys.executable))' 2>/dev/null) ||
            continue
        case "$seen" in *" $real "*) continue ;; esac
        seen="$seen$real "
        echo "$p"
    done
}

START=$(date +%s)
ensure_host_tools
make_root "$TEST_ROOT" # minbase only: no python, nothing the layer could lean on
umount_under "$TEST_ROOT"

if in_root "$TEST_ROOT" sh -c 'command -v python3 || command -v python || ls -d /usr/lib/python3* /usr/lib/x86_64-linux-gnu/libpython* /usr/local/lib/python3*' 2>/dev/null; then
    die "the test root has a Python; it must not"
fi

check "extensions/secretcache is -rwxr-xr-x in the zip" \
    sh -c "zipinfo '$ZIP' extensions/secretcache | grep -q '^-rwxr-xr-x '"

log "unpacking $(basename "$ZIP") at $LAYER in the test root, read-only"
# What an earlier run may have left (lifecycle_check.py cleans up after itself).
rm -rf -- "$TEST_ROOT/srv/unpacked-elsewhere" "$TEST_ROOT/srv/layer-with-test-ca" \
    "$TEST_ROOT/srv/alias" "$TEST_ROOT/srv/test-ca.pem"
mkdir -p "$TEST_ROOT$LAYER"
unzip -q "$ZIP" -d "$TEST_ROOT$LAYER"
# Lambda's /opt is read-only: nothing may need to write next to the bundle
# (bytecode, Twisted's plugin cache).
mount --bind "$TEST_ROOT$LAYER" "$TEST_ROOT$LAYER"
mount -o remount,bind,ro "$TEST_ROOT$LAYER"
mount_proc "$TEST_ROOT"

ext=$LAYER/extensions/secretcache
check "$ext is executable after unzip" test -x "$TEST_ROOT$ext"
check "$ext --version" run_in_test_root "$ext" --version
check "$ext --version from / via a relative path" \
    run_in_test_root sh -c "cd / && .$ext --version"
check "self-test (imports, loopback HTTP, TLS context, signing, extension name)" \
    sh -c "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot --userspec=65534:65534 '$TEST_ROOT' \
        /usr/bin/env -i SECRETCACHE_LAYER_SELFTEST=1 '$ext' | tee /dev/stderr | grep -q '\"extension_name\": \"secretcache\"'"
# Bytecode ships precompiled: a .py without bytecode would be compiled at
# every start, since the read-only layer keeps nothing.
uncompiled() {
    local py base n=0 total
    total=$(find "$TEST_ROOT$LAYER" -name '*.pyc' | wc -l)
    while IFS= read -r -d '' py; do
        base=$(basename "$py" .py)
        [ -f "${py}c" ] || compgen -G "$(dirname "$py")/__pycache__/$base.cpython-*.pyc" >/dev/null ||
            { echo "no bytecode for ${py#"$TEST_ROOT"}"; n=$((n + 1)); }
    done < <(find "$TEST_ROOT$LAYER" -name '*.py' -print0)
    echo "$total .pyc files"
    ((n == 0 && total > 0))
}
check "bytecode precompiled (no module left to compile at start)" uncompiled

PY=$(driver_python)
slim_args=()
if [ -f "$SLIM_ZIP" ]; then
    slim_args+=(--slim-zip "$SLIM_ZIP")
    while read -r p; do
        [ -n "$p" ] && slim_args+=(--slim-python "$p")
    done < <(slim_pythons)
else
    log "no $SLIM_ZIP: the slim layer is not tested"
fi
log "lifecycle checks with $PY"
if ! "$PY" "$LAYER_DIR/lifecycle_check.py" --root "$TEST_ROOT" --layer "$LAYER" \
    --runs "$RUNS" "${slim_args[@]}"; then
    FAILED=1
fi

log "took $(($(date +%s) - START)) s"
if ((FAILED)); then
    die "some layer tests failed"
fi
log "all layer tests passed"
