#!/bin/sh
# Lambda starts every file in /opt/extensions/; this one starts the frozen
# secretcache bundle that the same layer unpacks next to it. The bundle is
# found relative to this file, so an unpacked layer runs from any directory.
set -eu

# Lambda registers an extension under its file name, so pass the name we were
# started as (before resolving any symlink) down to the Python side.
SECRETCACHE_EXTENSION_NAME=$(basename -- "$0")
export SECRETCACHE_EXTENSION_NAME

self=$0
if [ -L "$self" ]; then
    self=$(readlink -f -- "$self")
fi
here=$(CDPATH='' cd -- "$(dirname -- "$self")" && pwd -P)

exec "$here/../secretcache/secretcache" "$@"
