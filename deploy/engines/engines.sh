#!/usr/bin/env bash
# Real ZooKeeper, HDFS and HBase (with its Thrift2 gateway) on 127.0.0.1 for
# Freeway's tests and for trying the pipeline by hand.
#
#   deploy/engines/engines.sh up            install what is missing, start what is not running, wait until usable
#   deploy/engines/engines.sh down [--wipe] stop what `up` started (--wipe: also delete data and logs)
#   deploy/engines/engines.sh status        one line per process; exit 0 only if all are up
#   deploy/engines/engines.sh check         HDFS write/read and a Thrift2 create/put/get against running engines
#   deploy/engines/engines.sh env           FREEWAY_TEST_* lines: eval "$(deploy/engines/engines.sh env)"
#   deploy/engines/engines.sh restart NAME  stop one running engine process (SIGTERM, or SIGKILL with --kill)
#                                           and start it again, waiting until it is usable; NAME is one of
#                                           zookeeper namenode datanode hbase thrift2 (the chaos test uses it)
#
# Everything (configs, classpaths, pids, logs, data) lives under one directory:
# $FREEWAY_ENGINES_DIR, default ${XDG_CACHE_HOME:-$HOME/.cache}/freeway/engines.
# See deploy/engines/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${FREEWAY_ENGINES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/freeway/engines}
TIMEOUT=${FREEWAY_ENGINES_TIMEOUT:-300} # seconds to wait for each engine to become usable

# Pinned tools. Hadoop, HBase and logging versions are pinned in hdfs/pom.xml and hbase/pom.xml.
MDEP=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
ZK_JAR=/usr/share/java/zookeeper.jar          # Debian package zookeeper (3.8.0 on bookworm)
SLF4J_SIMPLE=/usr/share/java/slf4j-simple.jar # Debian package libslf4j-java (a zookeeper dependency)

# Ports. FREEWAY_ENGINES_PORT_OFFSET (default 0) shifts every one of them, so a
# second set (with its own FREEWAY_ENGINES_DIR) can run beside the usual one.
OFF=${FREEWAY_ENGINES_PORT_OFFSET:-0}
ZK_PORT=$((2181 + OFF))
NN_PORT=$((9000 + OFF)) NN_HTTP_PORT=$((9870 + OFF))
DN_PORT=$((9866 + OFF)) DN_HTTP_PORT=$((9864 + OFF)) DN_IPC_PORT=$((9867 + OFF))
HBASE_ZK_PORT=$((2182 + OFF)) HBASE_MASTER_PORT=$((16000 + OFF)) HBASE_RS_PORT=$((16020 + OFF))
THRIFT_PORT=$((9090 + OFF))

PROCS=(zookeeper namenode datanode hbase thrift2)

CONF=$DIR/conf DATA=$DIR/data LOGS=$DIR/logs RUN=$DIR/run CPDIR=$DIR/classpath PROBES=$DIR/probe

# ---------------------------------------------------------------- helpers

say() { printf 'engines: %s\n' "$*" >&2; }
die() {
  say "ERROR: $*"
  exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

tail_log() { # tail_log FILE [LINES]
  local f=$1 n=${2:-40}
  if [[ -s $f ]]; then
    printf '\n----- last %s lines of %s -----\n' "$n" "$f" >&2
    tail -n "$n" "$f" | cut -c1-400 >&2
    printf -- '----- end of %s -----\n\n' "$f" >&2
  fi
}

find_java() {
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
    JAVA=$JAVA_HOME/bin/java JAVAC=$JAVA_HOME/bin/javac
  else
    JAVA=$(command -v java || true) JAVAC=$(command -v javac || true)
  fi
  [[ -n $JAVA ]] || die "java not found (need a JDK 17: set JAVA_HOME or put java on PATH)"
  [[ -n $JAVAC && -x $JAVAC ]] || die "javac not found next to $JAVA (need a JDK 17, not only a JRE)"
}

ports_of() { # the TCP ports a process listens on; the first is its main one
  case $1 in
    zookeeper) echo "$ZK_PORT" ;;
    namenode) echo "$NN_PORT $NN_HTTP_PORT" ;;
    datanode) echo "$DN_PORT $DN_HTTP_PORT $DN_IPC_PORT" ;;
    hbase) echo "$HBASE_ZK_PORT $HBASE_MASTER_PORT $HBASE_RS_PORT" ;;
    thrift2) echo "$THRIFT_PORT" ;;
  esac
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

