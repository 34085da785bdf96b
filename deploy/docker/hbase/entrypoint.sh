#!/usr/bin/env bash
# HBase for docker-compose.yml: master, region server and the Thrift2 gateway
# Freeway's store speaks to (framed transport, binary protocol).
#
#   entrypoint.sh all            the three in this container (the default): master and region
#                                server first, the gateway once both listen; if any of them
#                                exits, the others are stopped and the container exits non-zero
#   entrypoint.sh master | regionserver | thrift    one of them (for one container each)
#   entrypoint.sh site           print the rendered hbase-site.xml
#   entrypoint.sh CMD [ARGS...]  run CMD (a shell, say)
#
# hbase-site.xml is rendered at every start from the tests' template by
# render-site.sh, from HBASE_* variables (see there). Also read here:
#   HBASE_THRIFT_PORT (9090), HBASE_MASTER_HEAP (512m), HBASE_REGIONSERVER_HEAP (1g),
#   HBASE_THRIFT_HEAP (256m), HBASE_START_TIMEOUT (300, seconds), HBASE_JVM_OPTS (extra flags).
set -euo pipefail

HBASE_HOME=${HBASE_HOME:-/opt/hbase}
CONF=$HBASE_HOME/conf
say() { printf 'hbase-entrypoint: %s\n' "$*" >&2; }

"$HBASE_HOME/bin/render-site.sh" "$CONF/hbase-site.xml.in" >"$CONF/hbase-site.xml.tmp"
mv "$CONF/hbase-site.xml.tmp" "$CONF/hbase-site.xml"

bind=${HBASE_BIND_ADDRESS:-0.0.0.0}
thrift_port=${HBASE_THRIFT_PORT:-9090}
master_port=${HBASE_MASTER_PORT:-16000}
rs_port=${HBASE_REGIONSERVER_PORT:-16020}
data=${HBASE_DATA_DIR:-/var/lib/hbase}
mkdir -p "$data/tmp" "$data/logs"

# Java 17 needs these on every HBase JVM: the same list as deploy/engines/engines.sh.
J17_OPTS=(
  -XX:+IgnoreUnrecognizedVMOptions
  --add-modules jdk.unsupported
  -Dorg.apache.hbase.thirdparty.io.netty.tryReflectionSetAccessible=true
)
for m in java.lang java.lang.reflect java.io java.net java.nio java.util java.util.concurrent \
  java.util.zip java.math java.text sun.nio.ch jdk.internal.ref sun.security.util sun.security.x509; do
  J17_OPTS+=(--add-opens "java.base/$m=ALL-UNNAMED")
done
for m in java.base/jdk.internal.misc java.base/sun.net.dns java.base/sun.net.util java.security.jgss/sun.security.krb5; do
  J17_OPTS+=(--add-exports "$m=ALL-UNNAMED")
done
# shellcheck disable=SC2206 # HBASE_JVM_OPTS is a list of flags
EXTRA=(${HBASE_JVM_OPTS:-})

# The classpath Maven resolved at build time, in Maven's order (see the Dockerfile).
CP=$CONF:$(<"$HBASE_HOME/classpath")
JVM=(java -XX:+UseSerialGC -Djava.net.preferIPv4Stack=true -Dfile.encoding=UTF-8
  "${J17_OPTS[@]}" "${EXTRA[@]}"
  -Dlog4j2.configurationFile="$CONF/log4j2.properties" -Dhbase.log.dir="$data/logs" -cp "$CP")

cmd_for() { # fills CMD for a role
  case $1 in
    master) CMD=("${JVM[@]}" -Xmx"${HBASE_MASTER_HEAP:-512m}" org.apache.hadoop.hbase.master.HMaster start) ;;
    regionserver) CMD=("${JVM[@]}" -Xmx"${HBASE_REGIONSERVER_HEAP:-1g}" org.apache.hadoop.hbase.regionserver.HRegionServer start) ;;
    # -f: framed transport; no -c: binary protocol (what internal/store/hbasestore speaks).
    thrift) CMD=("${JVM[@]}" -Xmx"${HBASE_THRIFT_HEAP:-256m}" org.apache.hadoop.hbase.thrift2.ThriftServer
      -f -b "$bind" -p "$thrift_port" start) ;;
  esac
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

names=() pids=()
start() {
  cmd_for "$1"
  "${CMD[@]}" &
  names+=("$1") pids+=($!)
  say "started $1 (pid $!)"
}

stop_all() { # newest first: gateway, region server (flushes), master
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    if kill -0 "${pids[i]}" 2>/dev/null; then
      say "stopping ${names[i]}"
      kill -TERM "${pids[i]}" 2>/dev/null || true
      wait "${pids[i]}" 2>/dev/null || true
    fi
  done
}

any_dead() { # prints the name of a child that exited
  local i
  for i in "${!pids[@]}"; do
    kill -0 "${pids[i]}" 2>/dev/null || {
      echo "${names[i]}"
      return 0
    }
  done
  return 1
}

run_all() {
  trap 'say "stop requested"; stop_all; exit 0' TERM INT
  start master
  start regionserver
  local deadline=$((SECONDS + ${HBASE_START_TIMEOUT:-300})) dead
  until port_open "$master_port" && port_open "$rs_port"; do
    if dead=$(any_dead); then
      say "$dead exited while starting"
      stop_all
      exit 1
    fi
    if ((SECONDS > deadline)); then
      say "master :$master_port and region server :$rs_port did not listen within ${HBASE_START_TIMEOUT:-300}s"
      stop_all
      exit 1
    fi
    sleep 1
  done
  start thrift
  # Whichever exits first takes the others down; the restart policy brings all back.
  wait -n || true
  dead=$(any_dead || echo "a process")
  say "$dead exited; stopping the others"
  stop_all
  exit 1
}

role=${1:-all}
case $role in
  all) run_all ;;
  master | regionserver | thrift)
    cmd_for "$role"
    exec "${CMD[@]}"
    ;;
  site) cat "$CONF/hbase-site.xml" ;;
  *) exec "$@" ;;
esac
