// Package thriftsrv serves and dials Thrift services the way Freeway's
// ports speak them: framed transport, binary protocol (strict and
// non-strict message headers both accepted, as stock Scribe clients send
// either), with every resource a peer can make the process hold bounded.
//
// It replaces thrift.TSimpleServer and thrift.TFramedTransport on the
// server side with its own framed loop, per connection:
//
//   - Between calls a connection is idle: it is closed after IdleTimeout,
//     and at MaxConnections the longest-idle connection is closed to make
//     room for a new client (internal/connlimit), so idle clients cannot
//     lock others out; nor can one host holding every connection busy,
//     which loses one to each other host's newcomer. Accept errors that
//     pass (out of file descriptors) are retried, never fatal.
//   - The first bytes of a call are sniffed: a client speaking unframed
//     (buffered) transport, the compact protocol, THeader, HTTP or TLS has
//     its connection closed at once, with a rate-limited log line saying
//     which.
//   - The message header (method name, sequence id) is read from the
//     frame's first bytes. A call over MaxCallBytes (plus Envelope) is
//     read and discarded as it streams in, never held, and refused with
//     the service's answer (TRY_LATER for Scribe); the connection stays
//     usable, so a client that shrinks its batches on TRY_LATER gets
//     through.
//   - Otherwise the call is charged twice its frame size to the
//     process's in-flight byte Budget (the frame, then what decoding it
//     allocates, charged as it goes), and nothing before the first byte
//     of its body arrives. A frame of one 64 KiB chunk takes its charge
//     then; a larger one chunk by chunk as it arrives (one of up to
//     1 MiB, read into one pooled slice, takes it whole while such
//     frames hold less than an eighth of the budget), so that a client
//     that sends a frame's header and stalls holds none of it, and one
//     that drips the frame about twice what it sent (plus the chunk
//     being read), not what it declared. A chunk is given only if
//     every call being read can still finish (Budget). What one peer's
//     calls (a remote host's, on all the process's ports) hold ahead of
//     their bytes, frames taken whole and not yet in, and chunks being
//     read, is at most a quarter of the budget: a call of a peer at its
//     share waits to start, so that one client stalling many
//     connections after a frame's first bytes cannot hold the whole
//     budget and lock every other client out. A call whose decoding
//     needs more than its charge (many tiny values) takes more as it
//     decodes, waiting for it before new calls; one that would need
//     more than the whole budget takes all of it and runs alone
//     (logged), rather than being refused however idle the server is,
//     which a stock Scribe client would take for TRY_LATER for ever.
//     A call waits at most BudgetWait in all for room, behind earlier
//     calls; without room it is refused too: the rest of its frame is
//     read and discarded as it streams in, and the connection stays
//     usable. The frame must arrive within ReadTimeout (not counting
//     those waits); it is decoded from memory, processed, and the reply
//     written as one frame, within ReadTimeout, the call's charge
//     returned before (a client that reads no answers holds none of
//     it), and however the call ends (a handler's panic too). A
//     processor may take the arguments' bytes in one slice instead
//     (ArgsFrame: a frame read in chunks is copied into one, which
//     takes their place) and decode them itself, charging the budget
//     what the protocol would have.
//
// With WithTLS the port speaks TLS: the handshake starts at a
// connection's first byte (under ReadTimeout), and a client whose first
// byte is not a TLS handshake (a plaintext Thrift client, say) is closed
// at once with a rate-limited line saying so; on a plaintext port a TLS
// handshake is closed the same way. A failed handshake (an untrusted or
// missing client certificate) is counted and logged too.
//
// Handlers find the peer's address in their context (Peer), its TLS
// state (TLSState: a verified client certificate, say), and values kept
// for the connection's later calls (SetConnValue, ConnValue), for checks
// such as fb303's control calls being local-only or a token given once
// per connection.
//
// Nothing here survives a restart: it holds only connections and calls in
// flight, and a call is answered only after its handler returns.
package thriftsrv

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/connlimit"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// ErrTooLarge and ErrBusy are why a call is refused without being
// processed.
var (
	ErrTooLarge = errors.New("call over max_call_bytes")
	ErrBusy     = errors.New("no room for the call under max_inflight_bytes")
)