zk_ruok() { # prints the answer to ZooKeeper's ruok, if any
  timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1; printf ruok >&3; cat <&3" 2>/dev/null || true
}

# A process is ours when its command line carries both markers engines.sh puts
# on every JVM it starts: -Dfreeway.engine=NAME and -Dfreeway.engines.dir=DIR.
is_ours() { # is_ours PID NAME
  local pid=$1 name=$2 arg has_name= has_dir=
  [[ -r /proc/$pid/cmdline ]] || return 1
  while IFS= read -r -d '' arg; do
    [[ $arg == "-Dfreeway.engine=$name" ]] && has_name=1
    [[ $arg == "-Dfreeway.engines.dir=$DIR" ]] && has_dir=1
  done <"/proc/$pid/cmdline" 2>/dev/null || true
  [[ -n $has_name && -n $has_dir ]]
}

pid_of() { # prints the pid of our running NAME, or fails
  local name=$1 pid
  [[ -f $RUN/$name.pid ]] || return 1
  pid=$(<"$RUN/$name.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  is_ours "$pid" "$name" || return 1
  echo "$pid"
}

strays() { # pids of JVMs with our markers for NAME that no pid file names
  local name=$1 p known
  known=$(cat "$RUN/$name.pid" 2>/dev/null || true)
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $p == "$known" ]] && continue
    is_ours "$p" "$name" && echo "$p"
  done
  return 0
}

healthy() { # NAME: our process is alive and serving
  local name=$1 port
  pid_of "$name" >/dev/null || return 1
  if [[ $name == zookeeper ]]; then
    [[ $(zk_ruok "$ZK_PORT") == imok ]] || return 1
  else
    for port in $(ports_of "$name"); do
      port_open "$port" || return 1
    done
  fi
}

sha_of() { cat "$@" | sha256sum | cut -c1-64; }

# ---------------------------------------------------------------- install

install_zookeeper() {
  [[ -f $ZK_JAR ]] && return 0
  say "installing Debian package zookeeper (needs $ZK_JAR)"
  local sudo=
  [[ $(id -u) == 0 ]] || sudo=sudo
  local t0 log=$LOGS/apt-zookeeper.log
  t0=$(now)
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends zookeeper >"$log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q >>"$log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends zookeeper >>"$log" 2>&1 || {
      tail_log "$log"
      die "apt-get install zookeeper failed (log: $log)"
    }
  fi
  [[ -f $ZK_JAR ]] || die "zookeeper installed but $ZK_JAR is missing"
  say "zookeeper package installed in $(since "$t0")s"
}

# classpath NAME: resolve deploy/engines/NAME/pom.xml's runtime classpath into
# $CPDIR/NAME.cp. Reused while the pom is unchanged and every jar is still in ~/.m2.
classpath() {
  local name=$1 pom=$HERE/$1/pom.xml out=$CPDIR/$1.cp key jar ok=1
  key=$(sha_of "$pom" <(echo "$MDEP"))
  if [[ -f $out && -f $out.key && $(<"$out.key") == "$key" ]]; then
    while IFS= read -r -d ':' jar; do
      [[ -f $jar ]] || {
        ok=
        break
      }
    done < <(cat "$out" && printf ':')
    [[ -n $ok ]] && return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (needed once to fetch the $name jars from Maven Central)"
  local t0 log=$LOGS/mvn-$name.log
  t0=$(now)
  say "resolving $name jars with Maven (first time downloads them into ~/.m2)"
  local mvn_args=(-B -q -f "$pom" "$MDEP:build-classpath" -Dmdep.includeScope=runtime -Dmdep.outputFile="$out.tmp")
  # Offline first (everything may already be in ~/.m2), then from Maven Central.
  if ! mvn -o "${mvn_args[@]}" >"$log" 2>&1 && ! mvn "${mvn_args[@]}" >"$log" 2>&1; then
    tail_log "$log"
    die "Maven could not resolve $pom (log: $log)"
  fi
  mv "$out.tmp" "$out"
  echo "$key" >"$out.key"
  say "$name classpath ready in $(since "$t0")s"
}

