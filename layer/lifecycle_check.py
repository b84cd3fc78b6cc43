"""Runs the self-contained layer, unpacked inside a Debian bullseye root that
has no Python, through Lambda's extension lifecycle against the Extensions
API emulator and moto's server on the host's loopback (a chroot shares the
host's network namespace), then times its start.

Run by layer/test-in-bullseye.sh, as root (chroot), with a Python that has
moto[server], boto3 and trustme. Exits non-zero when any check fails.
Everything it starts listens on, and talks to, 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)

import trustme  # noqa: E402
import urllib3  # noqa: E402

from secretcache.extensions_emulator import (  # noqa: E402
    SHUTDOWN_TIMEOUT,
    ExtensionProcess,
    ExtensionsEmulator,
)
from tests.support import REGION, Moto, free_port  # noqa: E402

# Moto.client() seeds moto over HTTPS without verifying: that is the point.
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

TOKEN = "layer-session-token-5f1c"  # noqa: S105 (a made-up AWS_SESSION_TOKEN)
SECRET_VALUE = "pw-from-the-bullseye-root"  # noqa: S105 (moto's, made up)
NOBODY = "65534:65534"  # Lambda runs extensions as an unprivileged user
# Libraries a layer may take from the host: glibc's own (Amazon Linux 2023
# has glibc 2.34), by soname (as NEEDED) or file name (as mapped: bullseye's
# libc.so.6 is libc-2.31.so). Anything else must be inside the layer.
GLIBC_LIBRARY = re.compile(
    r"ld-linux-x86-64\.so\.2|ld-2\.\d+\.so"
    r"|lib(c|m|dl|pthread|rt|util|resolv|anl|nss_[a-z]+)(\.so\.\d+|-2\.\d+\.so)"
)
# The variables Lambda gives every extension that matter here (the function's
# environment minus _HANDLER, LAMBDA_TASK_ROOT, AWS_EXECUTION_ENV).
LAMBDA_ENVIRONMENT = {
    "PATH": "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
    "LD_LIBRARY_PATH": "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:"
    "/var/runtime/lib:/var/task:/var/task/lib:/opt/lib",
    "LANG": "en_US.UTF-8",
    "TZ": ":UTC",
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": TOKEN,
    "AWS_LAMBDA_FUNCTION_NAME": "emulated",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
    # Not set in Lambda; here a guard that nothing reaches for IMDS.
    "AWS_EC2_METADATA_DISABLED": "true",
}


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))
        if not ok:
            self.failed.append(name)
        sys.stdout.flush()
        return ok


@dataclass
class Run:
    """One start of the extension and what was seen of it."""

    emulator: ExtensionsEmulator
    process: ExtensionProcess
    port: int
    log_path: str
    port_open_at: list[float] = field(default_factory=list)

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def since_exec(self, at: float | None) -> float | None:
        return None if at is None else at - self.process.exec_at

    def stop(self) -> None:
        self.process.kill()
        self.emulator.close()


class Layer:
    """Starts an extension launcher, as Lambda would, against a new emulator."""

    def __init__(self, workdir: str, endpoint: str) -> None:
        self.workdir = workdir
        self.endpoint = endpoint  # moto's server, plain HTTP
        self.count = 0

    def command(self, launcher: str, env: Mapping[str, str]) -> list[str]:
        raise NotImplementedError

    def start(
        self, launcher: str, env: Mapping[str, str], watch_port: bool = False
    ) -> Run:
        emulator = ExtensionsEmulator()
        port = free_port()
        full_env = {
            **LAMBDA_ENVIRONMENT,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.endpoint,
            "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": str(port),
            "AWS_LAMBDA_RUNTIME_API": emulator.address,
            **env,
        }
        self.count += 1
        log_path = os.path.join(self.workdir, f"extension-{self.count}.log")
        with open(log_path, "wb") as log:
            process = ExtensionProcess(
                emulator,
                self.command(launcher, full_env),
                self.process_env(full_env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        run = Run(emulator, process, port, log_path)
        if watch_port:
            threading.Thread(target=_watch_port, args=(run,), daemon=True).start()
        return run

    def process_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return dict(env)


class ChrootLayer(Layer):
    """The layer unpacked in the bullseye root, run there as nobody with only
    Lambda's variables (``env -i``)."""

    def __init__(self, workdir: str, endpoint: str, root: str) -> None:
        super().__init__(workdir, endpoint)
        self.root = root
        self.chroot = shutil.which("chroot") or "/usr/sbin/chroot"

    def command(self, launcher: str, env: Mapping[str, str]) -> list[str]:
        return [
            self.chroot,
            f"--userspec={NOBODY}",
            self.root,
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            launcher,
        ]

    def process_env(self, env: Mapping[str, str]) -> dict[str, str]:
        # For chroot itself; the extension gets only what env -i passes.
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def host_path(self, path: str) -> str:
        return self.root + path


