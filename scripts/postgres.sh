#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests and benchmarks, in <repo>/.cache/postgres on a
# free loopback port. Idempotent: installs the Debian `postgresql` package when missing,
# creates the cluster once, starts it unless it runs, and (re)creates an empty database.
#
#   scripts/postgres.sh              print the database URL (postgres://…) on stdout
#   scripts/postgres.sh --env        print `export SWITCHYARD_TEST_DATABASE_URL=…`
#                                    (use: eval "$(scripts/postgres.sh --env)")
#   scripts/postgres.sh stop         stop the server (the cluster stays for next time)
#
# Logs go to stderr and .cache/postgres/server.log. As root, the server runs as the
# `postgres` system user (PostgreSQL refuses to run as root).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${SWITCHYARD_POSTGRES_DIR:-$repo_root/.cache/postgres}"
data="$dir/data"
database="switchyard_test"
user="switchyard"
log() { echo "[postgres] $*" >&2; }

pg_bin() {
    local bin
    bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
    [[ -n "$bin" && -x "$bin/pg_ctl" ]] && echo "$bin"
}

bin="$(pg_bin || true)"
if [[ -z "$bin" ]]; then
    if [[ "$(id -u)" != 0 ]]; then
        log "PostgreSQL is not installed and installing it needs root: apt-get install -y postgresql"
        exit 1
    fi
    log "installing the Debian postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q postgresql >&2 || { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; }
    bin="$(pg_bin)"
fi

# Run a PostgreSQL program as the cluster's owner.
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# As root the server runs as `postgres`, which must reach the cluster directory; a checkout
# under a private directory gets one in the temporary directory instead.
if [[ "$(id -u)" == 0 && -z "${SWITCHYARD_POSTGRES_DIR:-}" ]] && id postgres >/dev/null 2>&1; then
    mkdir -p "$dir" && chown postgres: "$dir"
    if ! runuser -u postgres -- test -w "$dir"; then
        dir="${TMPDIR:-/tmp}/switchyard-postgres-$(printf %s "$repo_root" | sha256sum | cut -c1-12)"
        data="$dir/data"
    fi
fi

running() { [[ -f "$data/PG_VERSION" ]] && as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; }

if [[ "${1:-}" == "stop" ]]; then
    if running; then as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >&2; fi
    exit 0
fi

mkdir -p "$dir"
if [[ "$(id -u)" == 0 ]]; then chown postgres: "$dir"; fi

if [[ ! -f "$data/PG_VERSION" ]]; then
    log "creating a cluster in $data"
    as_owner "$bin/initdb" -D "$data" -U "$user" -A trust -E UTF8 --no-instructions >&2
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! running; then
    port=""
    for _ in $(seq 1 50); do
        candidate=$((20000 + RANDOM % 20000))
        if port_free "$candidate"; then port="$candidate"; break; fi
    done
    [[ -n "$port" ]] || { log "no free port found"; exit 1; }
    log "starting on 127.0.0.1:$port"
    as_owner "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >&2
    echo "$port" > "$dir/port"
fi
port="$(cat "$dir/port")"

psql_run() { as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U "$user" -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
psql_run -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >&2
psql_run -c "CREATE DATABASE $database" >&2

url="postgres://$user@127.0.0.1:$port/$database"
if [[ "${1:-}" == "--env" ]]; then
    echo "export SWITCHYARD_TEST_DATABASE_URL=$url"
else
    echo "$url"
fi