# probe NAME CLASS CPFILE: compile probe/CLASS.java once per source+classpath.
compile_probe() {
  local name=$1 class=$2 cpfile=$3 src=$HERE/probe/$2.java key
  key=$(sha_of "$src" "$cpfile")
  if [[ -f $PROBES/$name/$class.class && -f $PROBES/$name/.key && $(<"$PROBES/$name/.key") == "$key" ]]; then
    return 0
  fi
  rm -rf "$PROBES/$name"
  mkdir -p "$PROBES/$name"
  "$JAVAC" -nowarn -proc:none -cp "$(<"$cpfile")" -d "$PROBES/$name" "$src" >"$LOGS/javac-$name.log" 2>&1 || {
    tail_log "$LOGS/javac-$name.log"
    die "could not compile $src"
  }
  echo "$key" >"$PROBES/$name/.key"
}

# render TEMPLATE OUT: fill @TOKENS@; replace OUT only when the text changed.
render() {
  local in=$1 out=$2 tmp
  tmp=$(mktemp "$out.XXXX")
  sed -e "s|@DATA_DIR@|$DATA|g" -e "s|@ZK_PORT@|$ZK_PORT|g" \
    -e "s|@NN_PORT@|$NN_PORT|g" -e "s|@NN_HTTP_PORT@|$NN_HTTP_PORT|g" \
    -e "s|@DN_PORT@|$DN_PORT|g" -e "s|@DN_HTTP_PORT@|$DN_HTTP_PORT|g" -e "s|@DN_IPC_PORT@|$DN_IPC_PORT|g" \
    -e "s|@HBASE_ZK_PORT@|$HBASE_ZK_PORT|g" -e "s|@HBASE_MASTER_PORT@|$HBASE_MASTER_PORT|g" \
    -e "s|@HBASE_RS_PORT@|$HBASE_RS_PORT|g" "$in" >"$tmp"
  if [[ -f $out ]] && cmp -s "$tmp" "$out"; then
    rm -f "$tmp"
  else
    mv "$tmp" "$out"
  fi
}

conf_key() { # NAME: digest of the config files NAME runs with
  case $1 in
    zookeeper) sha_of "$CONF/zookeeper/zoo.cfg" ;;
    namenode | datanode) sha_of "$CONF/hadoop/core-site.xml" "$CONF/hadoop/hdfs-site.xml" "$CONF/hadoop/log4j.properties" ;;
    hbase | thrift2) sha_of "$CONF/hbase/hbase-site.xml" "$CONF/hbase/log4j2.properties" ;;
  esac
}

