#!/usr/bin/env bash
# Build the Lambda layers of secretcache from the checkout this is run in:
#   dist/secretcache-layer.zip         self-contained (own CPython, glibc <= 2.31)
#   dist/secretcache-layer-python.zip  slim, for Python 3.12+ runtimes
# Usage (as root, at the root of a checkout): bash layer/build.sh
# Roots, the CPython build and pip's cache are kept under
# $SECRETCACHE_LAYER_CACHE (default /var/cache/secretcache-layer), so reruns
# only redo the pip install, PyInstaller and the zips.
# SECRETCACHE_LAYER_ONLY=full|python builds just one of the two layers.
set -euo pipefail

LAYER_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
PROJECT=$(pwd -P)
# shellcheck source=layer/lib.sh
. "$LAYER_DIR/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
[ -f "$PROJECT/pyproject.toml" ] || die "run at the root of a secretcache checkout"
[ -f "$PROJECT/secretcache/__main__.py" ] || die "secretcache/__main__.py missing: the layer's entry point is python -m secretcache"

ONLY=${SECRETCACHE_LAYER_ONLY:-}
BUILD_ROOT=$CACHE/bullseye-build
PY_SERIES=3.11                     # Debian bookworm's python3.11 source package
PY_PREFIX=/opt/python$PY_SERIES    # inside the build root
# bullseye's OpenSSL is 1.1.1, end of life upstream: CPython's ssl and hashlib
# modules get the 3.5 LTS series instead, built in the root from the upstream
# tarball of Debian trixie's openssl source package. (Twisted's TLS uses the
# OpenSSL inside the cryptography wheel, a current 3.x either way.)
OPENSSL_PREFIX=/opt/openssl3       # inside the build root
OPENSSL_SUITES=("$DEBIAN_SECURITY_MIRROR trixie-security" "$DEBIAN_MIRROR trixie")
PYINSTALLER_REQ=${PYINSTALLER_REQ:-pyinstaller>=6.10,<7}
HOST_PYTHON=${HOST_PYTHON:-python3}
# The slim layer carries extension modules for each of these; 3.12+ only.
SLIM_PYTHONS=${SLIM_PYTHONS:-3.12 3.13}
# glibc ceilings: the full layer is proven on bullseye; AL2023 has 2.34.
FULL_GLIBC_MAX=2.31
SLIM_GLIBC_MAX=2.34
DIST=$PROJECT/dist
# Debian's CPython tarball drops the bundled expat: use bullseye's.
BUILD_DEPS=(build-essential pkg-config libssl-dev zlib1g-dev libffi-dev libbz2-dev liblzma-dev
    libsqlite3-dev libreadline-dev uuid-dev libexpat1-dev binutils ca-certificates)

trap 'umount_under "$BUILD_ROOT"' EXIT

# Files of botocore's data/ that secretcache loads: the Secrets Manager model
# and endpoint rules, partitions, and what Session / the credential chain read
# (STS, for web-identity and assume-role profiles). Everything else goes.
prune_botocore_data() {
    local data=$1
    [ -d "$data" ] || die "no botocore data dir at $data"
    find "$data" -mindepth 1 -maxdepth 1 \
        ! -name secretsmanager ! -name sts \
        ! -name 'partitions.json*' ! -name 'endpoints.json*' \
        ! -name 'sdk-default-configuration.json*' ! -name '_retry.json*' \
        -exec rm -rf {} +
    [ -d "$data/secretsmanager" ] || die "botocore data has no secretsmanager model"
}

