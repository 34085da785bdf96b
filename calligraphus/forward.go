package calligraphus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// Forwarding. Entries for a bucket another writer holds are sent to it as
// one LogBatch per holder and call, marked forwarded (the holder never
// forwards them again) and carrying what the sender said of them: the
// agent id and incarnation, each entry's sequence number (seqs) and the
// arrival time. The call is answered OK only once every holder answered
// OK, that is once the entries are durable there.

// peerConns bounds the connections to one peer writer, idle or busy; a
// call finding none free waits for one (within its forward timeout).
const peerConns = 8

// peers pools connections to the other writers, per address.
type peers struct {
	dial    func(addr string) (*scribeapi.Client, error)
	timeout time.Duration

	mu    sync.Mutex
	pools map[string]*peerPool
}

type peerPool struct {
	slots chan struct{} // one per open or opening connection
	mu    sync.Mutex
	idle  []idleConn
}

type idleConn struct {
	cl    *scribeapi.Client
	since time.Time
}

// peerIdleFor is how long a pooled connection may sit idle before it is
// closed rather than used: well within the peer's idle_timeout (10m by
// default), which would close it under us.
const peerIdleFor = time.Minute

func (p *peers) pool(addr string) *peerPool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pp, ok := p.pools[addr]
	if !ok {
		pp = &peerPool{slots: make(chan struct{}, peerConns)}
		p.pools[addr] = pp
	}
	return pp
}

// send sends b to the writer at addr on a pooled connection (a new one if
// none is idle) and returns its answer. A connection that failed is
// closed, not pooled.
func (p *peers) send(ctx context.Context, addr string, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
	pp := p.pool(addr)
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	select {
	case pp.slots <- struct{}{}:
	case <-ctx.Done():
		return 0, fmt.Errorf("forward to %s: all %d connections busy: %w", addr, peerConns, ctx.Err())
	}
	defer func() { <-pp.slots }()
	cl := pp.take()
	reused := cl != nil
	for {
		if cl == nil {
			var err error
			if cl, err = p.dial(addr); err != nil {
				return 0, fmt.Errorf("forward to %s: %w", addr, err)
			}
		}
		rc, err := cl.LogBatch(ctx, b)
		if err == nil {
			pp.put(cl)
			return rc, nil
		}
		_ = cl.Close() // the call's error is the one to report
		if !reused || ctx.Err() != nil {
			return 0, fmt.Errorf("forward to %s: %w", addr, err)
		}
		// A pooled connection the peer may have closed: once more on a
		// new one. Should the peer have taken the batch after all, the
		// repeat carries the same sequence numbers.
		cl, reused = nil, false
	}
}

// take returns an idle connection recent enough to use, or nil.
func (pp *peerPool) take() *scribeapi.Client {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	for n := len(pp.idle); n > 0; n = len(pp.idle) {
		ic := pp.idle[n-1]
		pp.idle = pp.idle[:n-1]
		if time.Since(ic.since) < peerIdleFor {
			return ic.cl
		}
		_ = ic.cl.Close() // idle too long
	}
	return nil
}

func (pp *peerPool) put(cl *scribeapi.Client) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	pp.idle = append(pp.idle, idleConn{cl: cl, since: time.Now()})
}

// close closes every idle connection.
func (p *peers) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pp := range p.pools {
		pp.mu.Lock()
		for _, ic := range pp.idle {
			_ = ic.cl.Close() // stopping
		}
		pp.idle = nil
		pp.mu.Unlock()
	}
}

// newPeers dials peers over the process's TLS when it has one, offering
// the process's certificate: a holder verifying client certificates
// (tls.ca_file) honours the forwarded agent ids and sequence numbers only
// from a verified peer.
func (c *Calligraphus) newPeers() *peers {
	t := c.deps.Shared.TLS
	timeout := c.cfg.ForwardTimeout.D()
	return &peers{
		timeout: timeout,
		pools:   map[string]*peerPool{},
		dial: func(addr string) (*scribeapi.Client, error) {
			return scribeapi.DialTLS(addr, t.ClientConfig(addr), thriftsrv.Limits{MaxCallBytes: thriftsrv.MaxCallLimit}, timeout)
		},
	}
}

var (
	errForwardRefused  = errors.New("holder answered TRY_LATER")
	errForwardTooLarge = errors.New("entry too large to forward")
)

