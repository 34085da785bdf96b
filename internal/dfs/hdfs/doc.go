// Package hdfs implements dfs.FS on HDFS (hdfs://host:port/root) with
// github.com/colinmarc/hdfs/v2, a pure Go client that speaks the NameNode
// RPC and DataNode transfer protocols itself, so Freeway needs no JVM.
// It is the only package in Freeway that imports that client.
//
// In the data path it holds the bucket files: calligraphus writers create
// segments under <root>/<category>/<bucket>/, ptail reads them, the copier
// copies them elsewhere.
//
// # What colinmarc/hdfs cannot do, and what that means here
//
//   - No hflush or hsync. File.Sync sends buffered packets to the
//     DataNodes, but readers see no byte of a block under construction and
//     nothing is durable before Close. SyncDurable is false. Writers
//     therefore roll short segments and publish each by renaming it after
//     Close; ptail on HDFS reads closed segments only.
//   - No append after a crash: the dead writer's lease is still held and
//     the client has no lease-recovery call. Freeway never appends (this
//     package has no Append); a restarted writer starts a new segment.
//   - Close can answer ErrReplicating when the NameNode has not yet heard
//     from the DataNodes. Close retries it with a doubling back-off, about
//     ten tries in 9 s, as the Java client does, before giving up.
//   - No Kerberos here (the client has it, the URL has no way to set it
//     up), and no pipeline recovery: if a DataNode of the write pipeline
//     dies, the Write or Close fails and the writer starts a new segment.
//   - The client sets no timeouts of its own; Open sets a dial timeout and
//     a per-read and per-write timeout on every connection, so an
//     unreachable or hung NameNode or DataNode gives an error, not a hang.
//
// Create fails with fs.ErrExist when the name exists, Rename replaces an
// existing file atomically (one rename2 call with OVERWRITE), and errors
// wrap fs.ErrNotExist and fs.ErrExist where the NameNode's Java exception
// maps to them.
//
// # What survives a crash
//
// A file whose Close returned is complete on the NameNode and its blocks
// are on dfs.replication DataNodes. The DataNodes acknowledge bytes they
// have written to their own OS, not fsynced, unless the cluster sets
// dfs.datanode.synconclose: with replication 1 on one machine, a power
// loss can still lose a closed file.
//
// A file being written when its writer died stays under construction
// until the NameNode recovers the dead lease (after the lease hard limit,
// 20 minutes to an hour depending on the Hadoop version) and closes it
// with whatever the DataNodes hold. Until then readers see its completed
// blocks, a prefix of what was written, and nothing of the block that was
// under construction. Freeway does not wait for the recovery: such a file
// still has its temporary name, so no reader takes it for a segment;
// another client can Remove it at once (deleting needs no lease); Create
// refuses its name with fs.ErrExist (a create past the lease soft limit,
// 60 s, starts the lease's recovery and is refused with
// RecoveryInProgressException until the file is closed, seconds later:
// that wraps fs.ErrExist too, so a copier restarted after a kill replaces
// its temporary file at once); and a new file beside it can be written
// and published at once.
package hdfs
