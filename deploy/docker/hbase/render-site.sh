#!/usr/bin/env bash
# render-site.sh TEMPLATE: print hbase-site.xml for docker-compose.yml.
#
# TEMPLATE is deploy/engines/conf/hbase-site.xml.in, the file the tests run
# HBase with (standalone, everything on 127.0.0.1). This fills its @TOKENS@
# the way engines.sh does, then turns it into a distributed HBase on a
# container network: the compose ZooKeeper instead of an embedded one, the
# root directory on HDFS, and a host name other containers can reach. Every
# other setting (WAL provider, Thrift2 framed + binary, no web UIs) stays the
# tests' own.
#
# Environment (defaults are docker-compose.yml's):
#   HBASE_ZOOKEEPER_QUORUM  zookeeper                   comma-separated hosts
#   HBASE_ZOOKEEPER_PORT    2181
#   HBASE_ROOTDIR           hdfs://namenode:8020/hbase  or file:///path (no durable WAL)
#   HBASE_HOSTNAME          $HOSTNAME                    the name master and region server register in ZooKeeper
#   HBASE_BIND_ADDRESS      0.0.0.0
#   HBASE_MASTER_PORT       16000
#   HBASE_REGIONSERVER_PORT 16020
#   HBASE_DATA_DIR          /var/lib/hbase              local scratch (hbase.tmp.dir)
#   HBASE_DFS_REPLICATION   1                           replicas of HBase's own files (one DataNode here)
set -euo pipefail

die() {
  echo "render-site: $*" >&2
  exit 1
}

[[ $# == 1 && -f $1 ]] || die "usage: $0 TEMPLATE (an hbase-site.xml.in)"
template=$1

quorum=${HBASE_ZOOKEEPER_QUORUM:-zookeeper}
zk_port=${HBASE_ZOOKEEPER_PORT:-2181}
rootdir=${HBASE_ROOTDIR:-hdfs://namenode:8020/hbase}
host=${HBASE_HOSTNAME:-${HOSTNAME:-localhost}}
bind=${HBASE_BIND_ADDRESS:-0.0.0.0}
master_port=${HBASE_MASTER_PORT:-16000}
rs_port=${HBASE_REGIONSERVER_PORT:-16020}
data=${HBASE_DATA_DIR:-/var/lib/hbase}
replication=${HBASE_DFS_REPLICATION:-1}

# Values go into sed replacements and XML unescaped: allow only what host
# names, ports, paths and URLs without queries need.
for v in "$quorum" "$zk_port" "$rootdir" "$host" "$bind" "$master_port" "$rs_port" "$data" "$replication"; do
  [[ $v =~ ^[A-Za-z0-9._:/,@+-]+$ ]] || die "value '$v' has characters this script does not escape"
done
for v in "$zk_port" "$master_port" "$rs_port" "$replication"; do
  [[ $v =~ ^[0-9]+$ ]] || die "'$v' is not a number"
done

xml=$(sed -e "s|@DATA_DIR@|$data|g" -e "s|@HBASE_ZK_PORT@|$zk_port|g" \
  -e "s|@HBASE_MASTER_PORT@|$master_port|g" -e "s|@HBASE_RS_PORT@|$rs_port|g" "$template")
if grep -q '@[A-Z_]*@' <<<"$xml"; then
  die "$template has tokens this script does not fill: $(grep -o '@[A-Z_]*@' <<<"$xml" | sort -u | tr '\n' ' ')"
fi

# set NAME VALUE: replace the property's value, or add the property.
set_prop() {
  local name=$1 value=$2 re=${1//./\\.} n
  n=$(grep -c "<name>$re</name>" <<<"$xml" || true)
  case $n in
    0) xml=$(sed "s|</configuration>|  <property><name>$name</name><value>$value</value></property>\n</configuration>|" <<<"$xml") ;;
    1) xml=$(sed "s|\(<name>$re</name><value>\)[^<]*\(</value>\)|\1$value\2|" <<<"$xml") ;;
    *) die "$template defines $name $n times" ;;
  esac
  # The template keeps each property on one line; check the edit took.
  grep -q "<name>$re</name><value>${value//./\\.}</value>" <<<"$xml" ||
    die "could not set $name in $template (is its property still on one line?)"
}

set_prop hbase.cluster.distributed true
set_prop hbase.rootdir "$rootdir"
set_prop hbase.tmp.dir "$data/tmp"
if [[ $rootdir == hdfs://* ]]; then
  # HDFS can hflush/hsync: let HBase insist on it, as it does by default.
  set_prop hbase.unsafe.stream.capability.enforce true
else
  set_prop hbase.unsafe.stream.capability.enforce false
fi
set_prop hbase.zookeeper.quorum "$quorum"
set_prop hbase.zookeeper.property.clientPort "$zk_port"
set_prop hbase.master.hostname "$host"
set_prop hbase.unsafe.regionserver.hostname "$host"
set_prop hbase.master.ipc.address "$bind"
set_prop hbase.regionserver.ipc.address "$bind"
set_prop hbase.master.port "$master_port"
set_prop hbase.regionserver.port "$rs_port"
# What Freeway's store speaks (entrypoint.sh also passes -f): framed
# transport, binary protocol.
set_prop hbase.regionserver.thrift.framed true
set_prop hbase.regionserver.thrift.compact false
# DataNodes register by host name (dfs.datanode.hostname in hadoop.env).
set_prop dfs.client.use.datanode.hostname true
# HBase's HDFS client does not read the NameNode's dfs.replication: without
# this it asks for 3 replicas of every WAL and HFile, and rolls WALs for "low
# replication" with one DataNode.
set_prop dfs.replication "$replication"

# Say where this file comes from (the template's comments describe the tests' setup).
xml=$(sed "0,/<configuration>/s|<configuration>|<!-- Rendered by deploy/docker/hbase/render-site.sh from $(basename "$template"): distributed, ZooKeeper $quorum:$zk_port, root $rootdir, host $host. -->\n<configuration>|" <<<"$xml")
printf '%s\n' "$xml"
