#!/usr/bin/env bash
# Install what rust-toolchain.toml names: the pinned toolchain, its components and its targets.
#
# rustup installs a toolchain's extra targets on demand only when RUSTUP_AUTO_INSTALL allows it;
# on machines that set RUSTUP_AUTO_INSTALL=0 (CI here) rust-toolchain.toml alone installs
# nothing, and the first wasm build fails with "can't find crate for `core`". Idempotent and
# fast (seconds) when everything is present.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
file="$repo_root/rust-toolchain.toml"

# list KEY: the quoted strings of KEY = [...] in rust-toolchain.toml
list() { sed -n "s/^$1 *= *\[\(.*\)\]/\1/p" "$file" | tr -d '" ' | tr ',' ' '; }
channel="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$file")"
profile="$(sed -n 's/^profile *= *"\(.*\)"/\1/p' "$file")"
components="$(list components)"
targets="$(list targets)"

if ! command -v rustup >/dev/null 2>&1; then
    echo "[toolchain] rustup is required (https://rustup.rs)" >&2
    exit 1
fi

installed_targets="$(rustup target list --installed --toolchain "$channel" 2>/dev/null || true)"
installed_components="$(rustup component list --installed --toolchain "$channel" 2>/dev/null || true)"
missing=""
for t in $targets; do grep -qx "$t" <<<"$installed_targets" || missing="$missing target:$t"; done
for c in $components; do grep -q "^$c" <<<"$installed_components" || missing="$missing component:$c"; done
if [[ -z "$installed_targets" ]]; then
    echo "[toolchain] installing Rust $channel with components ($components) and targets ($targets)" >&2
    args=(--profile "${profile:-minimal}")
    for c in $components; do args+=(--component "$c"); done
    for t in $targets; do args+=(--target "$t"); done
    rustup toolchain install "$channel" "${args[@]}" >&2
elif [[ -n "$missing" ]]; then
    echo "[toolchain] adding to Rust $channel:$missing" >&2
    for m in $missing; do
        case "$m" in
            target:*) rustup target add --toolchain "$channel" "${m#target:}" >&2 ;;
            component:*) rustup component add --toolchain "$channel" "${m#component:}" >&2 ;;
        esac
    done
else
    echo "[toolchain] Rust $channel with components ($components) and targets ($targets) present" >&2
fi
