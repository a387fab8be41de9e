#!/usr/bin/env bash
# Azure Blob Storage as a server on this machine for the backup tests:
# Azurite, Microsoft's Azure Storage emulator, installed from the npm
# registry (e2e/azurite/package-lock.json pins it). The tests start and
# stop their own servers (e2e/src/emulators.rs); this only installs it.
# (Google Cloud Storage has none: see e2e/src/emulators.rs.)
#
#   scripts/emulators.sh build   install Azurite into the cache, unless it is
#                                up to date
#
# Environment:
#   ORDINAL_CACHE_DIR   built binaries, kept across runs [~/.cache/ordinal]
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$REPO/scripts/lib/common.sh"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'emulators.sh: %s\n' "$*" >&2; exit 1; }

install_azurite() {
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  local src=$REPO/e2e/azurite dest=$CACHE_DIR/azurite stamp
  stamp=$(content_hash "$src/package.json" "$src/package-lock.json" "$src/create-container.js" "$0" "$(node --version)")
  if [ -x "$dest/node_modules/.bin/azurite-blob" ] && [ "$(cat "$dest/.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  log "installing Azurite from the npm registry"
  rm -rf "$dest"
  mkdir -p "$dest"
  cp "$src/package.json" "$src/package-lock.json" "$src/create-container.js" "$dest/"
  (cd "$dest" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$stamp" >"$dest/.stamp"
  log "Azurite in $dest"
}

case "${1:-}" in
  build)
    install_azurite
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