// RefuseFunc answers a call the server will not process (why is
// ErrTooLarge or ErrBusy), from its header alone: it writes a whole reply
// message to out, or nothing to have the default answer sent, an
// application exception. Oneway calls get no answer.
type RefuseFunc func(ctx context.Context, call Call, why error, out thrift.TProtocol) error

// Option configures a Server.
type Option func(*Server)

// WithBudget shares the process's in-flight byte budget (by default a
// server has its own of DefaultBudget bytes).
func WithBudget(b *Budget) Option { return func(s *Server) { s.budget = b } }

// WithRefuse sets the answer to calls refused without being processed.
func WithRefuse(f RefuseFunc) Option { return func(s *Server) { s.refuse = f } }

// WithName names the listener in metrics and logs ("agent").
func WithName(name string) Option { return func(s *Server) { s.name = name } }

// WithTLS makes the port speak TLS with cfg (a nil cfg: plain TCP).
func WithTLS(cfg *tls.Config) Option { return func(s *Server) { s.tls = cfg } }

// WithMetrics registers the server's metrics with reg, shared with the
// process's other listeners.
func WithMetrics(reg prometheus.Registerer) Option { return func(s *Server) { s.reg = reg } }

// Server serves one Thrift processor on one listener.
type Server struct {
	proc   thrift.TProcessor
	limits Limits
	cfg    *thrift.TConfiguration
	name   string
	reg    prometheus.Registerer
	budget *Budget
	refuse RefuseFunc
	tls    *tls.Config
	log    *slog.Logger
	warn   *ratelog.Limiter
	ln     *connlimit.Listener

	refused, closed *prometheus.CounterVec

	mu    sync.Mutex
	conns map[*conn]struct{}
}

// conn is one client connection.
type conn struct {
	c  *connlimit.Conn
	br *bufio.Reader
	// w is where replies go: c, or its TLS connection.
	w    io.Writer
	peer string
	// bp is its peer's (connlimit.PeerKey) share of the budget.
	bp   *peer
	info *connInfo

	// mu orders the start of processing against shutdown: a connection
	// not processing a call is closed at once when the server stops; one
	// processing finishes the call (its handler sees the context end) and
	// answers it first.
	mu         sync.Mutex
	processing bool
}

// Listen binds addr and returns a server for proc; Serve starts it.
func Listen(addr string, proc thrift.TProcessor, limits Limits, log *slog.Logger, opts ...Option) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{proc: proc, limits: limits.withDefaults(), name: "thrift", log: log, conns: map[*conn]struct{}{}}
	for _, o := range opts {
		o(s)
	}
	s.cfg = s.limits.Config()
	if s.budget == nil {
		s.budget = NewBudget(DefaultBudget, nil)
	}
	if s.refuse == nil {
		s.refuse = func(context.Context, Call, error, thrift.TProtocol) error { return nil }
	}
	s.warn = ratelog.New(log, time.Minute, 5)
	s.refused, s.closed = newServerMetrics(s.reg)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	s.ln = connlimit.New(ln, connlimit.Options{Name: s.name, MaxConns: s.limits.MaxConnections, Log: log, Metrics: connlimit.NewMetrics(s.reg)})
	return s, nil
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve accepts connections until ctx ends, then closes the listener and
// every connection not processing a call, lets calls being processed
// answer (their answers written within 5s, stopGrace, even to a client
// that reads none), and waits for every connection's goroutine. Accept errors that
// pass are retried; Serve returns an error only if the listener fails
// for good.
func (s *Server) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, s.stop)
	defer stop()
	var err error
	for {
		c, aerr := s.ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("accept on %s: %w", s.Addr(), aerr)
			}
			break
		}
		cn := &conn{c: c.(*connlimit.Conn), br: bufio.NewReaderSize(c, 4<<10), w: c, peer: c.RemoteAddr().String(), info: &connInfo{}}
		cn.bp = s.budget.peerOf(connlimit.PeerKey(c.RemoteAddr()))
		s.mu.Lock()
		s.conns[cn] = struct{}{}
		s.mu.Unlock()
		if ctx.Err() != nil {
			// stop may have run before cn was registered.
			s.stop()
		}
		wg.Go(func() {
			s.serveConn(ctx, cn)
			s.budget.donePeer(cn.bp)
			s.mu.Lock()
			delete(s.conns, cn)
			s.mu.Unlock()
			_ = cn.c.Close() // the connection is done; nothing to report to
		})
	}
	s.stop()
	wg.Wait()
	return err
}

