#!/usr/bin/env bash
# ccp: set up this machine and run the pipeline or its tests.
#
#   ./ccp build [DOIT ARGS]   install what is missing, start dockerd, build the sample images (doit -n 2)
#   ./ccp test [PYTEST ARGS]  the same set-up, then ruff (lint, format), mypy and the test suite
#   ./ccp doit [DOIT ARGS]    any doit command in the project's virtualenv (list, info, tree, clean …)
#   ./ccp setup               only the set-up
#   ./ccp apt-cache [stop]    start (or stop) a local apt-cacher-ng on loopback and print the setting for builds
#
# Every step is idempotent: packages are installed only when missing, dockerd
# is started only when no engine answers, the virtualenv is refreshed only
# when requirements.txt changed. An engine that answers is used as it is, and
# Debian's docker.io is installed only when this machine has no Docker at all
# (no engine answering, no dockerd, no Docker CE package). With DOCKER_HOST
# set, that engine is used and no local dockerd is started.
# (`source ccp --functions-only` defines the functions and runs nothing.)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
CACHE="$HERE/cache"
DEBIAN_PACKAGES=(mmdebstrap git busybox-static ca-certificates python3-venv graphviz)
ENGINE_PACKAGE=docker.io  # only when there is no Docker at all (engine_plan)
# Docker CE's and Moby's packages: Debian's docker.io conflicts with them.
DOCKER_CE_PACKAGES=(docker-ce docker-ce-cli containerd.io moby-engine)
# The tests also start real registries (Distribution 2.8, htpasswd from
# apache2-utils), check pushes with an independent client (skopeo) and pack
# the host's openssl into a TLS fixture image.
TEST_PACKAGES=(docker-registry skopeo apache2-utils openssl)

# `./ccp apt-cache`: a local apt-cacher-ng for builds (build.apt_proxy); its
# cache, log and configuration live under cache/apt-cacher-ng.
APT_CACHE_PORT="${CCP_APT_CACHE_PORT:-3142}"
APT_CACHE_DIR="$CACHE/apt-cacher-ng"

say() { printf 'ccp: %s\n' "$*" >&2; }
die() { printf 'ccp: error: %s\n' "$*" >&2; exit 1; }

