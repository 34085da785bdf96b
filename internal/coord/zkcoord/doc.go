// Package zkcoord implements coord.Coord on ZooKeeper: the coordinator a
// Freeway cluster uses, chosen by a URL
//
//	zk://host:port[,host:port...]/root[?session_timeout=10s]
//
// where root is a znode path prefix (created if missing) and the session
// timeout, 10s by default, is also about how long a dead process keeps its
// buckets. It is the only package that imports github.com/go-zookeeper/zk.
//
// # Znode layout
//
//	<root>/leases/<name>           ephemeral; data = owner
//	<root>/epochs/<name>           persistent; data = last owner; one per lease name ever granted
//	<root>/groups/<group>/<member> ephemeral; data = the member's data
//
// Names are escaped into one znode name each ("calligraphus/access/0"
// becomes "calligraphus%2Faccess%2F0"), not nested: a lease node is
// ephemeral and cannot have children, so nesting would make the leases "a"
// and "a/b" collide.
//
// # Epochs
//
// A grant is one multi transaction: create the lease node and bump the
// epoch node's version. The epoch is that transaction's zxid, which is also
// the lease node's Czxid, so Holder reports it without another read. Zxids
// grow strictly over the life of the ensemble, across leader elections (the
// election epoch is the high 32 bits), sessions and restarts of our
// processes, so every grant of a name gets a higher epoch than the last,
// with no read-modify-write loop. A persistent per-name counter would give
// the same guarantee with more round trips, and restart at zero if its node
// were ever removed; zxids only restart if the ensemble's data directory is
// wiped, which is a new cluster: start it with a new root and a new dfs
// root too. These epochs are not comparable with the in-process
// coordinator's (wall-clock nanoseconds).
//
// The epoch node exists for Release. Deleting "our" lease node by path is
// not safe: when our session expires, the client opens a new one and sends
// any request it had queued on it, so a delete meant for our node could
// remove a successor's. Release therefore deletes in a transaction that
// also checks the epoch node's version is still the one our grant left,
// which is only true if no later grant exists.
//
// # Disconnection and expiry
//
// A lost connection is not a lost lease: the client reconnects, to any
// server of the ensemble, and while it does so within the session timeout
// the session, its leases and memberships survive and nothing is reported.
// But an owner cut off from the servers cannot know whether it still owns
// anything. The server expires the session one session timeout after it
// last heard from us, and only then can another process be granted our
// leases. So this package counts from the last moment a server is known
// to have heard from us: when we sent the latest ping it answered (the
// client pings every third of the session timeout), or the connect
// request of the latest handshake. When the session timeout (the one the
// server granted) has passed since then, it gives every lease up: their
// Lost channels close, whether or not it ever hears that the session
// expired (a partitioned process may never hear it), and whether or not
// the connection looks alive: a server that no longer hears us (a one-way
// partition) may still deliver watch events, and bytes received prove
// nothing. It measures that session timeout on both of the process's
// clocks and takes the longer: a step of the wall clock (NTP, a clock set
// by hand) backwards does not keep leases past it, nor does the monotonic
// clock, which stands still while a VM is paused or the machine
// suspended, once the wall clock is set right after the resume (a step
// forward gives the leases up early, as below). Another owner cannot
// have been granted the lease before that moment, with one exception: a
// follower cut off from its leader goes on answering our pings until it
// notices, after syncLimit × tickTime of the ensemble's configuration
// (10s with tickTime 2000 and syncLimit 5),
// while the leader, which expires sessions, no longer hears of them; our
// leases can then outlive our session by up to that much. Fencing epochs
// take care of such a stale owner where it writes with them (calligraphus
// buckets: internal/layout/fence.go; Puma shards and the copier's
// progress: CheckAndPut on claims carrying the epoch); what it does
// without them (the copier's files at the destination, retention's
// deletions and marks) is not fenced. An owner that must not even risk
// that should stop writing as soon as its coordinator is disconnected;
// this package does not offer that signal yet.
//
// This errs towards giving up too early rather than too late: a
// disconnection, or a server slow to answer our pings, that lasts nearly
// a full session timeout can end leases although the session survives
// (the server rounds its expiry up to its next tick, and the client waits
// a second before it redials a lone server). The owner then sees Lost,
// re-runs its election and most likely wins again; the nodes of the
// given-up leases are deleted at once if still connected, else on
// reconnection (a new Acquire by this process also replaces them), so
// they do not block anyone.
//
// When the client is told the session expired, every lease still held is
// lost at once (Lost closes), before any reply on the new session is seen.
// Memberships are created again on the new session by a background
// goroutine, and group watchers wake up. Re-running elections is the
// caller's job, driven by Lost; Acquire works again as soon as the new
// session is up.
//
// Every call takes a context. The client has no deadline of its own (it
// queues requests while disconnected), so each call runs on a goroutine the
// context can abandon. An Acquire or Join abandoned that way is taken back
// when it completes, and its name stays reserved in this process until
// then: a retry meanwhile gets coord.ErrHeld, or an "already registered"
// error, rather than racing it. A context that has ended before the call
// makes Acquire, Join, Holder and Members fail at once, reserving nothing;
// a Leave or a Release still deletes its node, in the background.
//
// # Watches
//
// ZooKeeper watches fire once. Members returns a channel that closes at
// the group's next event; it can also close without a change (our own
// session expiring, for instance), which only costs the caller a listing.
// It sets a new server watch whenever the last one has fired (or may have
// been lost with a connection), and otherwise reads without one, so that
// callers who poll do not pile up the client's per-call watch channels.
// Events come through the client's event callback, which sees all of them;
// its event channel drops events when full and is not used.
//
// # What survives
//
// Nothing ephemeral outlives the session: Close, or the process dying and
// its session expiring, removes its leases and memberships. The epoch
// nodes stay, one small node per lease name, so epochs keep growing.
// Close waits for every goroutine this package or the client started.
package zkcoord