// stopGrace bounds the writing of a call's answer once the server
// stops (see reply).
const stopGrace = 5 * time.Second

func (s *Server) stop() {
	_ = s.ln.Close() // stopping; Serve reports the listener
	s.mu.Lock()
	defer s.mu.Unlock()
	for cn := range s.conns {
		cn.mu.Lock()
		if !cn.processing {
			_ = cn.c.Close() // stopping an idle connection
		} else {
			// Its answer is written, but not for read_timeout to a
			// client that does not read it (reply).
			cn.c.SetWriteDeadline(time.Now().Add(min(stopGrace, s.limits.ReadTimeout)))
		}
		cn.mu.Unlock()
	}
}

// Peer returns the address of the client whose call ctx belongs to.
func Peer(ctx context.Context) (net.Addr, bool) {
	a, ok := ctx.Value(peerKey{}).(net.Addr)
	return a, ok
}

// WithPeer returns ctx carrying a peer address, as the server gives
// handlers (for tests of handlers, and other servers).
func WithPeer(ctx context.Context, addr net.Addr) context.Context {
	return context.WithValue(ctx, peerKey{}, addr)
}

type peerKey struct{}

// connInfo is what handlers may know of their call's connection.
type connInfo struct {
	tls *tls.ConnectionState

	mu   sync.Mutex
	vals map[any]any
}

type connKey struct{}

// TLSState returns the TLS state of the connection ctx's call came on, or
// nil on a plaintext port.
func TLSState(ctx context.Context) *tls.ConnectionState {
	if ci, ok := ctx.Value(connKey{}).(*connInfo); ok {
		return ci.tls
	}
	return nil
}

// SetConnValue keeps val under key for the later calls of the connection
// ctx's call came on; it reports false outside a call served here.
func SetConnValue(ctx context.Context, key, val any) bool {
	ci, ok := ctx.Value(connKey{}).(*connInfo)
	if !ok {
		return false
	}
	ci.mu.Lock()
	defer ci.mu.Unlock()
	if ci.vals == nil {
		ci.vals = map[any]any{}
	}
	ci.vals[key] = val
	return true
}

// ConnValue returns what SetConnValue kept under key on the connection
// ctx's call came on, or nil.
func ConnValue(ctx context.Context, key any) any {
	ci, ok := ctx.Value(connKey{}).(*connInfo)
	if !ok {
		return nil
	}
	ci.mu.Lock()
	defer ci.mu.Unlock()
	return ci.vals[key]
}

