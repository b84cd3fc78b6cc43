#!/usr/bin/env bash
# Smoke test of the sidecar image: build docker/Dockerfile, run the image
# against moto's Secrets Manager on loopback, and check what an operator relies
# on (health, token, non-root, clean stop). Prints PASS/FAIL per check and
# "smoke: N passed, N failed"; exits non-zero on any failure.
#
# Needs root when it has to start its own Docker engine (no engine reachable
# through DOCKER_HOST or the default socket). All traffic stays on loopback:
# the container uses the host's network and binds 127.0.0.1 only.
#
# Knobs (environment):
#   SMOKE_STATE    kept between runs: engine data, base image, build cache,
#                  moto's venv (default /var/tmp/secretcache-smoke)
#   SMOKE_CONTEXT  build context (default: the repository root)
#   SMOKE_BASE     base image; default python:3.12-slim when it is present
#                  locally or can be pulled (SMOKE_PULL=0 skips trying,
#                  SMOKE_PULL_TIMEOUT bounds it, default 120 s), else a Debian
#                  bookworm root made here with debootstrap (cached)
#   PYTHON         a Python that can import moto.server and boto3, used for
#                  moto's server and the checks; default python3 when it can,
#                  else a venv made here (pip install 'moto[server]' boto3)
#   SMOKE_IMAGE    tag to build (default secretcache:smoke)
#   SMOKE_KEEP_ENGINE=1  leave an engine this script started running
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
context=${SMOKE_CONTEXT:-$(dirname "$here")}
state=${SMOKE_STATE:-/var/tmp/secretcache-smoke}
image=${SMOKE_IMAGE:-secretcache:smoke}
local_base=secretcache-base:bookworm
mkdir -p "$state"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/secretcache-smoke.XXXXXX")