warn_stale_conf() { # running processes started with other configs than the current ones
  local name stale=()
  for name in "${PROCS[@]}"; do
    pid_of "$name" >/dev/null || continue
    [[ -f $RUN/$name.conf && $(<"$RUN/$name.conf") == "$(conf_key "$name")" ]] || stale+=("$name")
  done
  ((${#stale[@]} == 0)) || say "note: ${stale[*]} still run(s) with an older config; '$0 down && $0 up' applies it (data is kept)"
}

render_configs() {
  mkdir -p "$CONF/zookeeper" "$CONF/hadoop" "$CONF/hbase"
  # NameNode and DataNode insist on finding webapps/<name> on the classpath (the
  # release tarball ships them beside the jars); empty ones do: only REST is used.
  mkdir -p "$CONF/hadoop/webapps/hdfs" "$CONF/hadoop/webapps/datanode"
  render "$HERE/conf/zoo.cfg.in" "$CONF/zookeeper/zoo.cfg"
  render "$HERE/conf/core-site.xml.in" "$CONF/hadoop/core-site.xml"
  render "$HERE/conf/hdfs-site.xml.in" "$CONF/hadoop/hdfs-site.xml"
  render "$HERE/conf/log4j.properties" "$CONF/hadoop/log4j.properties"
  render "$HERE/conf/hbase-site.xml.in" "$CONF/hbase/hbase-site.xml"
  render "$HERE/conf/log4j2.properties" "$CONF/hbase/log4j2.properties"
}

# ---------------------------------------------------------------- JVM command lines

# Java 17 needs these on every Hadoop and HBase JVM.
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
# Lean JVMs for a 2-core machine: serial GC, few GC/compiler threads.
LEAN_OPTS=(
  -XX:+UseSerialGC
  -XX:CICompilerCount=2
  -XX:TieredStopAtLevel="${FREEWAY_ENGINES_TIER:-1}"
  -Djava.net.preferIPv4Stack=true
  -Dfile.encoding=UTF-8
)

cmd_for() { # fills CMD with the command line that runs NAME
  local name=$1
  local mark=(-Dfreeway.engine="$name" -Dfreeway.engines.dir="$DIR")
  local hdfs_cp hbase_cp
  case $name in
    zookeeper)
      local cp=$CONF/zookeeper:$ZK_JAR
      [[ -f $SLF4J_SIMPLE ]] && cp+=:$SLF4J_SIMPLE
      CMD=("$JAVA" "${mark[@]}" -Xmx256m "${LEAN_OPTS[@]}"
        -Dorg.slf4j.simpleLogger.showDateTime=true
        -Dorg.slf4j.simpleLogger.dateTimeFormat="yyyy-MM-dd HH:mm:ss,SSS"
        -Dzookeeper.jmx.log4j.disable=true
        -cp "$cp" org.apache.zookeeper.server.ZooKeeperServerMain "$CONF/zookeeper/zoo.cfg")
      ;;
    namenode | datanode | namenode-format)
      hdfs_cp=$(<"$CPDIR/hdfs.cp")
      local heap=512m main=org.apache.hadoop.hdfs.server.namenode.NameNode args=()
      [[ $name == datanode ]] && heap=256m main=org.apache.hadoop.hdfs.server.datanode.DataNode
      [[ $name == namenode-format ]] && args=(-format -force -nonInteractive)
      CMD=("$JAVA" "${mark[@]}" -Xmx$heap "${LEAN_OPTS[@]}" "${J17_OPTS[@]}"
        -Dhadoop.log.dir="$LOGS"
        -cp "$CONF/hadoop:$hdfs_cp" "$main" "${args[@]}")
      ;;
    hbase | thrift2)
      hbase_cp=$(<"$CPDIR/hbase.cp")
      local base=("$JAVA" "${mark[@]}" "${LEAN_OPTS[@]}" "${J17_OPTS[@]}"
        -Dlog4j2.configurationFile="$CONF/hbase/log4j2.properties"
        -Dhbase.log.dir="$LOGS" -cp "$CONF/hbase:$hbase_cp")
      if [[ $name == hbase ]]; then
        CMD=("${base[@]}" -Xmx768m org.apache.hadoop.hbase.master.HMaster start)
      else
        # Framed transport + binary protocol (no -c), on 127.0.0.1 only.
        CMD=("${base[@]}" -Xmx256m org.apache.hadoop.hbase.thrift2.ThriftServer
          -f -b 127.0.0.1 -p "$THRIFT_PORT" start)
      fi
      ;;
  esac
}

# ---------------------------------------------------------------- start / stop

ports_free() { # NAME: fail with a clear message if another program holds one of NAME's ports
  local name=$1 port owner
  for port in $(ports_of "$name"); do
    if port_open "$port"; then
      owner=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:.*' | head -1 || true)
      die "cannot start $name: 127.0.0.1:$port is already taken by a program engines.sh did not start ${owner:+($owner)}"
    fi
  done
}