# Pip settings for the build root: the host's index (http/https only) and its
# CA bundle, which may hold a proxy's CA that the root's bundle lacks.
write_root_pip_conf() {
    local root=$1 cert="${PIP_CERT:-}" index="" extra=""
    if [ -z "$cert" ] && command -v "$HOST_PYTHON" >/dev/null; then
        cert=$("$HOST_PYTHON" -m pip config get global.cert 2>/dev/null || true)
    fi
    [ -n "$cert" ] && [ -f "$cert" ] || cert=/etc/ssl/certs/ca-certificates.crt
    cp -- "$cert" "$root/etc/secretcache-host-ca.crt"
    if command -v "$HOST_PYTHON" >/dev/null; then
        local conf
        conf=$("$HOST_PYTHON" -m pip config list 2>/dev/null || true)
        index=$(printf '%s\n' "$conf" | sed -n "s/^[^=]*\.index-url='\(.*\)'$/\1/p" | tr ' ' '\n' | grep -E '^https?://' | head -1 || true)
        extra=$(printf '%s\n' "$conf" | sed -n "s/^[^=]*\.extra-index-url='\(.*\)'$/\1/p" | tr ' ' '\n' | grep -E '^https?://' | tr '\n' ' ' || true)
    fi
    index=${PIP_INDEX_URL:-$index}
    {
        echo "[global]"
        echo "cert = /etc/secretcache-host-ca.crt"
        echo "timeout = 180"
        echo "disable-pip-version-check = true"
        [ -z "$index" ] || echo "index-url = $index"
        [ -z "$extra" ] || echo "extra-index-url = $extra"
    } >"$root/etc/pip.conf"
}

# CPython's source is the .orig tarball of Debian's python3.11 (the one
# registry that carries it), plus Debian's upstream security patches (its
# CVE-* series), fetched on the host through a private deb-src list.
fetch_cpython_source() {
    local d=$CACHE/cpython-src
    local apt_opts=(-o "Dir::Etc::SourceList=$d/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/apt-cache" -o Debug::NoLocking=1
        -o APT::Sandbox::User=root)
    if compgen -G "$d/dl/*.dsc" >/dev/null && [ -z "${SECRETCACHE_LAYER_REFRESH_SRC:-}" ]; then
        return 0
    fi
    log "fetching CPython source (Debian python$PY_SERIES source package)"
    rm -rf -- "$d"
    mkdir -p "$d/lists/partial" "$d/apt-cache/archives/partial" "$d/dl.tmp"
    cat >"$d/sources.list" <<EOF
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_SECURITY_MIRROR bookworm-security main
EOF
    apt-get "${apt_opts[@]}" update -qq
    if ! (cd "$d/dl.tmp" && apt-get "${apt_opts[@]}" source --download-only -qq "python$PY_SERIES" >/dev/null 2>"$d/first-try.log"); then
        # The security archive's index can run ahead of its pool (seen here:
        # a 404 on the newest .dsc); the point release in main still has the
        # security fixes up to it.
        log "security archive source not fetchable; using bookworm main's"
        sed -i '/-security/d' "$d/sources.list"
        rm -rf "$d/lists" "$d/dl.tmp" && mkdir -p "$d/lists/partial" "$d/dl.tmp"
        apt-get "${apt_opts[@]}" update -qq
        (cd "$d/dl.tmp" && apt-get "${apt_opts[@]}" source --download-only -qq "python$PY_SERIES" >/dev/null)
    fi
    mv "$d/dl.tmp" "$d/dl"
}

# Only the upstream tarball is used. apt checks it against the signed index;
# a mirror whose pool runs behind its index may lack the Debian part (seen
# here), which fails apt-get but keeps the checked tarball.
fetch_openssl_source() {
    local d=$CACHE/openssl-src suite
    if compgen -G "$d/dl/openssl_3.*.orig.tar.gz" >/dev/null && [ -z "${SECRETCACHE_LAYER_REFRESH_SRC:-}" ]; then
        return 0
    fi
    log "fetching OpenSSL 3 source (Debian trixie's openssl source package)"
    rm -rf -- "$d"
    for suite in "${OPENSSL_SUITES[@]}"; do
        local apt_opts=(-o "Dir::Etc::SourceList=$d/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/apt-cache" -o Debug::NoLocking=1
            -o APT::Sandbox::User=root)
        rm -rf -- "$d/lists" "$d/dl.tmp"
        mkdir -p "$d/lists/partial" "$d/apt-cache/archives/partial" "$d/dl.tmp"
        echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $suite main" >"$d/sources.list"
        apt-get "${apt_opts[@]}" update -qq 2>/dev/null || continue
        (cd "$d/dl.tmp" && apt-get "${apt_opts[@]}" source --download-only -qq openssl >/dev/null 2>&1) || true
        if compgen -G "$d/dl.tmp/openssl_3.*.orig.tar.gz" >/dev/null; then
            mv "$d/dl.tmp" "$d/dl"
            return 0
        fi
    done
    rm -rf -- "$d"
    return 1
}

