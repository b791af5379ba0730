#!/usr/bin/env bash
# The main job of this build: a tour of Ferry's durable journal on generated
# events (append with fsync per batch, replay with checkpoints, truncate,
# verify, inspect). The live store migrations arrive with later issues and
# will replace this demo.
#
# Usage: bash deploy/local/demo.sh [EVENTS]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
events="${1:-1000000}"
bash deploy/local/install.sh
cargo build -p ferry-cli
ferry="$CARGO_TARGET_DIR/debug/ferry"
journal="$(mktemp -d /tmp/ferry-demo.XXXXXX)/journal"
trap 'rm -rf "$(dirname "$journal")"' EXIT
echo
echo "== ferry journal demo: $events events over 8 shards"
"$ferry" journal demo --journal "$journal" --events "$events"
echo
echo "== ferry journal verify"
"$ferry" journal verify "$journal"
echo
echo "== ferry journal inspect"
"$ferry" journal inspect "$journal"
