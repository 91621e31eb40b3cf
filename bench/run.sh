#!/usr/bin/env bash
# The benchmark suite of issue 6: one command installs what it needs and runs everything.
#
#   bash bench/run.sh            # = --quick: about 7 minutes, 2 rounds of short runs
#   bash bench/run.sh --full     # 5 rounds, 60 s steady load (about 32 minutes)
#   bash bench/run.sh --micro    # only the decision-path micro-benchmarks
#   bash bench/run.sh --setup    # only build the environments
#
# Extra arguments after the mode go to bench/harness.py (e.g. --skip-litellm,
# --forwarder uvicorn:raw, --rounds 3). Results: bench/results/*.json, and
# bench/report.py prints the tables of docs/performance.md from them.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
VENVS="$HERE/.venvs"
PYTHON="${PYTHON:-python3}"

mode=quick
case "${1:-}" in
  --quick) mode=quick; shift ;;
  --full) mode=full; shift ;;
  --smoke) mode=smoke; shift ;;
  --micro) mode=micro; shift ;;
  --setup) mode=setup; shift ;;
esac

log() { echo "[run.sh] $*" >&2; }

setup() {
  if ! command -v wrk >/dev/null; then
    log "installing wrk (Debian)"
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  fi
  command -v taskset >/dev/null || { log "taskset (util-linux) is required"; exit 2; }
  if [ ! -x "$VENVS/router/bin/python" ]; then
    log "creating $VENVS/router"
    "$PYTHON" -m venv "$VENVS/router"
  fi
  if ! "$VENVS/router/bin/python" -c "import unhardcoded, granian, orjson" 2>/dev/null \
     || [ "$HERE/requirements-bench.txt" -nt "$VENVS/router/.stamp" ] \
     || [ "$ROOT/pyproject.toml" -nt "$VENVS/router/.stamp" ]; then
    log "installing the router (editable) and the bench tools"
    "$VENVS/router/bin/pip" install -q --disable-pip-version-check -e "$ROOT[postgres]" -r "$HERE/requirements-bench.txt"
    touch "$VENVS/router/.stamp"
  fi
  if [ ! -x "$VENVS/litellm/bin/litellm" ] || [ "$HERE/requirements-litellm.lock" -nt "$VENVS/litellm/.stamp" ]; then
    log "creating $VENVS/litellm (LiteLLM proxy, pinned)"
    [ -x "$VENVS/litellm/bin/python" ] || "$PYTHON" -m venv "$VENVS/litellm"
    "$VENVS/litellm/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements-litellm.lock"
    touch "$VENVS/litellm/.stamp"
  fi
  [ "$(nproc)" -ge 2 ] || { log "needs 2 cores: the system under test on core 0, the load on core 1"; exit 2; }
}

setup
[ "$mode" = setup ] && exit 0

cd "$HERE"
log "load before: $(uptime)"
if [ "$mode" != micro ]; then
  # the harness (and wrk, the upstream, py-spy) on core 1; it pins each system under test to core 0
  taskset -c 1 "$VENVS/router/bin/python" harness.py --mode "$mode" "$@"
fi
log "decision-path micro-benchmarks (core 0)"
micro_flag=""
[ "$mode" = full ] || micro_flag="--quick"
taskset -c 0 "$VENVS/router/bin/python" micro.py $micro_flag --out "$HERE/results/micro-$([ "$mode" = full ] && echo full || echo quick).json"
log "load after: $(uptime)"
# the tables of this run (not of whichever run is the latest full one)
tag=$([ "$mode" = full ] && echo full || echo quick)
report_args=(--micro "$HERE/results/micro-$tag.json")
[ "$mode" = micro ] || report_args+=(--run "$HERE/results/latest-$mode.json")
"$VENVS/router/bin/python" report.py "${report_args[@]}"