class HostLayer(Layer):
    """The slim layer unpacked on the host, run with one of its interpreters
    first on PATH (in Lambda: the runtime's /var/lang/bin)."""

    def __init__(self, workdir: str, endpoint: str, python_bin: str) -> None:
        super().__init__(workdir, endpoint)
        self.python_bin = python_bin

    def command(self, launcher: str, env: Mapping[str, str]) -> list[str]:
        return [launcher]

    def process_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {**env, "PATH": f"{self.python_bin}:/usr/bin:/bin"}


def _watch_port(run: Run) -> None:
    """Note when the extension's port first accepts a connection (1 ms steps)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and run.process.process.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", run.port)) == 0:
                run.port_open_at.append(time.monotonic())
                return
        time.sleep(0.001)


def get_secret(
    port: int, secret_id: str, token: str | None = TOKEN
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        headers = {"X-Aws-Parameters-Secrets-Token": token} if token else {}
        connection.request(
            "GET", f"/secretsmanager/get?secretId={secret_id}", headers=headers
        )
        response = connection.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for p in pids:
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return pids


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def foreign_libraries(pid: int, layer_host_path: str) -> list[str]:
    """Shared objects the process mapped from outside the layer, other than
    glibc's."""
    foreign = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or ".so" not in parts[5]:
                continue
            path = parts[5].strip()
            if path.startswith(layer_host_path + "/"):
                continue
            if GLIBC_LIBRARY.fullmatch(os.path.basename(path)):
                continue
            foreign.add(path)
    return sorted(foreign)


def needed_outside(tree: str) -> list[str]:
    """NEEDED entries of the tree's ELF files that neither the tree nor glibc
    provides: what the layer would take from whatever host it lands on."""
    present = set()
    elves = []
    for directory, _, files in os.walk(tree):
        for name in files:
            present.add(name)
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    elves.append(path)
    missing = set()
    for start in range(0, len(elves), 64):
        out = subprocess.run(  # noqa: S603
            ["objdump", "-p", *elves[start : start + 64]],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for needed in re.findall(r"^\s+NEEDED\s+(\S+)$", out, re.MULTILINE):
            if needed not in present and not GLIBC_LIBRARY.fullmatch(needed):
                missing.add(needed)
    return sorted(missing)


def timed_exit(command: Sequence[str], env: Mapping[str, str]) -> tuple[float, int]:
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603
        list(command), env=dict(env), capture_output=True, check=False, timeout=60
    )
    return time.monotonic() - started, done.returncode


def tail(text: str, lines: int = 15) -> str:
    return "\n".join("     | " + line for line in text.strip().splitlines()[-lines:])


