#!/usr/bin/env bash
# The project's test command: installs what is missing, checks formatting
# and lints, then runs every test against real local servers (the tests start
# their own etcd, OpenBao and SecantusDB on free loopback ports).
#
# CARGO_TARGET_DIR defaults to a directory outside the clone so that later
# runs on the same machine (CI included) reuse the build.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
bash deploy/local/install.sh
echo "== cargo fmt --check ($(date +%T))"
cargo fmt --all --check
echo "== cargo clippy ($(date +%T))"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test ($(date +%T))"
cargo test --workspace