log() { printf '[smoke %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- cleanup: everything this run started, and only that -------------------
engine_pid='' moto_pid='' container=''
cleanup() {
    local rc=$?
    set +e
    if [[ -n $container ]]; then
        if ((rc != 0)); then
            log "container logs (last 40 lines):"
            docker logs --tail 40 "$container" 2>&1 | sed 's/^/    /' >&2
        fi
        docker rm -f "$container" "$container-defaults" >/dev/null 2>&1
    fi
    if [[ -n $moto_pid ]]; then
        kill "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null
    fi
    if [[ -n $engine_pid && ${SMOKE_KEEP_ENGINE:-0} != 1 ]]; then
        log "stopping the Docker engine this run started (pid $engine_pid)"
        kill "$engine_pid" 2>/dev/null
        # dockerd stops its containerd and shims itself; give it time to.
        for _ in $(seq 150); do kill -0 "$engine_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$engine_pid" 2>/dev/null
        wait "$engine_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- tools -----------------------------------------------------------------
apt_install() {
    [[ $(id -u) == 0 ]] || die "need root to install $*"
    log "installing $* with apt-get"
    # An old or missing package list makes install fail: refresh it once.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---- a Python with moto's server (and boto3 to seed it) ---------------------
# Also runs the HTTP checks (standard library only; the image has no curl).
has_moto() { "$1" -c 'import moto.server, boto3' >/dev/null 2>&1; }
if [[ -n ${PYTHON:-} ]]; then
    has_moto "$PYTHON" || die "PYTHON=$PYTHON cannot import moto.server and boto3 (pip install 'moto[server]' boto3)"
    py=$PYTHON
elif command -v python3 >/dev/null && has_moto python3; then
    py=$(command -v python3)
else
    venv=$state/moto-venv
    if ! has_moto "$venv/bin/python"; then
        command -v python3 >/dev/null || die "python3 is needed (moto's server, HTTP checks); or set PYTHON"
        log "creating $venv with moto[server] and boto3"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install -q 'moto[server]>=5' boto3 >"$tmp/pip.log" 2>&1 \
            || { tail -20 "$tmp/pip.log" >&2; die "pip install moto failed"; }
    fi
    py=$venv/bin/python
fi
log "python for moto and the checks: $py (moto $("$py" -c 'import moto; print(moto.__version__)'))"

# ---- a Docker engine -------------------------------------------------------
command -v docker >/dev/null || apt_install docker.io
if docker info >/dev/null 2>&1; then
    log "using the running Docker engine (${DOCKER_HOST:-default socket})"
elif DOCKER_HOST=unix://$state/docker.sock docker info >/dev/null 2>&1; then
    # Left by an earlier run with SMOKE_KEEP_ENGINE=1: reuse it, don't stop it.
    export DOCKER_HOST=unix://$state/docker.sock
    log "using the engine left running at $DOCKER_HOST"
else
    [[ $(id -u) == 0 ]] || die "no Docker engine reachable, and starting one needs root"
    command -v dockerd >/dev/null || apt_install docker.io
    export DOCKER_HOST=unix://$state/docker.sock
    log "starting dockerd (data root $state/docker)"
    # No iptables and no bridge: nothing here may touch the host's network;
    # containers use --network host and bind loopback only.
    dockerd --iptables=false --ip6tables=false --bridge=none \
        --data-root "$state/docker" --exec-root "$state/exec" \
        --pidfile "$state/dockerd.pid" -H "$DOCKER_HOST" \
        >"$state/dockerd.log" 2>&1 &
    engine_pid=$!
    for _ in $(seq 300); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$engine_pid" 2>/dev/null || { tail -20 "$state/dockerd.log" >&2; die "dockerd exited"; }
        sleep 0.1
    done
    docker info >/dev/null 2>&1 || die "dockerd did not answer within 30 s (see $state/dockerd.log)"
fi

# RUN --mount (build secrets) needs BuildKit: either the buildx plugin, or a
# client older than 23.0 (Debian's docker.io), which has BuildKit built in.
build_cmd=()
if docker buildx version >/dev/null 2>&1; then
    build_cmd=(docker buildx build --load)
else
    for c in $(type -ap docker) /usr/bin/docker; do
        v=$("$c" version -f '{{.Client.Version}}' 2>/dev/null || true)
        if [[ $v =~ ^([0-9]+)\. ]] && ((BASH_REMATCH[1] < 23)); then
            build_cmd=(env DOCKER_BUILDKIT=1 "$c" build)
            break
        fi
    done
    if ((${#build_cmd[@]} == 0)); then
        apt_install docker.io
        build_cmd=(env DOCKER_BUILDKIT=1 /usr/bin/docker build)
    fi
fi

# ---- base image ------------------------------------------------------------
# What the local base holds: python3 and venv (the build stage), CA
# certificates (TLS to Secrets Manager at run time, as python:3.12-slim has).
# Recorded in a label, so that a base cached by an older recipe is remade.
base_recipe="debootstrap minbase bookworm +python3,python3-venv,ca-certificates"
make_local_base() {
    if [[ $(docker image inspect -f '{{index .Config.Labels "secretcache.base.recipe"}}' \
            "$local_base" 2>/dev/null) == "$base_recipe" ]]; then
        log "base image $local_base exists (cached)"
        return
    fi
    docker rmi "$local_base" >/dev/null 2>&1 || true
    command -v debootstrap >/dev/null || apt_install debootstrap
    local root="$tmp/root" t0=$SECONDS
    log "making $local_base: $base_recipe"
    # A clean environment: the host's pip/CA variables mean nothing in the root.
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "${SMOKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
        >"$tmp/debootstrap.log" 2>&1 || { tail -20 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }
    # Package caches and docs are dead weight in every image built on it; the
    # host's resolver and name, and device nodes, are the engine's to provide.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
        "$root"/etc/hostname "$root"/dev/*
    : >"$root/etc/resolv.conf"
    tar -C "$root" -c . | docker import \
        --change "LABEL secretcache.base.recipe=\"$base_recipe\"" \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$local_base" >/dev/null
    rm -rf "$root"
    log "made $local_base in $((SECONDS - t0)) s"
}
if [[ -n ${SMOKE_BASE:-} ]]; then
    base=$SMOKE_BASE
elif docker image inspect python:3.12-slim >/dev/null 2>&1; then
    base=python:3.12-slim
elif [[ ${SMOKE_PULL:-1} == 1 ]] \
    && timeout "${SMOKE_PULL_TIMEOUT:-120}" docker pull -q python:3.12-slim >"$tmp/pull.log" 2>&1; then
    base=python:3.12-slim
else
    [[ -s $tmp/pull.log ]] && log "cannot pull python:3.12-slim: $(tail -1 "$tmp/pull.log" | cut -c1-160)"
    make_local_base
    base=$local_base
fi

# ---- build -----------------------------------------------------------------
# The host's pip settings, minus what only makes sense on the host (local
# file:// indexes, find-links, constraint files, its CA path), go in as a
# build secret, and so does the CA bundle: neither is kept in the image.
"$py" - "$tmp/pip.conf" <<'EOF'
import subprocess, sys
keep = {"index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout",
        "retries", "proxy"}
try:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                         capture_output=True, text=True, timeout=60).stdout
except Exception:
    out = ""
settings = {}
for line in out.splitlines():
    name, _, value = line.partition("=")
    key = name.rsplit(".", 1)[-1]
    value = value.strip().strip("'\"")
    if key not in keep:
        continue
    key = "timeout" if key == "default-timeout" else key
    values = [v for v in value.split() if not v.startswith(("file:", "/"))]
    if values:
        settings[key] = " ".join(values)  # later sources (env) win, as in pip
with open(sys.argv[1], "w") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
EOF
secrets=(--secret "id=pipconf,src=$tmp/pip.conf")
ca=${SMOKE_CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
[[ -s $ca ]] && secrets+=(--secret "id=cacert,src=$ca")

log "building $image from $context on $base"
t0=$(date +%s.%N)
# --network host: the engine has no bridge, and pip must reach the index.
"${build_cmd[@]}" --network host --progress plain -f "$here/Dockerfile" \
    --build-arg "BASE=$base" "${secrets[@]}" -t "$image" "$context" \
    >"$tmp/build.log" 2>&1 || { tail -40 "$tmp/build.log" >&2; die "docker build failed"; }
build_s=$("$py" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
log "built in ${build_s} s"

# ---- moto's server on a free loopback port ----------------------------------
free_port() {
    "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
moto_port=$(free_port)
"$py" -m moto.server -H 127.0.0.1 -p "$moto_port" >"$tmp/moto.log" 2>&1 &
moto_pid=$!

# Fake credentials: moto accepts any; nothing here may reach AWS.
export AWS_ACCESS_KEY_ID=smoke AWS_SECRET_ACCESS_KEY=smoke
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL
secret_id=smoke/db
secret_value='{"username":"app","password":"s3cr3t-smoke"}'
"$py" - "$moto_port" "$secret_id" "$secret_value" <<'EOF' || die "seeding moto failed (see above)"
import sys, time, boto3, botocore.exceptions
port, name, value = sys.argv[1:]
sm = boto3.client("secretsmanager", region_name="us-east-1",
                  endpoint_url=f"http://127.0.0.1:{port}")
deadline = time.monotonic() + 30
while True:
    try:
        sm.create_secret(Name=name, SecretString=value)
        break
    except botocore.exceptions.EndpointConnectionError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
EOF
log "moto on 127.0.0.1:$moto_port, seeded $secret_id"

# ---- run the image ---------------------------------------------------------
port=$(free_port)
token=$("$py" -c 'import secrets; print(secrets.token_hex(16))')
# An env file keeps the token off the host's process list.
cat >"$tmp/run.env" <<EOF
SECRETCACHE_PORT=tcp:$port:interface=127.0.0.1
SECRETCACHE_TOKEN=$token
AWS_ENDPOINT_URL_SECRETS_MANAGER=http://127.0.0.1:$moto_port
AWS_REGION=us-east-1
AWS_DEFAULT_REGION=us-east-1
AWS_ACCESS_KEY_ID=smoke
AWS_SECRET_ACCESS_KEY=smoke
EOF
container=secretcache-smoke-$$
# Read-only root and no capabilities: the image must need neither a writable
# working directory (pidfile) nor to write Twisted's plugin cache.
docker run -d --name "$container" --network host --env-file "$tmp/run.env" \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    --health-interval 1s --health-start-period 30s --health-timeout 3s \
    "$image" >/dev/null

# ---- checks ----------------------------------------------------------------
passed=0 failed=0
check() {  # check NAME COMMAND...: run COMMAND, record PASS/FAIL
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        passed=$((passed + 1))
        printf 'PASS  %s%s\n' "$name" "${out:+  ($out)}"
    else
        failed=$((failed + 1))
        printf 'FAIL  %s%s\n' "$name" "${out:+  ($out)}"
    fi
}
# http PATH [HEADER:VALUE] -> "STATUS BODY" on stdout (no curl needed)
http() {
    "$py" - "http://127.0.0.1:$port$1" "${2:-}" <<'EOF'
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1])
if sys.argv[2]:
    k, _, v = sys.argv[2].partition(":")
    req.add_header(k, v)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(req, timeout=10) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
print(status, body.decode("utf-8", "replace"))
EOF
}

t_run=$(date +%s.%N)
up=
for _ in $(seq 300); do
    if http /ping 2>/dev/null | grep -q '^200 '; then up=1; break; fi
    [[ $(docker inspect -f '{{.State.Running}}' "$container") == true ]] || break
    sleep 0.1
done
start_s=$("$py" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t_run" "$(date +%s.%N)")
[[ -n $up ]] || log "the server did not answer /ping within 30 s"

check_ping() {
    local r; r=$(http /ping)
    [[ $r == "200 healthy" ]] || { echo "got: $r"; return 1; }
    echo "first answer ${start_s} s after docker run"
}
check_secret() {
    local r; r=$(http "/secretsmanager/get?secretId=$secret_id" "X-Aws-Parameters-Secrets-Token:$token")
    "$py" - "$r" "$secret_id" "$secret_value" <<'EOF'
import json, sys
r, name, value = sys.argv[1:]
status, _, body = r.partition(" ")
if status != "200":
    sys.exit(f"status {status}: {body[:200]}")
doc = json.loads(body)
if doc.get("Name") != name or doc.get("SecretString") != value:
    sys.exit(f"unexpected body: {sorted(doc)}")
EOF
}
check_status() {  # check_status EXPECTED PATH [HEADER]
    local r; r=$(http "${@:2}")
    [[ ${r%% *} == "$1" ]] || { echo "got: ${r:0:200}"; return 1; }
}
check_nonroot() {
    local uid user
    uid=$(docker exec "$container" id -u) || return 1
    user=$(docker image inspect -f '{{.Config.User}}' "$image")
    [[ $uid =~ ^[0-9]+$ && $uid != 0 ]] || { echo "uid '$uid'"; return 1; }
    [[ $user =~ ^[1-9][0-9]*(:[0-9]+)?$ ]] || { echo "image USER '$user' is not a numeric non-root uid"; return 1; }
    echo "uid $uid, image USER $user"
}
check_healthy() {
    local s
    for _ in $(seq 60); do
        s=$(docker inspect -f '{{.State.Health.Status}}' "$container")
        [[ $s == healthy ]] && return 0
        [[ $s == unhealthy ]] && break
        sleep 0.5
    done
    echo "health: $s; $(docker inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$container" | tail -2)"
    return 1
}
check_image_contents() {
    # Nothing for building or for the demo at run time; no build secret kept.
    # As root, so that /root is readable too.
    docker run --rm --network none --user 0 --entrypoint /bin/sh "$image" -c '
        bad=
        for t in gcc cc make pip pip3 /opt/secretcache/bin/pip; do
            command -v "$t" >/dev/null 2>&1 && bad="$bad $t"
        done
        /opt/secretcache/bin/python -c "import moto" 2>/dev/null && bad="$bad moto"
        /opt/secretcache/bin/python -c "import setuptools" 2>/dev/null && bad="$bad setuptools"
        # The base Python the venv runs on: its own pip, and the wheels
        # ensurepip would install from, are gone too.
        base_py=$(sed -n "s/^home *= *//p" /opt/secretcache/pyvenv.cfg)/python3
        "$base_py" -c "import pip" 2>/dev/null && bad="$bad base-pip"
        "$base_py" -c "import setuptools" 2>/dev/null && bad="$bad base-setuptools"
        whl=$(find / -xdev -name "*.whl" 2>/dev/null | head -3 | tr "\n" " ")
        [ -n "$whl" ] && bad="$bad $whl"
        [ -e /wheels ] && bad="$bad /wheels"
        [ -e /root/.cache/pip ] && bad="$bad pip-cache"
        ls /run/secrets/* >/dev/null 2>&1 && bad="$bad /run/secrets"
        [ -z "$bad" ] || { echo "found:$bad"; exit 1; }
        # What it does need: CA certificates for TLS to Secrets Manager.
        n=$(grep -c "BEGIN CERTIFICATE" /etc/ssl/certs/ca-certificates.crt 2>/dev/null)
        [ "${n:-0}" -gt 0 ] || { echo "no CA certificates in /etc/ssl/certs"; exit 1; }
        echo "$n CA certificates, base $("$base_py" -V)"'
}
check_no_cache_write() {
    # Twisted logs this when its plugin cache is stale and it cannot save it.
    ! docker logs "$container" 2>&1 | grep -i 'plugin cache'
}
check_defaults() {
    # The image's own settings (SECRETCACHE_PORT=tcp:8015, all of the
    # container's interfaces) and its HEALTHCHECK, with no overrides, in a
    # network namespace of its own that has only loopback.
    local c=$container-defaults s=
    docker run -d --name "$c" --network none --health-interval 1s \
        -e SECRETCACHE_TOKEN=smoke -e AWS_REGION=us-east-1 -e AWS_DEFAULT_REGION=us-east-1 \
        -e AWS_ACCESS_KEY_ID=smoke -e AWS_SECRET_ACCESS_KEY=smoke "$image" >/dev/null || return 1
    for _ in $(seq 60); do
        s=$(docker inspect -f '{{.State.Health.Status}}' "$c")
        [[ $s == healthy || $s == unhealthy ]] && break
        sleep 0.5
    done
    docker rm -f "$c" >/dev/null
    [[ $s == healthy ]] || { echo "health: $s"; return 1; }
}
check_stop() {
    local t0 t1 rc=0 code
    t0=$(date +%s.%N)
    docker stop -t 10 "$container" >/dev/null || rc=$?
    t1=$(date +%s.%N)
    code=$(docker inspect -f '{{.State.ExitCode}}' "$container")
    stop_s=$("$py" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$t1")
    echo "docker stop rc=$rc in ${stop_s} s, container exit code $code"
    # 137 would mean SIGKILL after the grace period: SIGTERM was not honoured.
    ((rc == 0)) && "$py" -c "import sys; sys.exit(not float(sys.argv[1]) < 2)" "$stop_s" \
        && ((code != 137))
}

check "GET /ping is 200 healthy" check_ping
check "secret served with the token" check_secret
check "403 without the token" check_status 403 "/secretsmanager/get?secretId=$secret_id"
check "403 with a wrong token" check_status 403 "/secretsmanager/get?secretId=$secret_id" "X-Aws-Parameters-Secrets-Token:wrong"
check "runs as non-root" check_nonroot
check "health status becomes healthy" check_healthy
check "no plugin-cache write at start (read-only root)" check_no_cache_write
check "image: no build tools, pip, moto or build secrets; has CA certificates" check_image_contents
check "docker stop exits cleanly within 2 s" check_stop
check "image defaults (tcp:8015) pass the image's HEALTHCHECK" check_defaults

# Earlier builds of the tag are left dangling: drop them (this image's label
# only, so a shared engine's other images are untouched).
docker image prune -f --filter label=org.opencontainers.image.title=secretcache >/dev/null || true
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "image $image (base $base): $size bytes ($((size / 1024 / 1024)) MiB); build ${build_s} s"
echo "smoke: $passed passed, $failed failed"
((failed == 0))