def lifecycle(
    check: Checks,
    layer: Layer,
    launcher: str,
    secret_id: str,
    label: str,
    layer_host_path: str | None = None,
) -> None:
    """Init, INVOKE, a secret served, INVOKE, SHUTDOWN: every step checked."""
    run = layer.start(launcher, {"SECRETCACHE_PREFETCH": secret_id}, watch_port=True)
    failed_before = len(check.failed)
    try:
        ok = check(f"{label}: init ends", run.emulator.wait_for_init())
        if not ok:
            print(tail(run.output()))
            return
        [extension] = run.emulator.extensions.values()
        check(
            f"{label}: registers as 'secretcache' for INVOKE and SHUTDOWN",
            extension.name == "secretcache"
            and extension.events == {"INVOKE", "SHUTDOWN"},
            f"name {extension.name!r}, events {sorted(extension.events)}",
        )
        registered = run.emulator.first("register")
        check(
            f"{label}: port accepts connections before register",
            bool(run.port_open_at)
            and registered is not None
            and run.port_open_at[0] <= registered,
        )
        pid = run.process.process.pid
        if layer_host_path is not None:
            exe = os.readlink(f"/proc/{pid}/exe")
            check(
                f"{label}: one process, the bundle itself (the launcher execs it)",
                exe == layer_host_path + "/secretcache/secretcache"
                and process_tree(pid) == [pid],
                f"exe {exe}, processes {process_tree(pid)}",
            )
            foreign = foreign_libraries(pid, layer_host_path)
            check(
                f"{label}: loads no shared library from the root but glibc's",
                not foreign,
                ", ".join(foreign),
            )
        check(f"{label}: INVOKE answered", run.emulator.invoke())
        status, headers, body = get_secret(run.port, secret_id)
        served = False
        if status == 200:
            document = json.loads(body)
            served = json.loads(document["SecretString"]) == {"password": SECRET_VALUE}
        check(
            f"{label}: secret served with AWS_SESSION_TOKEN as the token",
            served,
            f"{status} {headers.get('x-secretcache-cache')}"
            + ("" if served else f" {body[:200]!r}"),
        )
        status, _, _ = get_secret(run.port, secret_id, token="wrong")  # noqa: S106
        check(f"{label}: a wrong token is refused", status == 403, str(status))
        check(f"{label}: second INVOKE answered", run.emulator.invoke())
        exit_status, seconds, killed = run.process.shut_down()
        check(
            f"{label}: SHUTDOWN -> exit 0 before the deadline",
            exit_status == 0 and not killed and seconds < SHUTDOWN_TIMEOUT,
            f"status {exit_status} after {seconds * 1000:.0f} ms"
            + (" (killed)" if killed else ""),
        )
        output = run.output()
        check(
            f"{label}: the log holds neither the token nor the secret",
            TOKEN not in output and SECRET_VALUE not in output,
        )
        if len(check.failed) > failed_before:
            print(tail(output))
    finally:
        run.stop()


def bad_configuration(check: Checks, layer: ChrootLayer, alias: str) -> None:
    """SECRETCACHE_TTL=soon, started through a symlink named ``alias``."""
    run = layer.start(alias, {"SECRETCACHE_TTL": "soon"})
    try:
        try:
            status: int | None = run.process.process.wait(30)
        except subprocess.TimeoutExpired:
            status = None
        extensions = list(run.emulator.extensions.values())
        name = extensions[0].name if extensions else None
        check(
            "registers under its launcher's file name (a symlink named "
            f"{os.path.basename(alias)!r})",
            name == os.path.basename(alias),
            repr(name),
        )
        errors = extensions[0].errors if extensions else []
        check(
            "bad config (SECRETCACHE_TTL=soon) -> init/error Extension.ConfigInvalid",
            len(errors) == 1
            and errors[0][:2] == ("init", "Extension.ConfigInvalid")
            and "SECRETCACHE_TTL" in errors[0][2].get("errorMessage", ""),
            repr(errors),
        )
        with socket.socket() as s:
            listening = s.connect_ex(("127.0.0.1", run.port)) == 0
        check(
            "bad config -> non-zero exit, never next, never listens",
            status not in (None, 0)
            and run.emulator.first("next") is None
            and not listening,
            f"exit status {status}",
        )
    finally:
        run.stop()


def tls_answer(
    layer: ChrootLayer, launcher: str, moto_url: str, **env: str
) -> tuple[int, str, str]:
    run = layer.start(
        launcher,
        {
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_url,
            "SECRETCACHE_MAX_ATTEMPTS": "1",
            **env,
        },
    )
    try:
        if not run.emulator.wait_for_init():
            return 0, "init did not end", run.output()
        status, _, body = get_secret(run.port, "tls")
        if status == 200:
            detail = json.loads(body)["SecretString"]
        else:
            detail = json.loads(body).get("message", "")[:160]
        exit_status, _, _ = run.process.shut_down()
        if exit_status != 0:
            detail += f" (then exit status {exit_status})"
        return status, detail, run.output()
    finally:
        run.stop()


