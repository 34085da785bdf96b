// Package hbasestore implements store.Store in HBase, through HBase's Thrift2
// gateway (org.apache.hadoop.hbase.thrift2.ThriftServer): the store of a
// Freeway cluster, where Puma's checkpoints and the copier's progress must
// outlive any one machine. No Go HBase client can be a dependency of this
// project (the module proxy refuses them all), so it speaks THBaseService
// with the IDL subset in thrift/hbase.thrift; it is the only package that
// imports the generated code.
//
// URL: hbase://host[:port][/[namespace:]prefix][?pool=N&timeout=D&connect_timeout=D],
// for example hbase://127.0.0.1:9090 or hbase://hb1:9090/prod:freeway_.
// The gateway must serve framed transport with the binary protocol
// (ThriftServer -f, or any of its nonblocking servers without -c).
//
// # Layout
//
// Store table T is HBase table <prefix>T (prefix DefaultPrefix,
// "freeway_", unless the URL says otherwise), created on first write with
// tableExists/createTable, racing creators tolerated, and retried while the
// master is initializing. Every table has one column family, Family ("f");
// a store column is a qualifier in it, a store row an HBase row, a store
// version an HBase cell version whose timestamp is the writer's (never the
// server clock). The family keeps Versions (5) versions: store.MinVersions
// (3) plus headroom for uncommitted epochs written above a committed one,
// which count against VERSIONS when a flush or compaction prunes.
//
// Reads map the as-of timestamp to HBase's time range [0, asOf+1) (the
// upper bound is exclusive) with one version per column. store.Latest is
// MaxInt64, which cannot be incremented: [0, MaxInt64) already covers every
// storable version, since HBase reserves MaxInt64 (LATEST_TIMESTAMP) for
// "the server's clock"; that is also why a put at MaxInt64 is refused.
//
// # Atomic commit
//
// A put is one TPut per row, so each row is written atomically; a batch of
// rows is not atomic as a whole. Puma's commit is CheckAndPut on the
// shard's commit row, which maps to HBase's checkAndPut: the region server
// compares the newest version of the commit column under the row lock and
// applies the put of the new epoch and position in the same row, or not at
// all. That gives the exactly-once protocol of ARCHITECTURE.md: cells at
// the epoch's timestamp first, the commit row last; recovery reads the
// commit row, deletes versions newer than the committed epoch and reads as
// of it. Two owners racing on the same expected value cannot both win.
// HBase compares an empty expected value like an absent one, so a commit
// column should never hold an empty value.
//
// # The delete-marker trap
//
// HBase deletes by writing markers, which mask every matching version with
// the same or an older timestamp, including versions put after the marker,
// until a major compaction removes marker and versions. A delete without a
// timestamp gets the server's clock (milliseconds since 1970), far above
// Freeway's epochs, and would mask every later write. So this package never
// deletes without an explicit timestamp:
//
//   - DeleteNewer (and DeleteBetween, up to a bound) scans the versions
//     newer than ts and deletes each one exactly (DELETE_COLUMN at its own
//     timestamp). A put at one of those timestamps stays hidden; the
//     contract forbids reusing them, and Puma uses a fresh epoch after
//     recovery.
//   - DeleteUpTo writes one row delete at ts (a delete-family marker) in
//     each row holding a version <= ts; later puts must use timestamps > ts.
//
// Deleting versions can also reveal older versions that VERSIONS was
// hiding until a compaction; DeleteNewer rescans rows where that can happen.
//
// # Connections and failures
//
// A Thrift client is not safe for concurrent use, so the store keeps a small
// pool of connections, one caller each. A connection that sees a transport
// or protocol error is dropped; idle ones are checked before reuse, since
// the gateway closes idle connections after 60 s. Idempotent calls (puts
// and deletes with explicit timestamps, reads, admin) are retried once on a
// new connection; CheckAndPut is not, as it may have been applied. Scans
// resume after the last row seen if the gateway loses the scanner. Frame,
// message and list sizes read from the gateway are capped, so a broken or
// hostile peer cannot make the client allocate without bound; requests are
// split under the gateway's 2 MB default frame limit. Cancelling a context
// closes the connection in use, aborting the call.
//
// Nothing is cached but the fact that a table exists: all state is in
// HBase and survives a crash of the process.
package hbasestore
