# Shared settings for the infra/ scripts. Sourced, not run.
# TALLY_CACHE: installed tools and build output (outside the clone, kept between runs).
# TALLY_STATE: pidfiles, logs and data of the services infra/up starts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TALLY_CACHE="${TALLY_CACHE:-$HOME/.cache/tally}"
export TALLY_STATE="${TALLY_STATE:-$ROOT/.tally}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TALLY_CACHE/target}"
export TALLY_TANSU="${TALLY_TANSU:-$TALLY_CACHE/tansu/bin/tansu}"
TANSU_VERSION="0.6.0"
REDIS_PORT="${TALLY_REDIS_PORT:-6390}"
BROKER_PORT="${TALLY_BROKER_PORT:-9192}"
BROKER_STORAGE="${TALLY_BROKER_STORAGE:-memory}"   # memory | sqlite

log() { printf '[infra] %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Wait until something answers on 127.0.0.1:$1, up to $2 seconds.
wait_port() {
  local port=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# Whether the pid in pidfile $1 is alive.
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
