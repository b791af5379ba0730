#!/usr/bin/env bash
# The main job: a live etcd-to-etcd migration with cutover, on two local
# etcd servers this script starts on free loopback ports and removes at the
# end. An "application" keeps writing to the source during the copy.
#
# Usage: bash deploy/local/demo.sh [KEYS]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
keys="${1:-100000}"
bash deploy/local/install.sh
echo "== building ferry"
cargo build -q -p ferry-cli
ferry="$CARGO_TARGET_DIR/debug/ferry"
work="$(mktemp -d /tmp/ferry-demo.XXXXXX)"
pids=()
cleanup() {
    "$ferry" stop --journal "$work/journal" --abort >/dev/null 2>&1 || true
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_etcd() { # name -> prints endpoint
    local name=$1 cport pport
    cport=$(free_port); pport=$(free_port)
    etcd --name "$name" --data-dir "$work/$name" \
        --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
        --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
        --initial-cluster "$name=http://127.0.0.1:$pport" --initial-cluster-state new \
        --logger=zap --log-level=error >"$work/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        if python3 - "$cport" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request
sys.exit(0 if b'"health":"true"' in urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1).read() else 1)
PY
        sleep 0.1
    done
    echo "127.0.0.1:$cport"
}
src=$(start_etcd source); tgt=$(start_etcd target)
agent_port=$(free_port)
echo "== source etcd $src (the running service), target etcd $tgt (the new cluster)"
python3 deploy/local/workload.py load "$src" app "$keys"
python3 deploy/local/workload.py auth "$src" app/

echo; echo "== ferry start (the application keeps writing meanwhile)"
python3 deploy/local/workload.py write "$src" app 25 > "$work/writer.out" &
writer=$!
"$ferry" start --no-monitor --journal "$work/journal" --agent.listen "127.0.0.1:$agent_port" \
    --source "etcd://root:rootpw@$src/app" --target "etcd://$tgt/app"
for _ in $(seq 30); do
    sleep 2
    line=$("$ferry" status --journal "$work/journal" | head -1)
    echo "   $line"
    case "$line" in *"| streaming |"*"lag 0 events"*) break ;; esac
done
wait "$writer"; cat "$work/writer.out"
echo; echo "== ferry status"
"$ferry" status --journal "$work/journal"

echo; echo "== ferry stop: source read-only, fence, drain, verify, open the target"
"$ferry" stop --journal "$work/journal"

echo; echo "== ferry verify (source and target compared by digests)"
"$ferry" verify --source "etcd://root:rootpw@$src/app" --target "etcd://$tgt/app"

echo; echo "== the source now refuses the application's writes"
if python3 deploy/local/workload.py put-as-app "$src" app/after-cutover; then echo "   UNEXPECTED: write accepted"; exit 1; else echo "   write refused, as it should be"; fi
"$ferry" set-server-mode --source "etcd://root:rootpw@$src/app" --mode default
python3 deploy/local/workload.py put-as-app "$src" app/after-restore && echo "   write accepted again after set-server-mode --mode default"
echo; echo "demo done: the target holds exactly what the source held at the fence."
