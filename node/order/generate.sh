#!/bin/sh
# Writes node/order/ccm.order: the functions of `ccm` an idle daemon runs, which the release link
# places first and together (node/build.rs), so that an idle daemon maps less of its code
# (BENCHMARKS.md, "Idle RSS: the code an idle daemon runs, placed together").
#
# Runs the release `ccm up` under valgrind's callgrind four times: in a fresh home
# (migrations), again in the same home (a restart), after a daemon of the home was killed (the
# start then raises its `daemon_crashed` alert), and once more after rows like a day of a
# busy node's were added to it (complete tasks with their log, agent, attempt, report, alert and
# acknowledged outbox rows, hook events: the start-up and idle loops then read and skip them),
# each until it has sat idle for IDLE seconds (default 6); keeps every function of the `ccm`
# object that ran, by its symbol name (the first run's, then what each later run added). The
# daemon logs at its default level (`info`): what it prints at start is part of what it runs.
#
# Usage: node/order/generate.sh [path/to/release/ccm]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/ccm}
idle=${IDLE:-6}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/cwd"
# The pid in the home's port file (empty without one).
port_pid() {
    sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$work/home/daemon.json" 2>/dev/null || true
}
# Waits until a daemon other than `$1` wrote the port file; `$2` names the log to show on failure.
wait_port() {
    tries=0
    until [ -n "$(port_pid)" ] && [ "$(port_pid)" != "$1" ]; do
        tries=$((tries + 1))
        [ "$tries" -lt 1200 ] || { cat "$work/$2.log" >&2; exit 1; }
        sleep 0.1
    done
}
# `ccm up` in the home, with the command given before it (valgrind, or nothing).
up() {
    cd "$work/cwd"
    env -u CCM_LOG CCM_HOME="$work/home" CCM_DAEMON__PORT=0 \
        CCM_RUNTIME__TMUX_SOCKET="ccm-order-$$" "$@" "$bin" up
}
run() {
    stale=$(port_pid)
    (up valgrind --tool=callgrind --demangle=no --compress-strings=no --compress-pos=no \
        --callgrind-out-file="$work/$1.out" >/dev/null 2>"$work/$1.log") &
    pid=$!
    wait_port "$stale" "$1"
    sleep "$idle"
    # the subshell's child is valgrind: stop it through the port file's pid, and wait for its
    # end (it writes its profile after the daemon stopped, and holds the home's lock until then)
    daemon=$(port_pid)
    kill -TERM "$daemon" 2>/dev/null || true
    wait "$pid" || true
    while kill -0 "$daemon" 2>/dev/null; do sleep 0.1; done
    rm -f "$work/home/daemon.json"
}
run fresh
run restart
# A daemon killed: its port file stays, and the next start reports the crash.
(up >/dev/null 2>"$work/killed.log") &
wait_port "" killed
kill -KILL "$(port_pid)"
wait || true
run crashed
# A day of a busy node, written as `tests/benches/soak.rs` writes it (needs the `sqlite3` shell).
sqlite3 "$work/home/ccm.db" <<'SQL'
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
INSERT INTO tasks (id, title, prompt, profile, max_attempts, attempts, state, created_at, updated_at, version)
SELECT printf('00000001-0000-4000-8000-%012x', i), 'order task ' || i, 'order prompt', 'manual', 3, 1,
       'complete', 1700000000000 + i * 1000, 1700000600000 + i * 1000, 4 FROM n;
INSERT INTO task_log (task_id, at, from_state, to_state, reason, actor)
SELECT id, created_at, NULL, 'created', 'order', 'order' FROM tasks WHERE title LIKE 'order task %';
INSERT INTO agents (id, task_id, attempt, kind, profile, status, dir, cwd, cost_usd, input_tokens,
                    output_tokens, started_at, last_heartbeat, ended_at)
SELECT '00000002' || substr(id, 9), id, 1, 'worker', 'claude', 'exited', '/nonexistent', '/work', 0.12,
       5000, 800, created_at, created_at + 500000, created_at + 500000
FROM tasks WHERE title LIKE 'order task %';
INSERT INTO attempts (task_id, number, agent_id, prompt, started_at, ended_at, outcome, last_message)
SELECT id, 1, '00000002' || substr(id, 9), 'order prompt', created_at, created_at + 500000, 'success', 'done'
FROM tasks WHERE title LIKE 'order task %';
INSERT INTO reports (task_id, attempt, summary, created_at)
SELECT id, 1, '{"cost_usd":0.12}', created_at + 550000 FROM tasks WHERE title LIKE 'order task %';
INSERT INTO alerts (id, task_id, severity, reason, message, created_at, resolved_at)
SELECT '00000003' || substr(id, 9), id, 'warning', 'stalled', 'no output for 10 min',
       created_at + 100000, created_at + 400000
FROM tasks WHERE title LIKE 'order task %' AND rowid % 10 = 0;
INSERT INTO outbox (stream, entity_key, entity_version, lane, payload, created_at, state)
SELECT 'task_summary', id, 4, 'normal', '{"state":"complete"}', created_at, 'acked'
FROM tasks WHERE title LIKE 'order task %';
UPDATE notifications SET routed_at = created_at WHERE routed_at IS NULL;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
INSERT INTO hook_events (key, at, system, task_id, session_id, event, kind, tool, via, payload)
SELECT 'order-' || i, 1700000000000 + i * 4000, 'claude', NULL, 's', 'PreToolUse', 'pre_tool', 'Edit',
       'api', '{"tool_name":"Edit"}' FROM n;
SQL
run data
# `fn=NAME` lines of the `ob=` block of ccm; `'N` marks a recursion level.
awk -v bin="$(readlink -f "$bin")" '
    /^ob=/ { ours = (substr($0, 4) == bin) }
    /^fn=/ && ours { name = substr($0, 4); sub(/'"'"'[0-9]+$/, "", name); if (!seen[name]++) print name }
' "$work/fresh.out" "$work/restart.out" "$work/crashed.out" "$work/data.out" >"$here/ccm.order"
echo "$(wc -l <"$here/ccm.order") functions written to $here/ccm.order"