start_proc() { # start NAME in the background, detached, logging to $LOGS/NAME.log
  local name=$1 log=$LOGS/$1.log
  ports_free "$name"
  [[ -f $log ]] && mv -f "$log" "$log.1"
  cmd_for "$name"
  rm -f "$RUN/$name.pid"
  conf_key "$name" >"$RUN/$name.conf"
  # The inner shell writes its own pid, then becomes the JVM (exec keeps the pid).
  (cd "$DIR" && exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "${CMD[@]}" \
    </dev/null >"$log" 2>&1 9>&-) &
  local i
  for i in $(seq 50); do
    [[ -s $RUN/$name.pid ]] && break
    sleep 0.1
  done
  [[ -s $RUN/$name.pid ]] || die "could not start $name (no pid file)"
  # The pid file is written a moment before the exec: until the JVM's
  # command line (our markers) is there, pid_of would take the engine
  # for dead, and a readiness wait right after this would fail at once.
  local pid
  pid=$(<"$RUN/$name.pid")
  for i in $(seq 100); do
    is_ours "$pid" "$name" && break
    [[ -d /proc/$pid ]] || break # exited: the readiness wait says so, with its log
    sleep 0.05
  done
  say "started $name (pid $pid, log $log)"
}

# A JVM's command line (our markers) reads empty as soon as its memory is
# released, a moment before its sockets are closed; so "not ours any more"
# does not yet mean its ports are free. Starting it again in that moment
# failed with "already taken by a program engines.sh did not start".
wait_ports_closed() { # NAME SECS: wait until nothing accepts on NAME's ports
  local name=$1 secs=$2 i port busy
  for i in $(seq $((secs * 10))); do
    busy=
    for port in $(ports_of "$name"); do
      if port_open "$port"; then
        busy=1
        break
      fi
    done
    [[ -z $busy ]] && return 0
    sleep 0.1
  done
  return 0 # start_proc's ports_free says who holds it
}

