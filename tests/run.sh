#!/usr/bin/env bash
# Runs all of ccm's tests on a fresh machine: installs what they need when it is missing, then
# runs `cargo test --workspace`. The README's test command and CI's (`.ci/run`) both run this.
#
# Installs (Debian or Ubuntu, with apt-get; through sudo when not root):
# - tmux, git, sqlite3, and systemd's `systemd-analyze` (for the unit `ccm service install` writes);
# - PostgreSQL 15, pgTAP and pg_prove (the central schema's tests; no system-wide cluster is made:
#   the tests start their own as an unprivileged user);
# - Chromium and ChromeDriver (the dashboard's browser tests);
# - Node.js and npm, then the real Claude Code, Gemini CLI and Codex at the versions
#   tests/agent-clis/package-lock.json pins (into tests/agent-clis/node_modules);
# - postrust, a PostgREST-compatible server, with `cargo install postrust-server` (into ~/.cargo/bin).
# The first run takes about 15 minutes on 2 cores (packages 2-3 min, postrust 4-5 min, the
# build 3-4 min, the tests 4-6 min); later runs only build what changed and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "tests/run.sh: installing $* needs root (or sudo)" >&2
        exit 1
    fi
}

apt_updated=false
apt_install() {
    echo "installing: $*"
    if [ "$apt_updated" = false ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=true
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

command -v apt-get >/dev/null 2>&1 || {
    echo "tests/run.sh: installs with apt-get (Debian or Ubuntu); elsewhere install tmux, git," \
        "sqlite3, PostgreSQL 15 with pgTAP and pg_prove, chromium and chromedriver, npm and" \
        "postrust by hand, then run cargo test --workspace" >&2
    exit 1
}

missing=()
for tool in tmux git sqlite3; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
[ -f /usr/share/postgresql/15/extension/pgtap.control ] || missing+=(postgresql-15-pgtap)
command -v pg_prove >/dev/null 2>&1 || missing+=(libtap-parser-sourcehandler-pgtap-perl)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    # The tests start their own PostgreSQL clusters: no system-wide one.
    if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
        as_root mkdir -p /etc/postgresql-common
        echo 'create_main_cluster = false' | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    apt_install "${missing[@]}"
fi

[ -f tests/agent-clis/node_modules/.ccm-installed ] || sh tests/agent-clis/install.sh

command -v cargo >/dev/null 2>&1 || { echo "cargo is required (rustup toolchain)" >&2; exit 1; }
cargo --version

if ! command -v postrust >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/postrust" ]; then
    cargo install postrust-server
fi

cargo test --workspace "$@"
