#!/bin/sh
# Prints, one per line and sorted, the Debian packages that provide the shared libraries the given executables load
# directly (their ELF NEEDED entries); apt installs what those packages depend on. Used by the Dockerfiles' builder
# stage so that the runtime stage installs exactly the runtime libraries of the binaries it ships.
# Usage: runtime-packages.sh [--allow-prefix DIR] EXE...
#   --allow-prefix DIR  libraries under DIR (e.g. a CUDA LibTorch in /opt/libtorch) need no package; the
#                       Dockerfile copies DIR itself. Any other library without a package is an error.
# Exit status: 0, or 1 with a message naming the executable and library that is missing or unpackaged.
set -eu
allow=""
if [ "${1:-}" = "--allow-prefix" ]; then
  allow="$2"
  shift 2
fi
[ "$#" -gt 0 ] || { echo "usage: runtime-packages.sh [--allow-prefix DIR] EXE..." >&2; exit 2; }
libs="$(mktemp)"
trap 'rm -f "$libs"' EXIT
for exe in "$@"; do
  [ -x "$exe" ] || { echo "runtime-packages: $exe: not an executable" >&2; exit 1; }
  resolved="$(ldd "$exe")"
  if printf '%s\n' "$resolved" | grep -q "not found"; then
    echo "runtime-packages: $exe: unresolved libraries:" >&2
    printf '%s\n' "$resolved" | grep "not found" >&2
    exit 1
  fi
  for name in $(objdump -p "$exe" | awk '$1 == "NEEDED" {print $2}'); do
    case "$name" in ld-linux*) continue ;; esac
    path="$(printf '%s\n' "$resolved" | awk -v n="$name" '$1 == n && $2 == "=>" {print $3; exit}')"
    [ -n "$path" ] || { echo "runtime-packages: $exe: $name not resolved by ldd" >&2; exit 1; }
    real="$(readlink -f "$path")"
    if [ -n "$allow" ] && [ "${real#"$allow"/}" != "$real" ]; then
      continue
    fi
    echo "$real" >>"$libs"
  done
done
# One dpkg query for all libraries (each query reads the whole package database). Debian 12 is merged-/usr: dpkg may
# have recorded a library as /lib/... or /usr/lib/..., so each library is looked up under both names.
sort -u "$libs" | while read -r real; do
  printf '%s\n%s\n' "$real" "${real#/usr}"
done | xargs -r dpkg -S 2>/dev/null | awk -F': ' '{print $1 "\t" $2}' >"$libs.owners" || true
unowned="$(sort -u "$libs" | while read -r real; do
  awk -F'\t' -v a="$real" -v b="${real#/usr}" '$2 == a || $2 == b {found = 1} END {exit !found}' "$libs.owners" ||
    echo "$real"
done)"
if [ -n "$unowned" ]; then
  echo "runtime-packages: these libraries belong to no Debian package: $(echo "$unowned" | tr "\n" " ")" >&2
  rm -f "$libs.owners"
  exit 1
fi
cut -f1 "$libs.owners" | tr ',' '\n' | sed 's/:.*//; s/^ *//' | sort -u
rm -f "$libs.owners"
