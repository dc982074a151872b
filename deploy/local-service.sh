#!/usr/bin/env bash
# Run lifelong as a local retraining service without containers: an MLflow tracking server on
# 127.0.0.1 (sqlite store and artifacts under $LIFELONG_HOME) and pipeline runs that register
# every generation there.
#
#   deploy/local-service.sh start            # start the MLflow server (once)
#   deploy/local-service.sh run [ARGS…]      # lifelong run ARGS… against it
#   deploy/local-service.sh models [ARGS…]   # lifelong models ARGS… (list, promote, rollback) against it
#   deploy/local-service.sh serve [ARGS…]    # lifelong serve models:/$LIFELONG_MODEL@champion, following it
#   deploy/local-service.sh stop             # stop the MLflow server
#
# A scheduler (cron, a systemd timer) calls `run` with the pipeline of each retraining round; with
# a [promotion] section in it, only generations that pass the gate move the `champion` alias, and
# `serve` (a long-running process of its own) swaps each new champion in without a restart.
set -euo pipefail
LIFELONG_HOME=${LIFELONG_HOME:-$HOME/.lifelong}
PORT=${LIFELONG_MLFLOW_PORT:-5000}
MODEL=${LIFELONG_MODEL:-lifelong}
PIDFILE="$LIFELONG_HOME/mlflow.pid"
URI="http://127.0.0.1:$PORT"
mkdir -p "$LIFELONG_HOME/artifacts"

case "${1:-}" in
start)
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        echo "MLflow server already running at $URI"; exit 0
    fi
    # its own session, so `stop` can end the server with all its workers
    setsid mlflow server --host 127.0.0.1 --port "$PORT" --workers 1 \
        --backend-store-uri "sqlite:///$LIFELONG_HOME/mlflow.db" \
        --artifacts-destination "$LIFELONG_HOME/artifacts" >"$LIFELONG_HOME/mlflow.log" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 120); do
        if python3 -c "import urllib.request,sys; urllib.request.urlopen('$URI/health', timeout=1)" 2>/dev/null; then
            echo "MLflow server at $URI (log: $LIFELONG_HOME/mlflow.log)"; exit 0
        fi
        sleep 0.5
    done
    echo "MLflow server did not answer within 60 s; see $LIFELONG_HOME/mlflow.log" >&2; exit 1
    ;;
run)
    shift
    MLFLOW_TRACKING_URI="$URI" exec lifelong run "$@"
    ;;
models)
    shift
    MLFLOW_TRACKING_URI="$URI" exec lifelong models "$@"
    ;;
serve)
    shift
    MLFLOW_TRACKING_URI="$URI" exec lifelong serve "models:/$MODEL@champion" "$@"
    ;;
stop)
    if [ -f "$PIDFILE" ]; then
        kill -- "-$(cat "$PIDFILE")" 2>/dev/null || true
        rm -f "$PIDFILE"
        echo "stopped"
    fi
    ;;
*)
    echo "usage: $0 start | run [lifelong run arguments…] | models [arguments…] | serve [arguments…] | stop" >&2; exit 2
    ;;
esac
