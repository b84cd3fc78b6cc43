#!/usr/bin/env bash
# Test the self-contained layer where it must run: a fresh minbase Debian
# bullseye root (glibc 2.31, older than Amazon Linux 2023's 2.34) with no
# Python at all. The layer is unpacked at /opt (read-only, as in Lambda) and at
# another directory, and run as an unprivileged user with an empty environment.
# Usage (as root, at the root of a checkout): bash layer/test-in-bullseye.sh [LAYER.zip]
set -euo pipefail

LAYER_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
PROJECT=$(pwd -P)
# shellcheck source=layer/lib.sh
. "$LAYER_DIR/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
ZIP=$(readlink -f -- "${1:-$PROJECT/dist/secretcache-layer.zip}")
[ -f "$ZIP" ] || die "no layer zip at $ZIP (run layer/build.sh first)"
TEST_ROOT=$CACHE/bullseye-test
ELSEWHERE=/srv/unpacked-elsewhere/layer   # inside the test root
FAILED=0

trap 'umount_under "$TEST_ROOT"' EXIT

# Like in_root, but as nobody: Lambda runs extensions as a non-root user.
as_nobody() {
    env -i HOME=/tmp PATH="$ROOT_PATH" LANG=C.UTF-8 "$@"
}
run_in_test_root() {
    as_nobody chroot --userspec=65534:65534 "$TEST_ROOT" "$@"
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

ensure_host_tools
make_root "$TEST_ROOT" # minbase only: no python, nothing the layer could lean on
umount_under "$TEST_ROOT"

if in_root "$TEST_ROOT" sh -c 'command -v python3 || command -v python || ls -d /usr/lib/python3* /usr/lib/x86_64-linux-gnu/libpython*' 2>/dev/null; then
    die "the test root has a Python; it must not"
fi

log "unpacking $(basename "$ZIP") at /opt and at $ELSEWHERE in the test root"
rm -rf -- "$TEST_ROOT/opt" "$TEST_ROOT/srv/unpacked-elsewhere"
mkdir -p "$TEST_ROOT/opt" "$TEST_ROOT$ELSEWHERE"
unzip -q "$ZIP" -d "$TEST_ROOT/opt"
unzip -q "$ZIP" -d "$TEST_ROOT$ELSEWHERE"
# Lambda's /opt is read-only: nothing may need to write next to the bundle
# (bytecode, Twisted's plugin cache).
mount --bind "$TEST_ROOT/opt" "$TEST_ROOT/opt"
mount -o remount,bind,ro "$TEST_ROOT/opt"
mount_proc "$TEST_ROOT"

for dir in /opt "$ELSEWHERE"; do
    ext=$dir/extensions/secretcache
    check "$ext is executable (mode kept in the zip)" test -x "$TEST_ROOT$ext"
    check "$ext --version" run_in_test_root "$ext" --version
    # From another working directory, through a relative path.
    check "$ext --version from / via a relative path" \
        run_in_test_root sh -c "cd / && .$ext --version"
    check "$ext self-test (imports, loopback HTTP, TLS context, signing)" \
        run_in_test_root env SECRETCACHE_LAYER_SELFTEST=1 "$ext"
    check "$ext passes its file name as SECRETCACHE_EXTENSION_NAME" \
        sh -c "env -i PATH='$ROOT_PATH' chroot --userspec=65534:65534 '$TEST_ROOT' env SECRETCACHE_LAYER_SELFTEST=1 '$ext' | grep -q '\"extension_name\": \"secretcache\"'"
done

start=$(date +%s%N)
run_in_test_root /opt/extensions/secretcache --version >/dev/null
log "--version from read-only /opt took $((($(date +%s%N) - start) / 1000000)) ms"

# ---------------------------------------------------------------------------
# HOOK: Lambda lifecycle test (to be filled in once the Extensions API emulator
# exists in secretcache.testing). Plan: on the host, start moto's server and
# the emulator on free loopback ports (the chroot shares the host's network
# namespace, so 127.0.0.1 is the same), then run in the test root
#   run_in_test_root env AWS_LAMBDA_RUNTIME_API=127.0.0.1:$EMU_PORT \
#       AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_SESSION_TOKEN=tok \
#       AWS_REGION=us-east-1 AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT \
#       SECRETCACHE_PORT=$CACHE_PORT /opt/extensions/secretcache &
# check register (name "secretcache"), a GET of a secret through the cache,
# an INVOKE and a SHUTDOWN answered by exit 0 before deadlineMs; stop every
# process this started, by pid.
lifecycle_test() {
    log "lifecycle test: not written yet (needs the Extensions API emulator)"
}
lifecycle_test
# ---------------------------------------------------------------------------

if ((FAILED)); then
    die "some layer tests failed"
fi
log "all layer tests passed"
