// Package connlimit is the accepting side every Freeway listener shares
// (the Scribe and Thrift ports through internal/thriftsrv, the HTTP ports
// through internal/httpsrv): a net.Listener that caps open connections
// without locking new clients out, and that rides out running short of
// file descriptors instead of failing.
//
// At the cap a new connection is accepted anyway and the connection that
// has been idle longest (waiting between calls, or silent since it was
// accepted) is closed to make room; only when every connection is busy in
// a call is the newcomer closed, at once. A server says which of its
// connections are idle with Conn.SetIdle. So a thousand idle connections
// cost their owners their sockets, not everyone else their service.
//
// Connections are counted by peer too (PeerKey: an IPv4 address, an
// IPv6 /64), so that one peer cannot take every place: a newcomer makes
// room only among the peers holding at least as many connections as its
// own peer does, and when none of theirs is idle, by closing the
// connection busy longest of the peer holding the most, if that is more
// than one more than the newcomer's (never one whose call is being
// processed, Conn.SetProcessing: it may have taken effect, and its
// answer would be lost). A client holding every connection with calls
// it never finishes then loses one to each other client that comes, and
// its own newcomers are closed.
//
// Accept errors that pass (EMFILE, ENFILE, ECONNABORTED, ENOBUFS, ENOMEM,
// timeouts) are retried with a backoff from 5ms to 1s, counted and logged
// at a bounded rate; Accept returns only errors that will not pass (the
// listener was closed).
//
// Nothing here survives a restart: it holds only the open connections.
package connlimit