SUDO=""
find_sudo() {
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "not root and no sudo: install ${DEBIAN_PACKAGES[*]} by hand"
        SUDO="sudo"
    fi
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

install_packages() {
    local missing=()
    for package in "${DEBIAN_PACKAGES[@]}" "$@"; do
        installed "$package" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

engine_answers() {
    timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# How this machine gets its engine, one word: `use` (one answers), `start` (a
# dockerd is installed, docker.io's or Docker CE's), `install` (no Docker at
# all: Debian's docker.io). Installing docker.io next to Docker CE would make
# apt remove or break it, so that case is an error instead.
engine_plan() {
    if engine_answers; then
        echo use
        return 0
    fi
    if [ -n "${DOCKER_HOST:-}" ]; then
        die "no Docker engine answers at DOCKER_HOST=$DOCKER_HOST; start it there, or unset DOCKER_HOST to use a local dockerd"
    fi
    if command -v dockerd >/dev/null; then
        echo start
        return 0
    fi
    local package
    for package in "${DOCKER_CE_PACKAGES[@]}"; do
        if installed "$package"; then
            die "no Docker engine answers and no dockerd is on PATH, but Docker CE's package $package is installed: install and start its engine (apt-get install docker-ce; systemctl start docker) or set DOCKER_HOST; ccp does not install Debian's $ENGINE_PACKAGE over it (the packages conflict)"
        fi
    done
    echo install
}

start_engine() {
    if engine_answers; then
        return 0
    fi
    mkdir -p "$CACHE"
    say "no Docker engine answers; starting dockerd (log: cache/dockerd.log)"
    # setsid: dockerd outlives this script and ignores its terminal's Ctrl-C.
    $SUDO setsid dockerd >>"$CACHE/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        if engine_answers; then
            say "dockerd is up ($(docker version --format '{{.Server.Version}}'))"
            return 0
        fi
        sleep 1
    done
    tail -n 20 "$CACHE/dockerd.log" >&2 || true
    die "dockerd did not answer within 60s; see cache/dockerd.log"
}

setup_venv() {
    local stamp="$VENV/.requirements.sha256"
    local wanted
    wanted="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating the virtualenv in .venv"
        python3 -m venv "$VENV"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        say "installing requirements.txt into .venv"
        "$VENV/bin/pip" install -q --upgrade pip >/dev/null
        "$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
        echo "$wanted" > "$stamp"
    fi
}

setup() {
    local plan
    plan="$(engine_plan)"
    find_sudo
    if [ "$plan" = install ]; then
        install_packages "$ENGINE_PACKAGE" "$@"
    else
        install_packages "$@"
    fi
    [ "$plan" = use ] || start_engine
    setup_venv
    mkdir -p "$CACHE"
}

# Whether an apt-cacher-ng (not just anything) answers on the loopback port.
apt_cache_answers() {
    timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$APT_CACHE_PORT && printf 'GET /acng-report.html HTTP/1.0\r\n\r\n' >&3 && cat <&3" 2>/dev/null \
        | grep -qi '^Server: .*Apt-Cacher.NG'
}

apt_cache() {
    # apt-cacher-ng 3.7 cannot bind a port above 32767 ("Error resolving address for binding").
    case "$APT_CACHE_PORT" in
        ''|*[!0-9]*) die "CCP_APT_CACHE_PORT=$APT_CACHE_PORT is not a port number" ;;
    esac
    [ "$APT_CACHE_PORT" -ge 1 ] && [ "$APT_CACHE_PORT" -le 32767 ] \
        || die "CCP_APT_CACHE_PORT=$APT_CACHE_PORT: apt-cacher-ng binds only ports 1-32767; choose one (default 3142)"
    find_sudo
    install_packages apt-cacher-ng
    if [ "${1:-}" = stop ]; then
        local pid
        pid="$(cat "$APT_CACHE_DIR/pid" 2>/dev/null || true)"
        if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
            say "stopped apt-cacher-ng (pid $pid)"
        else
            say "no apt-cacher-ng of this checkout is running"
        fi
        rm -f "$APT_CACHE_DIR/pid"
        return 0
    fi
    if apt_cache_answers; then
        say "apt-cacher-ng already answers on 127.0.0.1:$APT_CACHE_PORT"
    else
        mkdir -p "$APT_CACHE_DIR/cache" "$APT_CACHE_DIR/log" "$APT_CACHE_DIR/conf"
        # Without Remap rules it caches whatever http mirror apt asks for, by
        # host and path (Debian's default remaps point at mirrors that may not resolve).
        cat > "$APT_CACHE_DIR/conf/acng.conf" <<EOF
CacheDir: $APT_CACHE_DIR/cache
LogDir: $APT_CACHE_DIR/log
SupportDir: /usr/lib/apt-cacher-ng
Port: $APT_CACHE_PORT
BindAddress: 127.0.0.1
PidFile: $APT_CACHE_DIR/pid
ExThreshold: 4
EOF
        # setsid: it outlives this script and ignores its terminal's Ctrl-C.
        setsid apt-cacher-ng -c "$APT_CACHE_DIR/conf" ForeGround=1 >>"$APT_CACHE_DIR/log/daemon.log" 2>&1 < /dev/null &
        local answered=""
        for _ in $(seq 1 20); do
            if apt_cache_answers; then answered=yes; break; fi
            sleep 0.5
        done
        if [ -z "$answered" ]; then
            tail -n 5 "$APT_CACHE_DIR/log/daemon.log" >&2 || true
            die "apt-cacher-ng did not answer on 127.0.0.1:$APT_CACHE_PORT within 10s (port taken? set CCP_APT_CACHE_PORT); see cache/apt-cacher-ng/log/"
        fi
        say "apt-cacher-ng is up on 127.0.0.1:$APT_CACHE_PORT (cache and log: cache/apt-cacher-ng/)"
    fi
    say "builds go through it with this in ccp.yaml or ccp.local.yaml:"
    printf 'build:\n  apt_proxy: http://127.0.0.1:%s\n' "$APT_CACHE_PORT"
}

if [ "${1:-}" = "--functions-only" ]; then
    return 0 2>/dev/null || exit 0
fi

command="${1:-build}"
[ $# -gt 0 ] && shift
cd "$HERE"
case "$command" in
    setup)
        setup
        ;;
    build)
        setup
        exec "$VENV/bin/doit" -n 2 "$@"
        ;;
    doit)
        setup
        exec "$VENV/bin/doit" "$@"
        ;;
    test)
        setup "${TEST_PACKAGES[@]}"
        # Lint and format first: a second of work that fails before 20 minutes of tests.
        say "ruff check, ruff format --check and mypy (settings: pyproject.toml)"
        "$VENV/bin/ruff" check --quiet ccp_tasks tests bench dodo.py
        "$VENV/bin/ruff" format --check --quiet ccp_tasks tests bench dodo.py
        "$VENV/bin/mypy" ccp_tasks
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    apt-cache)
        apt_cache "$@"
        ;;
    -h|--help|help)
        sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'
        ;;
    *)
        die "unknown command '$command'; try ./ccp help"
        ;;
esac
