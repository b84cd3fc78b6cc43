#!/bin/sh
# Slim layer: start secretcache with the Python runtime's own interpreter
# (a version this layer was built for) and the dependencies shipped in it.
set -eu

SECRETCACHE_EXTENSION_NAME=$(basename -- "$0")
export SECRETCACHE_EXTENSION_NAME

self=$0
if [ -L "$self" ]; then
    self=$(readlink -f -- "$self")
fi
here=$(CDPATH='' cd -- "$(dirname -- "$self")" && pwd -P)
site="$here/../secretcache/site-packages"

# The runtime's interpreter lives in /var/lang/bin; fall back to PATH so the
# unpacked layer also runs elsewhere (tests).
py=/var/lang/bin/python3
if [ ! -x "$py" ]; then
    py=$(command -v python3 || true)
fi
if [ -z "$py" ]; then
    echo "secretcache: no python3 found (this layer is for Python 3.12+ runtimes; use secretcache-layer.zip elsewhere)" >&2
    exit 1
fi

# -I: ignore PYTHONPATH (Lambda points it at the runtime's own botocore), the
# user site and the current directory, then put our dependencies first. Our
# libraries stay off the function's own sys.path (they are not in /opt/python).
# The layer carries compiled modules (cffi) for the versions it was built for,
# listed by the build in python-versions: another one would fail on import.
exec "$py" -I -c '
import sys
site = sys.argv.pop(1)
with open(site + "/../python-versions") as f:
    carried = f.read().split()
if "%d.%d" % sys.version_info[:2] not in carried:
    sys.exit("secretcache: this layer carries modules for Python %s, not %d.%d; use secretcache-layer.zip" % (" and ".join(carried), *sys.version_info[:2]))
sys.path.insert(0, site)
sys.argv[0] = "secretcache"
from secretcache.__main__ import main
raise SystemExit(main())
' "$site" "$@"