// serveConn runs calls on one connection until it closes, times out or
// misbehaves, or the server stops.
func (s *Server) serveConn(ctx context.Context, cn *conn) {
	defer func() {
		// As net/http: a panic serving one connection (a handler's bug, or
		// input no check foresaw) closes that connection, not the process.
		if v := recover(); v != nil {
			s.count(s.closed, "panic")
			s.warn.Error("panic", "panic serving a thrift connection; connection closed", "listener", s.name,
				"remote", cn.peer, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	if s.tls != nil && !s.handshake(ctx, cn) {
		return
	}
	pctx := context.WithValue(WithPeer(ctx, cn.c.RemoteAddr()), connKey{}, cn.info)
	frame := &frameReader{budget: s.budget}
	defer frame.release()
	ar := &arrival{s: s, cn: cn}
	in := newCallProtocol(frame, s.cfg)
	in.grow = ar.grow
	out := &outBuffer{}
	oprot := thrift.NewTBinaryProtocolConf(out, s.cfg)
	hbuf := make([]byte, 0, 16+maxMethodName)
	for ctx.Err() == nil {
		// Idle until the first byte of a call.
		if !cn.c.SetIdle(true) {
			return
		}
		cn.c.SetReadDeadline(time.Now().Add(s.limits.IdleTimeout))
		first, err := cn.br.ReadByte()
		if err != nil {
			s.ended(ctx, cn, err, "idle_timeout")
			return
		}
		if !cn.c.SetIdle(false) {
			return
		}
		cn.c.SetReadDeadline(time.Now().Add(s.limits.ReadTimeout))
		var h [4]byte
		h[0] = first
		if _, err := io.ReadFull(cn.br, h[1:]); err != nil {
			s.ended(ctx, cn, err, "read_timeout")
			return
		}
		size, err := sniffSize(h)
		if err == nil {
			var call Call
			var head []byte
			call, head, err = readHeader(cn.br, size, hbuf)
			if err == nil {
				if !s.call(ctx, pctx, cn, call, head, frame, ar, in, out, oprot) {
					return
				}
				continue
			}
		}
		s.badCall(ctx, cn, err)
		return
	}
}

// call serves one call whose header has been read; it reports whether
// the connection may go on.
func (s *Server) call(ctx, pctx context.Context, cn *conn, call Call, head []byte, frame *frameReader, ar *arrival,
	in *callProtocol, out *outBuffer, oprot thrift.TProtocol) bool {
	rest := call.Bytes - int64(len(head))
	if call.Bytes > s.limits.maxFrame() {
		return s.refuseCall(ctx, pctx, cn, call, rest, ErrTooLarge, out, oprot)
	}
	ar.start(ctx, time.Now().Add(s.limits.ReadTimeout))
	if rest > 0 && cn.br.Buffered() == 0 {
		// Nothing is taken from the budget before the call's body starts
		// to arrive: a client that sends a frame's header and stops
		// holds none of it.
		if _, err := cn.br.Peek(1); err != nil {
			s.ended(ctx, cn, err, "read_timeout")
			return false
		}
	}
	held, err := s.readFrame(ctx, cn, call, head, frame, ar)
	if err != nil {
		// Nothing is held while the rest is discarded, or after the
		// connection ends.
		s.budget.Release(held)
		got := frame.got
		frame.release()
		// Not for want of room if the server stopped while the call
		// waited: its connection is closed (stop), as ended says.
		if errors.Is(err, errNoRoom) && ctx.Err() == nil {
			return s.refuseCall(ctx, pctx, cn, call, call.Bytes-got, ErrBusy, out, oprot)
		}
		s.ended(ctx, cn, err, "read_timeout")
		return false
	}
	// What the call holds goes back however it ends: also if a handler
	// panics (serveConn recovers, and closes the connection), with what
	// decoding took beyond the frame's charge, or the budget would be
	// short of it for good.
	defer func() { s.budget.Release(held + in.extra) }()
	in.reset(held, frame.held())
	cn.mu.Lock()
	if ctx.Err() != nil {
		cn.mu.Unlock()
		return false
	}
	cn.processing = true
	cn.mu.Unlock()
	defer func() {
		cn.mu.Lock()
		cn.processing = false
		cn.mu.Unlock()
	}()

	out.start()
	// Not closed for a newcomer at max_connections while processed: the
	// call may take effect, and its answer must not be lost.
	cn.c.SetProcessing(true)
	ok, err := s.proc.Process(pctx, in, oprot)
	cn.c.SetProcessing(false)
	frame.release()
	// The call's arguments are dead once it is processed, and its answer
	// is in out: a client slow to read the answer, or reading none,
	// holds none of the budget while it waits to be written.
	s.budget.Release(held + in.extra)
	held, in.extra = 0, 0
	if in.exceeded {
		out.start()
		s.count(s.refused, "busy")
		s.warn.Warn("busy", "call refused: no room under max_inflight_bytes within budget_wait for what decoding it holds", "listener", s.name,
			"method", ratelog.Clip(call.Name), "bytes", call.Bytes, "remote", cn.peer)
		return s.answerRefusal(pctx, cn, call, ErrBusy, out, oprot)
	}
	if in.alone {
		// Served, but other calls waited for it, and the process may have
		// held more than the budget: the operator may raise it, or have
		// the client send smaller calls.
		s.budget.alone.Inc()
		s.warn.Warn("alone", "call took the whole of max_inflight_bytes and ran alone: decoding it needs more", "listener", s.name,
			"method", ratelog.Clip(call.Name), "bytes", call.Bytes, "max_inflight_bytes", s.budget.limit, "remote", cn.peer)
	}
	if !s.reply(pctx, cn, out) {
		return false
	}
	if errors.Is(err, thrift.ErrAbandonRequest) {
		return false
	}
	var pe thrift.TProtocolException
	var te thrift.TTransportException
	if errors.As(err, &pe) || errors.As(err, &te) {
		// The frame did not decode: the answer (PROTOCOL_ERROR) is sent,
		// the client is broken.
		s.count(s.closed, "malformed")
		s.warn.Warn("malformed", "connection closed: call did not decode", "listener", s.name,
			"method", ratelog.Clip(call.Name), "remote", cn.peer, "err", ratelog.Clip(err.Error()))
		return false
	}
	var tae thrift.TApplicationException
	if !ok && !(errors.As(err, &tae) && tae.TypeId() == thrift.UNKNOWN_METHOD) {
		if err != nil {
			s.log.Debug("thrift connection closed", "listener", s.name, "remote", cn.peer, "err", err)
		}
		return false
	}
	return true
}

// readFrame takes the call's charge from the budget and reads its frame.
// A frame of one chunk, or one read whole into one slice (within the
// budget's flatShare), is charged before it is read; a larger one chunk
// by chunk as it arrives, so that a call whose client stalls holds about
// twice what it sent. It returns what the call holds (also with an
// error, to be released), and the error that ended the read: errNoRoom
// if the budget had no room within BudgetWait (frame.got was read), or
// the connection's.
func (s *Server) readFrame(ctx context.Context, cn *conn, call Call, head []byte, frame *frameReader, ar *arrival) (held int64, err error) {
	size := call.Bytes
	charge := Charge(size)
	frame.got = int64(len(head))
	// If fill panics (serveConn recovers, and closes the connection), the
	// caller never gets what the call holds to release it: it is released
	// here, or the budget would be short of it for good.
	returned := false
	defer func() {
		if !returned {
			s.budget.Release(held)
		}
	}()
	if size <= chunkSize || size <= maxFlatPooled && s.budget.startFlat(charge) {
		if size > chunkSize {
			defer s.budget.endFlat(charge)
		}
		n := min(charge, s.budget.limit)
		ok, waited := s.budget.acquire(ctx, n, nil, cn.bp, s.limits.BudgetWait)
		ar.waited(waited)
		if !ok {
			return 0, errNoRoom
		}
		held = n
		defer s.budget.doneReading(cn.bp, n)
		err = frame.fill(cn.br, head, size, nil)
		returned = true
		return held, err
	}
	s.budget.open(&ar.c, charge, cn.bp)
	// Closed however fill ends, a panic too: held is then what the claim
	// took.
	defer func() { held = s.budget.close(&ar.c) }()
	err = frame.fill(cn.br, head, size, ar)
	returned = true
	return 0, err
}

// arrival charges a call's frame to the budget as its chunks are read
// (frameReader.fill): the call's waits for room together last at most
// BudgetWait, and move its read deadline on by as long, so that
// read_timeout is the time the frame's bytes took to arrive. One per
// connection.
type arrival struct {
	s        *Server
	cn       *conn
	ctx      context.Context
	c        claim
	wait     time.Duration // what is left of BudgetWait
	deadline time.Time
}

// start readies a for a call whose frame must arrive by deadline.
func (a *arrival) start(ctx context.Context, deadline time.Time) {
	a.ctx, a.wait, a.deadline = ctx, a.s.limits.BudgetWait, deadline
	a.cn.c.SetReadDeadline(deadline)
}

func (a *arrival) take(n int64) bool {
	ok, waited := a.s.budget.take(a.ctx, &a.c, n, a.wait)
	a.waited(waited)
	return ok
}

// grow waits for n more bytes for a call that holds held, whose frame is
// in, as it decodes (callProtocol.charge), for what is left of
// BudgetWait.
func (a *arrival) grow(held, n int64) (int64, bool) {
	got, ok, waited := a.s.budget.grow(a.ctx, held, n, a.wait)
	a.wait = max(a.wait-waited, 0)
	return got, ok
}

func (a *arrival) waited(d time.Duration) {
	if d <= 0 {
		return
	}
	a.wait = max(a.wait-d, 0)
	a.deadline = a.deadline.Add(d)
	a.cn.c.SetReadDeadline(a.deadline)
}

// refuseCall reads and discards the rest of a call's frame and answers it
// with the service's refusal.
func (s *Server) refuseCall(ctx, pctx context.Context, cn *conn, call Call, rest int64, why error,
	out *outBuffer, oprot thrift.TProtocol) bool {
	reason, key, msg := "busy", "busy", "call refused: no room under max_inflight_bytes"
	switch {
	case errors.Is(why, ErrTooLarge):
		reason, key, msg = "too_large", "too_large", "call over max_call_bytes refused"
	case s.budget.peerAtShare(cn.bp):
		// Not the budget's size: its host's other calls, stalled or
		// slow, that the operator may want to look at.
		key, msg = "busy:peer", "call refused: its host's calls being read hold their share of max_inflight_bytes ahead of their bytes (stalled after their first bytes?)"
	}
	s.count(s.refused, reason)
	s.warn.Warn(key, msg, "listener", s.name, "method", ratelog.Clip(call.Name), "bytes", call.Bytes,
		"max_call_bytes", s.limits.MaxCallBytes, "remote", cn.peer)
	cn.c.SetReadDeadline(time.Now().Add(s.limits.ReadTimeout))
	if _, err := io.CopyN(io.Discard, cn.br, rest); err != nil {
		s.ended(ctx, cn, err, "read_timeout")
		return false
	}
	out.start()
	return s.answerRefusal(pctx, cn, call, why, out, oprot)
}

func (s *Server) answerRefusal(ctx context.Context, cn *conn, call Call, why error, out *outBuffer, oprot thrift.TProtocol) bool {
	if call.Type == thrift.ONEWAY {
		return true
	}
	if err := s.refuse(ctx, call, why, oprot); err != nil || out.empty() {
		out.start()
		code, msg := int32(thrift.INTERNAL_ERROR), fmt.Sprintf("server busy: %v; try again later", why)
		if errors.Is(why, ErrTooLarge) {
			code = thrift.PROTOCOL_ERROR
			msg = fmt.Sprintf("call of %d bytes is over this port's limit of %d bytes", call.Bytes, s.limits.MaxCallBytes)
		}
		// Written to out, in memory: these do not fail.
		_ = oprot.WriteMessageBegin(ctx, call.Name, thrift.EXCEPTION, call.SeqID)
		_ = thrift.NewTApplicationException(code, msg).Write(ctx, oprot)
		_ = oprot.WriteMessageEnd(ctx)
	}
	return s.reply(ctx, cn, out)
}

// reply writes what the call answered, if anything, as one frame,
// within ReadTimeout, or stopGrace once the server stops (ctx ended):
// a client that does not read its answer holds the server's stopping
// up that long at most.
func (s *Server) reply(ctx context.Context, cn *conn, out *outBuffer) bool {
	b := out.frame()
	if b == nil {
		return true
	}
	d := s.limits.ReadTimeout
	// Under mu, as stop: either stop has run, and ctx has ended, or it
	// runs after and shortens the deadline set here.
	cn.mu.Lock()
	if ctx.Err() != nil {
		d = min(d, stopGrace)
	}
	cn.c.SetWriteDeadline(time.Now().Add(d))
	cn.mu.Unlock()
	if _, err := cn.w.Write(b); err != nil {
		s.log.Debug("thrift reply not written", "listener", s.name, "remote", cn.peer, "err", err)
		return false
	}
	return true
}

// handshake runs the TLS handshake of a new connection once its first
// byte has arrived (the connection is idle until then, as between calls),
// and reports whether the connection may go on.
func (s *Server) handshake(ctx context.Context, cn *conn) bool {
	cn.c.SetReadDeadline(time.Now().Add(s.limits.IdleTimeout))
	first, err := cn.br.Peek(1)
	if err != nil {
		s.ended(ctx, cn, err, "idle_timeout")
		return false
	}
	if !cn.c.SetIdle(false) {
		return false
	}
	if first[0] != 0x16 {
		seen := fmt.Sprintf("first byte %#02x", first[0])
		if cn.br.Buffered() >= 4 {
			b, _ := cn.br.Peek(4)
			var h [4]byte
			copy(h[:], b)
			var pe *protocolError
			if _, err := sniffSize(h); err == nil {
				seen = "plaintext framed thrift"
			} else if errors.As(err, &pe) {
				seen = "plaintext: " + pe.what
			}
		}
		s.count(s.closed, "protocol")
		s.warn.Warn("protocol:plaintext", "connection closed: client does not speak TLS; this port needs TLS",
			"listener", s.name, "remote", cn.peer, "seen", seen)
		return false
	}
	deadline := time.Now().Add(s.limits.ReadTimeout)
	cn.c.SetDeadline(deadline)
	tc := tls.Server(&bufferedConn{Conn: cn.c, r: cn.br}, s.tls)
	hctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		var ne net.Error
		switch {
		case ctx.Err() != nil || cn.c.Evicted():
		case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
			s.count(s.closed, "read_timeout")
			s.warn.Warn("tls_timeout", "connection closed: tls handshake not done within read_timeout", "listener", s.name,
				"remote", cn.peer, "read_timeout", s.limits.ReadTimeout)
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
			s.log.Debug("connection closed during the tls handshake", "listener", s.name, "remote", cn.peer, "err", err)
		default:
			s.count(s.closed, "tls_handshake")
			s.warn.Warn("tls_handshake", "connection closed: tls handshake failed", "listener", s.name,
				"remote", cn.peer, "err", ratelog.Clip(err.Error()))
		}
		return false
	}
	cn.c.SetWriteDeadline(time.Time{})
	st := tc.ConnectionState()
	cn.info.tls = &st
	cn.br = bufio.NewReaderSize(tc, 4<<10)
	cn.w = tc
	return true
}

// bufferedConn reads through the bytes already buffered (the sniffed
// first byte) before the connection's.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// badCall closes a connection whose call is not framed binary Thrift.
func (s *Server) badCall(ctx context.Context, cn *conn, err error) {
	var pe *protocolError
	var me *malformedError
	switch {
	case errors.As(err, &pe):
		s.count(s.closed, "protocol")
		s.warn.Warn("protocol:"+pe.what, "connection closed: client does not speak framed binary thrift",
			"listener", s.name, "remote", cn.peer, "seen", pe.what)
	case errors.As(err, &me):
		s.count(s.closed, "malformed")
		s.warn.Warn("malformed", "connection closed: malformed call", "listener", s.name, "remote", cn.peer, "err", me.what)
	default:
		s.ended(ctx, cn, err, "read_timeout")
	}
}

// ended accounts for a read that failed: the peer closed, the server
// stopped or evicted the connection, or the deadline passed (reason).
func (s *Server) ended(ctx context.Context, cn *conn, err error, reason string) {
	var ne net.Error
	switch {
	case ctx.Err() != nil || cn.c.Evicted():
	case errors.As(err, &ne) && ne.Timeout():
		s.count(s.closed, reason)
		if reason == "idle_timeout" {
			s.log.Debug("idle connection closed", "listener", s.name, "remote", cn.peer, "idle_timeout", s.limits.IdleTimeout)
		} else {
			s.warn.Warn(reason, "connection closed: call not received in full within read_timeout", "listener", s.name,
				"remote", cn.peer, "read_timeout", s.limits.ReadTimeout)
		}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
	default:
		s.log.Debug("thrift connection closed", "listener", s.name, "remote", cn.peer, "err", err)
	}
}

func (s *Server) count(v *prometheus.CounterVec, reason string) {
	v.WithLabelValues(s.name, reason).Inc()
}