def tls_checks(check: Checks, layer: ChrootLayer, launcher: str, workdir: str) -> None:
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    paths = {n: os.path.join(workdir, f"{n}.pem") for n in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    certificate.cert_chain_pems[0].write_to_path(paths["cert"])
    certificate.private_key_pem.write_to_path(paths["key"])
    moto = Moto(cert=(paths["cert"], paths["key"]))
    copy = "/srv/layer-with-test-ca"  # inside the root
    try:
        moto.client().create_secret(Name="tls", SecretString="over-tls")
        # (a) AWS_CA_BUNDLE names the test CA, copied into the root.
        shutil.copy(paths["ca"], layer.host_path("/srv/test-ca.pem"))
        os.chmod(layer.host_path("/srv/test-ca.pem"), 0o644)
        status, detail, output = tls_answer(
            layer, launcher, moto.url, AWS_CA_BUNDLE="/srv/test-ca.pem"
        )
        if not check("TLS (a) AWS_CA_BUNDLE=test CA -> 200", status == 200, detail):
            print(tail(output))
        # (b) Without it the layer's shipped bundle is used: moto's
        # certificate is not in it, and verification is on.
        status, detail, output = tls_answer(layer, launcher, moto.url)
        if not check(
            "TLS (b) no AWS_CA_BUNDLE -> 502 (verification on)",
            status == 502 and "TLS" in detail,
            f"{status} {detail}",
        ):
            print(tail(output))
        # (c) The test CA appended to the shipped bundle of a copy of the
        # layer: trusted with no AWS_CA_BUNDLE, so that file is what the
        # bundled OpenSSL verifies with.
        source = launcher.rsplit("/extensions/", 1)[0]
        shutil.rmtree(layer.host_path(copy), ignore_errors=True)
        shutil.copytree(layer.host_path(source), layer.host_path(copy), symlinks=True)
        shipped = layer.host_path(copy + "/secretcache/_internal/botocore/cacert.pem")
        if not check("the layer ships botocore/cacert.pem", os.path.isfile(shipped)):
            return
        with open(paths["ca"]) as extra, open(shipped, "a") as bundle:
            bundle.write("\n" + extra.read())
        status, detail, output = tls_answer(
            layer, copy + "/extensions/secretcache", moto.url
        )
        if not check(
            "TLS (c) test CA appended to the layer's own cacert.pem -> 200",
            status == 200,
            detail,
        ):
            print(tail(output))
    finally:
        moto.stop()
        shutil.rmtree(layer.host_path(copy), ignore_errors=True)
        if os.path.exists(layer.host_path("/srv/test-ca.pem")):
            os.unlink(layer.host_path("/srv/test-ca.pem"))


def measure(
    check: Checks, layer: ChrootLayer, launcher: str, secret_id: str, runs: int
) -> list[tuple[str, list[float], str]]:
    """Start-up, RSS and shutdown over ``runs`` lifecycles, and the bundle's
    bare start (exit before any import) as the floor."""
    keys = ["port", "register", "next", "shutdown", "rss"]
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(runs):
        run = layer.start(
            launcher, {"SECRETCACHE_PREFETCH": secret_id}, watch_port=True
        )
        try:
            if not run.emulator.wait_for_init():
                check("timed run: init ends", False, tail(run.output()))
                continue
            samples["rss"].append(
                sum(vm_rss_kib(p) for p in process_tree(run.process.process.pid)) / 1024
            )
            for key, at in (
                ("port", run.port_open_at[0] if run.port_open_at else None),
                ("register", run.emulator.first("register")),
                ("next", run.emulator.first("next")),
            ):
                since = run.since_exec(at)
                if since is not None:
                    samples[key].append(since * 1000)
            run.emulator.invoke()
            status, seconds, killed = run.process.shut_down()
            if status != 0 or killed:
                check("timed run: SHUTDOWN -> exit 0", False, f"status {status}")
            samples["shutdown"].append(seconds * 1000)
        finally:
            run.stop()
    bare: list[float] = []
    floor: list[float] = []
    for _ in range(runs):
        seconds, status = timed_exit(
            layer.command(launcher, {"SECRETCACHE_LAYER_BARE": "1"}),
            layer.process_env({}),
        )
        if status != 0:
            check("bare start exits 0", False, f"status {status}")
        bare.append(seconds * 1000)
        seconds, _ = timed_exit(layer.command("/bin/true", {}), layer.process_env({}))
        floor.append(seconds * 1000)
    return [
        ("exec -> port accepting", samples["port"], "ms"),
        ("exec -> register", samples["register"], "ms"),
        ("exec -> first event/next (after prefetch)", samples["next"], "ms"),
        ("SHUTDOWN -> exit", samples["shutdown"], "ms"),
        ("RSS after init (VmRSS)", samples["rss"], "MiB"),
        ("bare bundle start: exec -> exit, no import", bare, "ms"),
        ("chroot + env + /bin/true: exec -> exit", floor, "ms"),
    ]


def print_table(rows: list[tuple[str, list[float], str]], runs: int) -> None:
    print(f"\nmedian of {runs} runs (min-max), in the bullseye root:")
    width = max(len(r[0]) for r in rows)
    for name, values, unit in rows:
        if values:
            print(
                f"  {name:<{width}}  {statistics.median(values):7.1f} {unit:<3}"
                f"  ({min(values):.1f}-{max(values):.1f}, n={len(values)})"
            )
        else:
            print(f"  {name:<{width}}  no sample")


def slim_layer(
    check: Checks, zip_path: str, pythons: Sequence[str], workdir: str, endpoint: str
) -> None:
    if not pythons:
        print("skip slim layer: no Python 3.12+ on this host, not tested")
        return
    unpacked = os.path.join(workdir, "slim")
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(unpacked)
        # zipfile drops modes; the layer's launcher must be 0755 in the zip.
        mode = (z.getinfo("extensions/secretcache").external_attr >> 16) & 0o777
    check(
        "slim layer: extensions/secretcache is 0755 in the zip",
        mode == 0o755,
        oct(mode),
    )
    os.chmod(os.path.join(unpacked, "extensions/secretcache"), mode)
    for python in pythons:
        version = subprocess.run(  # noqa: S603
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        layer = HostLayer(workdir, endpoint, os.path.dirname(python))
        lifecycle(
            check,
            layer,
            os.path.join(unpacked, "extensions/secretcache"),
            "slim/db",
            f"slim layer, Python {version}",
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, help="the bullseye root (host path)")
    parser.add_argument(
        "--layer", required=True, help="the unpacked layer, as a path in the root"
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--slim-zip", help="dist/secretcache-layer-python.zip")
    parser.add_argument(
        "--slim-python", action="append", default=[], help="a Python 3.12+ (repeat)"
    )
    args = parser.parse_args(argv)
    check = Checks()
    workdir = tempfile.mkdtemp(prefix="secretcache-layer-check-")
    launcher = args.layer.rstrip("/") + "/extensions/secretcache"
    moto = Moto()
    layer = ChrootLayer(workdir, moto.url, args.root.rstrip("/"))
    layer_host_path = layer.host_path(args.layer.rstrip("/"))

    def section(title: str, run: Callable[[], object]) -> None:
        print(f"-- {title}")
        try:
            run()
        except Exception as e:  # a crash in one part still lets the rest run
            check(f"{title}: ran to the end", False, f"{type(e).__name__}: {e}")

    def renamed_with_bad_configuration() -> None:
        alias = "/srv/alias/extensions/cache-renamed"
        os.makedirs(os.path.dirname(layer.host_path(alias)), exist_ok=True)
        if os.path.lexists(layer.host_path(alias)):
            os.unlink(layer.host_path(alias))
        os.symlink(launcher, layer.host_path(alias))
        bad_configuration(check, layer, alias)

    def libraries() -> None:
        missing = needed_outside(layer_host_path)
        check(
            "every NEEDED library is in the layer or glibc",
            not missing,
            ", ".join(missing),
        )

    try:
        client = moto.client()
        for name in ("prod/db", "slim/db"):
            client.create_secret(
                Name=name, SecretString=json.dumps({"password": SECRET_VALUE})
            )
        section(
            f"lifecycle (layer unpacked read-only at {args.layer})",
            lambda: lifecycle(
                check, layer, launcher, "prod/db", "bullseye", layer_host_path
            ),
        )
        section("bad configuration", renamed_with_bad_configuration)
        section(
            "TLS (moto over HTTPS with a trustme CA)",
            lambda: tls_checks(check, layer, launcher, workdir),
        )
        section("static: libraries the layer would take from the host", libraries)
        section(
            f"timing ({args.runs} lifecycles and {args.runs} bare starts)",
            lambda: print_table(
                measure(check, layer, launcher, "prod/db", args.runs), args.runs
            ),
        )
        if args.slim_zip:
            section(
                "slim layer (host interpreters)",
                lambda: slim_layer(
                    check, args.slim_zip, args.slim_python, workdir, moto.url
                ),
            )
    finally:
        moto.stop()
        shutil.rmtree(layer.host_path("/srv/alias"), ignore_errors=True)
        if not check.failed:
            shutil.rmtree(workdir, ignore_errors=True)
    if check.failed:
        print(f"\n{len(check.failed)} check(s) failed (logs in {workdir}):")
        for name in check.failed:
            print("  -", name)
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
