// Package enginetest finds the real engines (ZooKeeper, HDFS, HBase) that
// the adapter and end-to-end tests run against. `make test` starts them
// and sets FREEWAY_REQUIRE_ENGINES=1, so there a missing address is a
// failure; elsewhere the test is skipped.
package enginetest

import (
	"os"
	"testing"
)

// The variables naming each engine's address (host:port), as printed by
// deploy/engines/engines.sh env.
const (
	ZK    = "FREEWAY_TEST_ZK"    // a ZooKeeper server
	HDFS  = "FREEWAY_TEST_HDFS"  // an HDFS NameNode
	HBase = "FREEWAY_TEST_HBASE" // an HBase Thrift2 gateway (framed, binary)

	// Require turns a missing address into a failure.
	Require = "FREEWAY_REQUIRE_ENGINES"
)

var what = map[string]string{
	ZK:    "host:port of a ZooKeeper server",
	HDFS:  "host:port of an HDFS NameNode",
	HBase: "host:port of an HBase Thrift2 gateway",
}

// Addr returns the address in the variable env (ZK, HDFS or HBase), or
// skips t; under FREEWAY_REQUIRE_ENGINES=1 it fails t instead.
func Addr(t testing.TB, env string) string {
	t.Helper()
	addr := os.Getenv(env)
	if addr == "" {
		if os.Getenv(Require) == "1" {
			t.Fatalf("%s=1 but %s (%s) is not set: run the tests with `make test`, which starts the engines", Require, env, what[env])
		}
		t.Skipf("%s (%s) not set; `make engines` starts one", env, what[env])
	}
	return addr
}
