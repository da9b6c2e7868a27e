#!/usr/bin/env bash
# Runs the end-to-end benchmark (benches/end_to_end.rs): installs `wrk`
# from the distribution's packages if it is missing, then alternates the
# bare and the guarded server under load. Settings: see the bench's docs.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
    echo "installing wrk..."
    if command -v apt-get >/dev/null 2>&1; then
        sudo_cmd=""
        [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        $sudo_cmd apt-get install -y -q wrk >/dev/null
    else
        echo "wrk is missing and apt-get is not available: install wrk, then rerun" >&2
        exit 1
    fi
fi
exec cargo bench --bench end_to_end "$@"