stop_proc() { # stop NAME (pid file, plus any stray JVM with our markers)
  local name=$1 grace=${2:-30} pids=() pid i
  pid=$(pid_of "$name" || true)
  [[ -n $pid ]] && pids+=("$pid")
  # shellcheck disable=SC2207
  pids+=($(strays "$name"))
  rm -f "$RUN/$name.pid"
  ((${#pids[@]})) || return 0
  local t0
  t0=$(now)
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for i in $(seq $((grace * 5))); do
    local alive=()
    for pid in "${pids[@]}"; do is_ours "$pid" "$name" && alive+=("$pid"); done
    ((${#alive[@]})) || {
      wait_ports_closed "$name" 10
      say "stopped $name (pid ${pids[*]}) in $(since "$t0")s"
      return 0
    }
    sleep 0.2
  done
  say "$name did not stop in ${grace}s; killing pid ${pids[*]}"
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

# wait_probe LABEL TIMEOUT "PROCS TO WATCH" COMMAND...: run the readiness probe,
# failing early if a watched process dies.
wait_probe() {
  local label=$1 secs=$2 watch=$3
  shift 3
  local log=$LOGS/probe-$label.log
  "$@" >"$log" 2>&1 &
  local probe=$! p t0
  t0=$(now)
  while kill -0 "$probe" 2>/dev/null; do
    for p in $watch; do
      if ! pid_of "$p" >/dev/null; then
        kill "$probe" 2>/dev/null || true
        wait "$probe" 2>/dev/null || true
        tail_log "$LOGS/$p.log" 60
        die "$p exited while starting $label (log: $LOGS/$p.log)"
      fi
    done
    sleep 0.5
  done
  if ! wait "$probe"; then
    tail_log "$log" 20
    for p in $watch; do tail_log "$LOGS/$p.log" 40; done
    die "$label did not become usable within ${secs}s (probe log: $log)"
  fi
  say "$label usable after $(since "$t0")s: $(tail -n 1 "$log")"
}

# Readiness probes (deploy/engines/probe/*.java): HDFS write/read/delete, and a
# Thrift2 create-table/put/get round trip.
hdfs_probe_cmd() { # SECS
  CMD=("$JAVA" -Xmx128m "${LEAN_OPTS[@]}" "${J17_OPTS[@]}"
    -Dlog4j.configuration=file:"$CONF/hadoop/log4j.properties" -Dhadoop.root.logger=WARN,console
    -cp "$CONF/hadoop:$(<"$CPDIR/hdfs.cp"):$PROBES/hdfs" HdfsProbe "$1")
}
hbase_probe_cmd() { # SECS
  CMD=("$JAVA" -Xmx128m "${LEAN_OPTS[@]}" -Dlog4j2.configurationFile="$CONF/hbase/log4j2.properties"
    -cp "$(<"$CPDIR/hbase.cp"):$PROBES/hbase" HBaseThriftProbe 127.0.0.1 "$THRIFT_PORT" "$1")
}
probe_both() { # SECS: run both probes side by side; fail if either fails
  local secs=$1 rc=0 w_hdfs w_hbase
  hdfs_probe_cmd "$secs"
  (wait_probe hdfs "$secs" "namenode datanode" "${CMD[@]}") &
  w_hdfs=$!
  hbase_probe_cmd "$secs"
  (wait_probe hbase "$secs" "hbase thrift2" "${CMD[@]}") &
  w_hbase=$!
  wait "$w_hdfs" || rc=1
  wait "$w_hbase" || rc=1
  return $rc
}

wait_zookeeper() {
  local t0 i
  t0=$(now)
  for i in $(seq $((TIMEOUT * 5))); do
    [[ $(zk_ruok "$ZK_PORT") == imok ]] && {
      say "zookeeper usable after $(since "$t0")s: ruok -> imok"
      return 0
    }
    pid_of zookeeper >/dev/null || {
      tail_log "$LOGS/zookeeper.log" 60
      die "zookeeper exited while starting (log: $LOGS/zookeeper.log)"
    }
    sleep 0.2
  done
  tail_log "$LOGS/zookeeper.log"
  die "zookeeper did not answer ruok within ${TIMEOUT}s"
}

print_env() {
  echo "FREEWAY_TEST_ZK=127.0.0.1:$ZK_PORT"
  echo "FREEWAY_TEST_HDFS=127.0.0.1:$NN_PORT"
  echo "FREEWAY_TEST_HBASE=127.0.0.1:$THRIFT_PORT"
}

lock() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock -w 900 9 || die "another engines.sh holds $DIR/.lock"
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local t_all name started=()
  t_all=$(now)
  lock
  mkdir -p "$CONF" "$DATA" "$LOGS" "$RUN" "$CPDIR" "$PROBES"
  find_java

  local all_up=1
  for name in "${PROCS[@]}"; do healthy "$name" || all_up=; done
  if [[ -n $all_up ]]; then
    render_configs
    warn_stale_conf
    say "all engines already up"
    print_env
    return 0
  fi

  install_zookeeper
  classpath hdfs
  classpath hbase
  compile_probe hdfs HdfsProbe "$CPDIR/hdfs.cp"
  compile_probe hbase HBaseThriftProbe "$CPDIR/hbase.cp"
  render_configs

  # Start what is not running. A process that is running but not serving yet is
  # left alone (a previous `up` may still be starting it); the probes below decide.
  # First make sure no other program holds a port we are about to need.
  for name in "${PROCS[@]}"; do
    pid_of "$name" >/dev/null && continue
    stop_proc "$name" 10 # strays with our markers but no pid file
    ports_free "$name"
  done
  for name in "${PROCS[@]}"; do
    if pid_of "$name" >/dev/null; then
      continue
    fi
    if [[ $name == namenode && ! -f $DATA/hdfs/name/current/VERSION ]]; then
      say "formatting a new HDFS namespace in $DATA/hdfs/name"
      rm -rf "$DATA/hdfs/name" "$DATA/hdfs/data" # old blocks belong to an old namespace
      mkdir -p "$DATA/hdfs"
      cmd_for namenode-format
      "${CMD[@]}" >"$LOGS/namenode-format.log" 2>&1 </dev/null || {
        tail_log "$LOGS/namenode-format.log"
        die "NameNode -format failed (log: $LOGS/namenode-format.log)"
      }
    fi
    mkdir -p "$DATA/zookeeper" "$DATA/hbase"
    start_proc "$name"
    started+=("$name")
  done

  wait_zookeeper
  # HDFS and HBase start side by side; wait for both.
  probe_both "$TIMEOUT" ||
    die "engines are not all up (see messages above; logs in $LOGS). A stuck process: '$0 down && $0 up' (data is kept)"

  warn_stale_conf
  say "all engines up in $(since "$t_all")s${started[*]:+ (started: ${started[*]})}"
  print_env
}

cmd_down() {
  local wipe=
  [[ ${1:-} == --wipe ]] && wipe=1
  [[ -d $DIR ]] || {
    say "nothing to stop ($DIR does not exist)"
    return 0
  }
  lock
  # Gateway first, then HBase (it flushes on a clean stop), then HDFS and ZooKeeper.
  stop_proc thrift2 20
  stop_proc hbase 90
  stop_proc datanode 30 &
  stop_proc namenode 30 &
  stop_proc zookeeper 30 &
  wait
  if [[ -n $wipe ]]; then
    rm -rf "$DATA" "$LOGS" "$RUN" "$CONF"
    say "wiped data, logs and configs under $DIR (jar classpaths and probes kept)"
  fi
}

cmd_check() { # full round trips against running engines (what `up` waits for)
  find_java
  [[ -f $CPDIR/hdfs.cp && -f $CPDIR/hbase.cp && -d $PROBES/hdfs && -d $PROBES/hbase ]] ||
    die "run '$0 up' first"
  [[ $(zk_ruok "$ZK_PORT") == imok ]] || die "zookeeper on 127.0.0.1:$ZK_PORT does not answer ruok"
  say "zookeeper: ruok -> imok"
  probe_both "${FREEWAY_ENGINES_CHECK_TIMEOUT:-30}" || die "check failed"
}

cmd_restart() { # NAME [--kill]
  local name=${1:-} kill= t0
  [[ ${2:-} == --kill ]] && kill=1
  [[ " ${PROCS[*]} " == *" $name "* ]] || die "restart: unknown engine process '$name' (want one of ${PROCS[*]})"
  lock
  find_java
  [[ -f $CPDIR/hdfs.cp && -f $CPDIR/hbase.cp && -d $PROBES/hdfs && -d $PROBES/hbase ]] ||
    die "run '$0 up' first"
  pid_of "$name" >/dev/null || die "restart: $name is not running ('$0 up' starts it)"
  t0=$(now)
  if [[ -n $kill ]]; then
    kill -KILL "$(pid_of "$name")" 2>/dev/null || true
    local i
    for i in $(seq 100); do
      pid_of "$name" >/dev/null || break
      sleep 0.1
    done
    rm -f "$RUN/$name.pid"
    wait_ports_closed "$name" 10
    say "killed $name"
  else
    stop_proc "$name" 30
  fi
  start_proc "$name"
  case $name in
    zookeeper) wait_zookeeper ;;
    namenode | datanode)
      hdfs_probe_cmd "$TIMEOUT"
      wait_probe hdfs "$TIMEOUT" "namenode datanode" "${CMD[@]}"
      ;;
    hbase | thrift2)
      hbase_probe_cmd "$TIMEOUT"
      wait_probe hbase "$TIMEOUT" "hbase thrift2" "${CMD[@]}"
      ;;
  esac
  say "restarted $name in $(since "$t0")s"
}

cmd_status() {
  local name pid ok=0 state
  for name in "${PROCS[@]}"; do
    pid=$(pid_of "$name" || true)
    if healthy "$name"; then
      state=up
    elif [[ -n $pid ]]; then
      state="starting or unhealthy"
      ok=1
    else
      state=down
      ok=1
    fi
    printf '%-10s %-22s 127.0.0.1:%-6s %s\n' "$name" "$state" "$(ports_of "$name" | cut -d' ' -f1)" "${pid:+pid $pid}"
  done
  return $ok
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down "${2:-}" ;;
  status) cmd_status ;;
  check) cmd_check ;;
  env) print_env ;;
  restart) cmd_restart "${2:-}" "${3:-}" ;;
  *)
    echo "usage: $0 up | down [--wipe] | status | check | env | restart NAME [--kill]" >&2
    exit 2
    ;;
esac
