#!/usr/bin/env bash
# Print the newest GLIBC_x.y symbol version that any ELF file in a layer needs
# (its glibc floor) and which files need it, from `objdump -T`.
# Usage: bash layer/glibc-floor.sh [-v] [--max X.Y] LAYER.zip|DIR
#   -v        also list every ELF file with its own floor
#   --max X.Y exit 1 when the floor is above X.Y
set -euo pipefail

verbose=0
max=""
while (($#)); do
    case "$1" in
    -v) verbose=1; shift ;;
    --max) max=$2; shift 2 ;;
    -*) echo "usage: $0 [-v] [--max X.Y] LAYER.zip|DIR" >&2; exit 2 ;;
    *) break ;;
    esac
done
[ $# -eq 1 ] || { echo "usage: $0 [-v] [--max X.Y] LAYER.zip|DIR" >&2; exit 2; }
command -v objdump >/dev/null || { echo "objdump missing (apt-get install binutils)" >&2; exit 2; }

target=$1
tmp=""
trap '[ -z "$tmp" ] || rm -rf -- "$tmp"' EXIT
if [ -f "$target" ]; then
    tmp=$(mktemp -d)
    unzip -q "$target" -d "$tmp"
    target=$tmp
fi

# One line per ELF file: "<floor> <path>"; files needing no versioned glibc
# symbol (or not dynamically linked) get 0.
per_file=$(
    find "$target" -type f -print0 | while IFS= read -r -d '' f; do
        [ "$(head -c 4 -- "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
        v=$(objdump -T -- "$f" 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1 || true)
        printf '%s %s\n' "${v:-0}" "${f#"$target"/}"
    done | sort -V
)
[ -n "$per_file" ] || { echo "no ELF files in $1" >&2; exit 2; }
((verbose)) && printf '%s\n' "$per_file"
floor=$(printf '%s\n' "$per_file" | tail -1 | cut -d' ' -f1)
count=$(printf '%s\n' "$per_file" | wc -l)
echo "glibc floor: GLIBC_$floor ($count ELF files), needed by:"
printf '%s\n' "$per_file" | awk -v f="$floor" '$1 == f { print "  " $2 }'
if [ -n "$max" ] && [ "$(printf '%s\n%s\n' "$floor" "$max" | sort -V | tail -1)" != "$max" ]; then
    echo "glibc floor GLIBC_$floor is above the allowed $max" >&2
    exit 1
fi