# Echoes the tarball's name, or "bullseye-libssl1.1" when there is none.
build_openssl() {
    local tarball stamp=$BUILD_ROOT$OPENSSL_PREFIX/.secretcache-built src=$BUILD_ROOT/build/openssl
    if ! fetch_openssl_source; then
        log "WARNING: no OpenSSL 3 source could be fetched; CPython's ssl module falls back to bullseye's OpenSSL 1.1.1 (end of life upstream)"
        echo bullseye-libssl1.1
        return 0
    fi
    tarball=$(compgen -G "$CACHE/openssl-src/dl/openssl_3.*.orig.tar.gz" | head -1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(basename "$tarball")" ]; then
        log "reusing $(basename "$tarball") in the build root"
        basename "$tarball"
        return 0
    fi
    log "building OpenSSL from $(basename "$tarball") in the build root (a few minutes)"
    rm -rf -- "$src" "$BUILD_ROOT$OPENSSL_PREFIX"
    mkdir -p "$src"
    tar -xf "$tarball" -C "$src" --strip-components=1
    mount_proc "$BUILD_ROOT"
    # The rpath lets CPython's modules find it in the root; PyInstaller then
    # bundles it.
    in_root "$BUILD_ROOT" sh -ec "
        cd /build/openssl
        ./Configure linux-x86_64 --prefix=$OPENSSL_PREFIX --libdir=lib \
            --openssldir=$OPENSSL_PREFIX/ssl shared no-tests no-docs \
            -Wl,-rpath,$OPENSSL_PREFIX/lib
        make -s -j$(nproc) build_sw
        make -s install_sw
        cp LICENSE.txt $OPENSSL_PREFIX/LICENSE.txt
        $OPENSSL_PREFIX/bin/openssl version
    " >"$CACHE/openssl-build.log" 2>&1 || { tail -30 "$CACHE/openssl-build.log" >&2; die "OpenSSL build failed (log: $CACHE/openssl-build.log)"; }
    rm -rf -- "$src"
    basename "$tarball" >"$stamp"
    basename "$tarball"
}

build_cpython() {
    local openssl=$1
    local dl=$CACHE/cpython-src/dl stamp dsc src=$BUILD_ROOT/build/cpython
    dsc="$(basename "$(compgen -G "$dl/*.dsc" | head -1)") with $openssl"
    stamp="$BUILD_ROOT$PY_PREFIX/.secretcache-built"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$dsc" ]; then
        log "reusing CPython $dsc in the build root"
        return 0
    fi
    log "building CPython from $dsc in the build root (a few minutes)"
    rm -rf -- "$src" "$BUILD_ROOT$PY_PREFIX"
    mkdir -p "$src"
    tar -xf "$(compgen -G "$dl/*.orig.tar.*" | head -1)" -C "$src" --strip-components=1
    tar -xf "$(compgen -G "$dl/*.debian.tar.*" | head -1)" -C "$src"
    # Debian's own patches (multiarch layout etc.) do not fit a private
    # prefix; its series ends with upstream security fixes, which do.
    local p f
    sed -n '/^CVE-/,$p' "$src/debian/patches/series" | sed 's/[[:space:]]*#.*//' | grep -v '^$' |
        while read -r p; do
            patch -d "$src" -p1 -s --no-backup-if-mismatch <"$src/debian/patches/$p" ||
                die "patch $p does not apply"
        done
    # Some fixes (CVE-2026-4224 in pyexpat.c) use internal headers, which
    # need Py_BUILD_CORE_MODULE: Debian builds pyexpat into libpython with
    # core flags, 3.11.2's setup.py builds it as a plain extension.
    # Give such a module the guard the other stdlib modules carry.
    sed -n '/^CVE-/,$p' "$src/debian/patches/series" | sed 's/[[:space:]]*#.*//' | grep -v '^$' |
        while read -r p; do
            # Files under Modules/ into which this patch adds a pycore_ include.
            awk '/^\+\+\+ b\// { f = substr($2, 3) } /^\+#include "pycore_/ && f ~ /^Modules\/[^\/]*\.c$/ { print f }' \
                "$src/debian/patches/$p"
        done | sort -u | while read -r f; do
        if ! grep -q Py_BUILD_CORE "$src/$f"; then
            log "defining Py_BUILD_CORE_MODULE in $f (it includes internal headers since a security patch)"
            sed -i '1i #ifndef Py_BUILD_CORE_BUILTIN\n#  define Py_BUILD_CORE_MODULE 1\n#endif' "$src/$f"
        fi
    done
    mount_proc "$BUILD_ROOT"
    local ssl_opts="" ssl_check="assert ssl.OPENSSL_VERSION_INFO[0] >= 1"
    if [ "$openssl" != bullseye-libssl1.1 ]; then
        ssl_opts="--with-openssl=$OPENSSL_PREFIX --with-openssl-rpath=auto"
        ssl_check="assert ssl.OPENSSL_VERSION_INFO[0] == 3, ssl.OPENSSL_VERSION"
    fi
    # --enable-shared: PyInstaller bundles libpython; the rpath lets the
    # root's python find it without LD_LIBRARY_PATH.
    in_root "$BUILD_ROOT" sh -ec "
        cd /build/cpython
        ./configure -q --prefix=$PY_PREFIX --enable-shared --disable-test-modules \
            --with-system-expat --with-ensurepip=install $ssl_opts \
            LDFLAGS=-Wl,-rpath,$PY_PREFIX/lib
        make -s -j$(nproc)
        make -s install
        # setup.py only warns about a module it could not build.
        $PY_PREFIX/bin/python3 -c 'import pyexpat, _ssl, _hashlib, zlib, _ctypes, _bz2, _lzma, _decimal, _uuid, ssl; $ssl_check'
    " >"$CACHE/cpython-build.log" 2>&1 || { tail -30 "$CACHE/cpython-build.log" >&2; die "CPython build failed (log: $CACHE/cpython-build.log)"; }
    rm -rf -- "$src"
    printf '%s' "$dsc" >"$stamp"
}

# The bundle's own licence and those of what it carries: Python packages keep
# theirs in their dist-info folders; CPython and the native libraries get
# theirs here, a Debian library's from its package's copyright file.
collect_licenses() {
    local bundle=$1 dir=$1/LICENSES lib pkg
    mkdir -p "$dir"
    cp -- "$PROJECT/LICENSE" "$dir/secretcache.txt"
    cp -- "$BUILD_ROOT$PY_PREFIX/lib/python$PY_SERIES/LICENSE.txt" "$dir/cpython.txt"
    for lib in "$bundle"/_internal/lib*.so*; do
        lib=$(basename "$lib")
        case $lib in
        libpython*) continue ;;
        libssl.so.3 | libcrypto.so.3)
            cp -- "$BUILD_ROOT$OPENSSL_PREFIX/LICENSE.txt" "$dir/openssl.txt"
            continue
            ;;
        esac
        pkg=$(in_root "$BUILD_ROOT" dpkg -S "$lib" 2>/dev/null | grep -v -- '-dev:' | head -1 | cut -d: -f1)
        [ -n "$pkg" ] || die "no Debian package owns $lib: cannot ship its licence"
        cp -- "$BUILD_ROOT/usr/share/doc/$pkg/copyright" "$dir/$pkg.txt"
    done
}

