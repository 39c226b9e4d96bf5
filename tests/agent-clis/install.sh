#!/bin/sh
# Installs the agent CLIs the tests run, at the versions package-lock.json pins, into
# tests/agent-clis/node_modules. Install scripts stay off (node-pty's would compile C++);
# Claude Code's own postinstall only copies its native binary into place, so it runs by hand.
set -eu
cd "$(dirname "$0")"
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
node node_modules/@anthropic-ai/claude-code/install.cjs
touch node_modules/.ccm-installed