// forwardLimit is the largest forwarded batch: the holder's frame limit,
// taken to be this writer's (max_call_bytes and its envelope).
func (c *Calligraphus) forwardLimit() int64 { return int64(c.cfg.MaxCallBytes) + thriftsrv.Envelope }

// forwardSize is what an entry adds to a forwarded batch of info: its
// encoding, and its sequence number (8 bytes the sender's batch did not
// carry per entry).
func forwardSize(info callInfo, category string, msg []byte) int64 {
	n := int64(scribewire.EntrySize(category, msg))
	if info.agent != "" {
		n += 8
	}
	return n
}

// checkForwardable fails (errForwardTooLarge) if an entry of r could not
// be forwarded even in a batch of its own: the holder would refuse the
// call at every retry. ingest checks before it writes or sends anything.
func (c *Calligraphus) checkForwardable(info callInfo, id bucketID, r *appendReq) error {
	room := c.forwardLimit() - scribeapi.BatchOverhead(info.agentID, info.incarnation)
	for _, blk := range r.blocks {
		for _, m := range blk.Messages {
			if n := forwardSize(info, id.category, m); n > room {
				return fmt.Errorf("%w: an entry of %d bytes (category %s) would make a forwarded batch %d bytes over max_call_bytes (%v) and its envelope",
					errForwardTooLarge, len(m), ratelog.Clip(id.category), n-room, c.cfg.MaxCallBytes)
			}
		}
	}
	return nil
}

// forward sends the requests reqs (of buckets ids) to the writer at addr
// as forwarded batches, all within forward_timeout: one, unless it would
// be over forwardLimit. A forwarded entry carries its sequence number,
// 8 bytes more than in the sender's batch, so the entries of a call at
// the port's limit can make a batch the holder refuses as too large at
// every retry of the sender; split, each batch is taken. The batches go
// one after another, so a bucket's entries keep their order; should one
// fail after others were taken, the sender's retry repeats those (with
// the same sequence numbers). Every entry fits a batch alone
// (checkForwardable).
func (c *Calligraphus) forward(ctx context.Context, addr string, info callInfo, ids []bucketID, reqs []*appendReq) error {
	limit := c.forwardLimit()
	var (
		batches []*scribethrift.Batch
		b       *scribethrift.Batch
		size    int64
		n       int
		total   int
	)
	for _, r := range reqs {
		total += r.entries
	}
	for i, r := range reqs {
		for _, blk := range r.blocks {
			for j, m := range blk.Messages {
				es := forwardSize(info, ids[i].category, m)
				if b == nil || (size+es > limit && len(b.Messages) > 0) {
					b, size = forwardBatch(info, total-n), scribeapi.BatchOverhead(info.agentID, info.incarnation)
					batches = append(batches, b)
				}
				size += es
				b.Messages = append(b.Messages, &scribethrift.LogEntry{Category: ids[i].category, Message: m})
				if b.Seqs != nil {
					b.Seqs = append(b.Seqs, int64(blk.Seqs[j]))
				}
				n++
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ForwardTimeout.D())
	defer cancel()
	for _, b := range batches {
		if len(b.Seqs) > 0 {
			b.FirstSeq = b.Seqs[0]
		}
		rc, err := c.peers.send(ctx, addr, b)
		if err != nil {
			return err
		}
		if rc != scribethrift.ResultCode_OK {
			return fmt.Errorf("forward to %s: %w", addr, errForwardRefused)
		}
	}
	c.m.forwarded.WithLabelValues("out").Add(float64(n))
	return nil
}

// forwardBatch is an empty forwarded batch of a call, with room for up
// to n entries (usually all of them go in one).
func forwardBatch(info callInfo, n int) *scribethrift.Batch {
	b := &scribethrift.Batch{
		AgentID:      info.agentID,
		ReceivedAtMs: info.arrivalMs,
		Forwarded:    &[]bool{true}[0],
		Messages:     make([]*scribethrift.LogEntry, 0, n),
	}
	if info.agent != "" {
		if info.incarnation != "" {
			b.Incarnation = &info.incarnation
		}
		b.Seqs = make([]int64, 0, n)
	} else {
		b.AgentID = "" // taken without deduplication here: the same there
	}
	return b
}