build_full_layer() {
    ensure_host_tools
    make_root "$BUILD_ROOT" "${BUILD_DEPS[@]}"
    fetch_cpython_source
    local openssl
    openssl=$(build_openssl)
    build_cpython "$openssl"
    mount_proc "$BUILD_ROOT"
    write_root_pip_conf "$BUILD_ROOT"

    log "installing the project and PyInstaller in a fresh venv in the build root"
    local b=$BUILD_ROOT/build
    rm -rf -- "$b/venv" "$b/src" "$b/work" "$b/dist" "$b/layer"
    mkdir -p "$b/src" "$b/layer"
    # A copy of the working tree (not just committed files), minus build litter.
    tar -C "$PROJECT" --exclude=./.git --exclude=./dist --exclude=./build --exclude=./.venv \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$b/src" -xf -
    cp -- "$LAYER_DIR/entry.py" "$LAYER_DIR/secretcache_layer_selftest.py" "$b/layer/"
    in_root "$BUILD_ROOT" "$PY_PREFIX/bin/python3" -m venv /build/venv
    in_root "$BUILD_ROOT" /build/venv/bin/pip install -q --upgrade pip
    in_root "$BUILD_ROOT" /build/venv/bin/pip install -q /build/src "$PYINSTALLER_REQ"
    in_root "$BUILD_ROOT" /build/venv/bin/pip freeze --exclude-editable >"$CACHE/full-layer-freeze.txt"

    log "freezing with PyInstaller (onedir, noarchive, stripped)"
    local extra=()
    # Optional dependencies: collect them only when the project pulls them in.
    if grep -qi '^prometheus[-_]client==' "$CACHE/full-layer-freeze.txt"; then
        extra+=(--collect-submodules prometheus_client)
    fi
    in_root "$BUILD_ROOT" sh -c 'cd /build && exec "$@"' sh /build/venv/bin/pyi-makespec \
        --log-level WARN --onedir --name secretcache --specpath /build/work \
        --paths /build/layer \
        --debug noarchive --strip --noupx \
        --collect-submodules secretcache \
        --hidden-import secretcache_layer_selftest \
        --hidden-import twisted.internet.epollreactor \
        --hidden-import twisted.internet.pollreactor \
        --hidden-import twisted.internet.selectreactor \
        --hidden-import twisted.plugins.twisted_core \
        --copy-metadata secretcache --copy-metadata twisted --copy-metadata klein \
        --copy-metadata treq --copy-metadata botocore \
        --exclude-module setuptools --exclude-module pkg_resources \
        --exclude-module _distutils_hack --exclude-module distutils \
        --exclude-module tkinter --exclude-module _tkinter \
        --exclude-module readline \
        "${extra[@]}" \
        /build/layer/entry.py >/dev/null
    # PyInstaller adds runtime hooks for inspect, pkgutil and multiprocessing
    # (all in the module graph), and runs them before entry.py: ~60 ms of
    # imports on the path to register. The extension needs none of them: it
    # spawns no multiprocessing child, and with noarchive the modules are
    # plain files that inspect and pkgutil handle without help. The spec file
    # is Python: drop them from the scripts the executable runs.
    local spec=$b/work/secretcache.spec
    local unwanted='("pyi_rth_inspect", "pyi_rth_pkgutil", "pyi_rth_multiprocessing")'
    grep -q '^pyz = PYZ(' "$spec" || die "unexpected spec file layout: $spec"
    sed -i "/^pyz = PYZ(/i a.scripts = [s for s in a.scripts if s[0] not in $unwanted]" "$spec"
    in_root "$BUILD_ROOT" sh -c 'cd /build && exec "$@"' sh /build/venv/bin/pyinstaller \
        --noconfirm --clean --log-level WARN \
        --distpath /build/dist --workpath /build/work /build/work/secretcache.spec
    if grep -Eq "'pyi_rth_(inspect|pkgutil|multiprocessing)'" "$b/work/secretcache/EXE-00.toc"; then
        die "runtime hooks still in the executable"
    fi
    local bundle=$b/dist/secretcache
    prune_botocore_data "$bundle/_internal/botocore/data"
    [ -f "$bundle/_internal/botocore/cacert.pem" ] || die "botocore/cacert.pem missing from the bundle"
    if compgen -G "$bundle/_internal/setuptools*" >/dev/null; then die "setuptools got into the bundle"; fi
    # GNU readline is GPL-3 and of no use to a server (pdb and the REPL,
    # which import it when present, never run here).
    if [ -n "$(find "$bundle" -name 'libreadline*' -o -name 'readline.*.so' -o -name 'libtinfo*')" ]; then
        die "readline got into the bundle"
    fi
    collect_licenses "$bundle"

    # Run it once in the root: proves it starts, and writes Twisted's plugin
    # cache (dropin.cache) now, since /opt is read-only in Lambda.
    log "self-test of the bundle in the build root"
    in_root "$BUILD_ROOT" /build/dist/secretcache/secretcache --version
    in_root "$BUILD_ROOT" env SECRETCACHE_LAYER_SELFTEST=1 /build/dist/secretcache/secretcache

    log "zipping dist/secretcache-layer.zip"
    local stage=$CACHE/stage/full
    rm -rf -- "$stage"
    mkdir -p "$stage/extensions" "$DIST"
    install -m 0755 "$LAYER_DIR/launcher.sh" "$stage/extensions/secretcache"
    cp -a -- "$bundle" "$stage/secretcache"
    # Lambda runs extensions as a user that may not own the files.
    chmod -R u+rwX,go+rX,go-w "$stage"
    chmod 0755 "$stage/secretcache/secretcache"
    [ -z "$(find "$stage" -type l)" ] || die "symlinks in the bundle (zip would copy them): $(find "$stage" -type l | head -3)"
    rm -f -- "$DIST/secretcache-layer.zip"
    (cd "$stage" && zip -q -r -9 -X "$DIST/secretcache-layer.zip" extensions secretcache)
    bash "$LAYER_DIR/glibc-floor.sh" --max "$FULL_GLIBC_MAX" "$stage"
    report_size "$DIST/secretcache-layer.zip" "$stage"
}

mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1000000 }'; }

report_size() {
    local zip=$1 tree=$2 zipped unpacked
    zipped=$(stat -c %s "$zip")
    unpacked=$(du -sb "$tree" | cut -f1)
    log "$(basename "$zip"): $(mb "$zipped") MB zipped (Lambda's limit: 50), $(mb "$unpacked") MB unpacked (limit: 250 with the function)"
    ((zipped < 50 * 1000 * 1000)) || die "$zip is over Lambda's 50 MB zipped limit"
    ((unpacked < 250 * 1000 * 1000)) || die "$zip is over Lambda's 250 MB unpacked limit"
}

# Find an interpreter X.Y on the host to byte-compile and test with (pyenv on
# this kind of machine); empty if there is none.
host_interpreter() {
    local v=$1 p
    for p in "$(command -v "python$v" || true)" /root/.pyenv/versions/"$v".*/bin/python"$v" /usr/bin/python"$v"; do
        if [ -n "$p" ] && [ -x "$p" ] && "$p" -c 'import sys' 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
}

build_slim_layer() {
    command -v "$HOST_PYTHON" >/dev/null || die "$HOST_PYTHON needed for the slim layer"
    local w=$CACHE/slim stage=$CACHE/stage/python
    rm -rf -- "$w" "$stage"
    mkdir -p "$w/wheel" "$stage/extensions" "$stage/secretcache" "$DIST"
    log "slim layer: building the project's wheel"
    "$HOST_PYTHON" -m pip wheel -q --no-deps -w "$w/wheel" "$PROJECT"
    local wheel first="" v site=$stage/secretcache/site-packages
    wheel=$(compgen -G "$w/wheel/secretcache-*.whl" | head -1)
    # Wheels that run on manylinux x86_64 with glibc <= 2.34 (AL2023).
    # --no-compile: pip would write bytecode for the host's own Python.
    local plat=(--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64
        --platform manylinux_2_34_x86_64 --implementation cp --only-binary=:all:
        --no-compile --no-warn-conflicts)
    for v in $SLIM_PYTHONS; do
        log "slim layer: dependencies for CPython $v"
        if [ -z "$first" ]; then
            # Resolve once, for the first version; the others get the same pins
            # so their files differ only in version-tagged extension modules.
            first=$v
            "$HOST_PYTHON" -m pip install -q --target "$w/t$v" --python-version "$v" "${plat[@]}" "$wheel"
            "$HOST_PYTHON" - "$w/t$v" >"$w/pins.txt" <<'EOF'
import sys
from importlib.metadata import distributions
for d in distributions(path=[sys.argv[1]]):
    if d.metadata["Name"].lower() != "secretcache":
        print(f"{d.metadata['Name']}=={d.version}")
EOF
            cp -a -- "$w/t$v/." "$site/"
        else
            "$HOST_PYTHON" -m pip install -q --target "$w/t$v" --python-version "$v" "${plat[@]}" \
                --no-deps -r "$w/pins.txt"
            # Add what is new (X.Y-tagged extension modules); keep the rest.
            cp -a -n -- "$w/t$v/." "$site/"
        fi
    done
    # Console scripts point at the host's python; Lambda never runs them.
    rm -rf -- "${site:?}/bin"
    prune_botocore_data "$site/botocore/data"
    # The dependencies' own test suites (Twisted's alone is ~10 MB of source)
    # count against Lambda's 250 MB for function and layers; nothing imports
    # them at run time.
    find "$site" -depth -type d \( -name test -o -name tests \) -exec test -f '{}/__init__.py' ';' \
        -exec rm -rf -- '{}' +

    # Bytecode for each version we can find an interpreter for, checked by
    # hash-free "unchecked" pycs: zip rounds mtimes, and /opt is read-only.
    for v in $SLIM_PYTHONS; do
        local py
        py=$(host_interpreter "$v")
        if [ -z "$py" ]; then
            log "WARNING: no python$v on this host: its bytecode is not precompiled"
            continue
        fi
        "$py" -m compileall -q -j0 --invalidation-mode unchecked-hash "$site" >/dev/null ||
            die "compileall with python$v failed"
    done
    install -m 0755 "$LAYER_DIR/launcher-python.sh" "$stage/extensions/secretcache"
    echo "$SLIM_PYTHONS" >"$stage/secretcache/python-versions"
    chmod -R u+rwX,go+rX,go-w "$stage"
    rm -f -- "$DIST/secretcache-layer-python.zip"
    (cd "$stage" && zip -q -r -9 -X "$DIST/secretcache-layer-python.zip" extensions secretcache)
    bash "$LAYER_DIR/glibc-floor.sh" --max "$SLIM_GLIBC_MAX" "$stage"
    report_size "$DIST/secretcache-layer-python.zip" "$stage"

    # Check on every interpreter we have: it starts and its dependencies work.
    for v in $SLIM_PYTHONS; do
        local py
        py=$(host_interpreter "$v")
        [ -n "$py" ] || continue
        log "slim layer: self-test with $py"
        env -i PATH="$(dirname "$py"):/usr/bin:/bin" HOME=/nonexistent \
            "$stage/extensions/secretcache" --version
        env -i HOME=/nonexistent "$py" -I -c 'import runpy, sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]); runpy.run_module("secretcache_layer_selftest", run_name="__main__")' \
            "$site" "$LAYER_DIR"
    done
}

START=$(date +%s)
case "$ONLY" in
"" | full) build_full_layer ;;
esac
case "$ONLY" in
"" | python) build_slim_layer ;;
esac
log "done in $(($(date +%s) - START)) s"
