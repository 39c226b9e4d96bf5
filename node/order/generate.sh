#!/bin/sh
# Writes node/order/ccm.order: the functions of `ccm` an idle daemon runs, which the release link
# places first and together (node/build.rs), so that an idle daemon maps less of its code
# (BENCHMARKS.md, "Idle RSS: the code an idle daemon runs, placed together").
#
# Runs the release `ccm up` under valgrind's callgrind twice, in a fresh home (migrations) and
# again in the same home (a restart), each until it has sat idle for IDLE seconds (default 6),
# and keeps every function of the `ccm` object that ran, by its symbol name. The daemon logs at
# its default level (`info`): what it prints at start is part of what it runs.
#
# Usage: node/order/generate.sh [path/to/release/ccm]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/ccm}
idle=${IDLE:-6}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/cwd"
run() {
    (
        cd "$work/cwd"
        env -u CCM_LOG CCM_HOME="$work/home" CCM_DAEMON__PORT=0 \
            CCM_RUNTIME__TMUX_SOCKET="ccm-order-$$" \
            valgrind --tool=callgrind --demangle=no --compress-strings=no --compress-pos=no \
            --callgrind-out-file="$work/$1.out" "$bin" up >/dev/null 2>"$work/$1.log"
    ) &
    pid=$!
    tries=0
    until [ -f "$work/home/daemon.json" ]; do
        tries=$((tries + 1))
        [ "$tries" -lt 1200 ] || { cat "$work/$1.log" >&2; exit 1; }
        sleep 0.1
    done
    sleep "$idle"
    kill -TERM "$pid" 2>/dev/null || true
    # the subshell's child is valgrind: stop it through the port file's pid
    kill -TERM "$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$work/home/daemon.json")" 2>/dev/null || true
    wait "$pid" || true
    rm -f "$work/home/daemon.json"
}
run fresh
run restart
# `fn=NAME` lines of the `ob=` block of ccm; `'N` marks a recursion level.
awk -v bin="$(readlink -f "$bin")" '
    /^ob=/ { ours = (substr($0, 4) == bin) }
    /^fn=/ && ours { name = substr($0, 4); sub(/'"'"'[0-9]+$/, "", name); if (!seen[name]++) print name }
' "$work/fresh.out" "$work/restart.out" >"$here/ccm.order"
echo "$(wc -l <"$here/ccm.order") functions written to $here/ccm.order"
