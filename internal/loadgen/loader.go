package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// Options configure a Loader.
type Options struct {
	// Addr is the Scribe server (an agent, or a writer) to send to.
	Addr string
	// TLS, when not nil, connects over TLS with it.
	TLS *tls.Config
	// Category of every entry.
	Category string
	// Lines are the lines sent: line i of the spec is sent once, in a
	// batch of consecutive lines (whichever connection sends it).
	Lines Lines
	// First is the index of the first line sent (default 0).
	First int64
	// Conns is the number of connections, each sending one call at a time.
	Conns int
	// Batch is the number of entries per Log call.
	Batch int
	// Rate is the entries a second over all connections; 0 sends flat out.
	Rate float64
	// Count is the number of lines to send; 0 sends until Duration or
	// ctx ends.
	Count int64
	// Duration bounds the run; 0 runs until Count lines are sent or ctx
	// ends.
	Duration time.Duration
	// Out, when not nil, receives every acknowledged line, one a line,
	// in the order the calls were answered.
	Out io.Writer
	// Timeout is the connect and per-call socket timeout (default 30s).
	// A connection whose attempts to connect all fail for this long
	// stops, and Run returns the error.
	Timeout time.Duration
	// OnAck, when not nil, is called with the records of every batch
	// answered OK, and OnUnknown with those of a call that failed
	// without an answer; from the connections' goroutines, concurrently.
	OnAck, OnUnknown func([]Record)
	// Now is the clock of live event times (default time.Now).
	Now func() time.Time
}

// Summary is what a run did.
type Summary struct {
	Entries  int64   `json:"entries"` // acknowledged (OK)
	Bytes    int64   `json:"bytes"`   // of acknowledged messages
	Seconds  float64 `json:"seconds"` // from the start to the last answer
	PerSec   float64 `json:"entries_per_second"`
	MBPerSec float64 `json:"mb_per_second"` // 10^6 bytes a second
	Calls    int64   `json:"calls"`
	// TryLater is the calls answered TRY_LATER (their batch was sent again).
	TryLater int64 `json:"try_later"`
	// Errors is the calls that failed without an answer (the connection
	// was closed and opened again) and failed connection attempts.
	Errors int64 `json:"errors"`
	// Unknown is the entries of calls that failed without an answer:
	// the server may or may not have taken them. They are not sent again.
	Unknown int64 `json:"unknown_entries"`
	// Behind counts the times a paced connection fell a second behind.
	Behind int64 `json:"behind"`
	// Latency of the Log calls, in milliseconds.
	LatencyMs Latency `json:"log_latency_ms"`
	// LastErr is the last error, if any.
	LastErr string `json:"last_error,omitempty"`
}

// Latency is a distribution of call durations in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Loader sends lines to a Scribe server.
type Loader struct {
	o       Options
	next    atomic.Int64 // index of the next batch's first line
	acked   atomic.Int64
	bytes   atomic.Int64
	calls   atomic.Int64
	later   atomic.Int64
	errs    atomic.Int64
	unknown atomic.Int64
	behind  atomic.Int64
	lastAck atomic.Int64 // unix ns
	lastErr atomic.Pointer[string]
	// unreachable is why a connection stopped: the server could not be
	// reached for Timeout.
	unreachable atomic.Pointer[error]

	outMu  sync.Mutex
	out    *bufio.Writer
	outErr error

	histMu sync.Mutex
	hist   hist
}

// New checks the options and returns a Loader.
func New(o Options) (*Loader, error) {
	if o.Addr == "" {
		return nil, errors.New("no address to send to")
	}
	if o.Category == "" {
		return nil, errors.New("empty category (Scribe servers drop such entries)")
	}
	if err := o.Lines.Validate(); err != nil {
		return nil, err
	}
	switch {
	case o.Conns < 1:
		return nil, fmt.Errorf("connections must be at least 1, not %d", o.Conns)
	case o.Batch < 1:
		return nil, fmt.Errorf("batch must be at least 1, not %d", o.Batch)
	case o.Rate < 0:
		return nil, fmt.Errorf("rate must not be negative, not %g", o.Rate)
	case o.Count < 0:
		return nil, fmt.Errorf("count must not be negative, not %d", o.Count)
	case o.Duration < 0:
		return nil, fmt.Errorf("duration must not be negative, not %v", o.Duration)
	case o.First < 0:
		return nil, fmt.Errorf("first line must not be negative, not %d", o.First)
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	l := &Loader{o: o}
	l.next.Store(o.First)
	if o.Out != nil {
		l.out = bufio.NewWriterSize(o.Out, 1<<20)
	}
	return l, nil
}

// Acked is the number of entries acknowledged so far.
func (l *Loader) Acked() int64 { return l.acked.Load() }

// Run sends until Count lines are answered, Duration ends or ctx ends,
// and returns what was done. The error is for what stopped it early
// (a server not reached for Timeout, writing Out); a server that answers
// badly is counted, not an error.
func (l *Loader) Run(ctx context.Context) (Summary, error) {
	if l.o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.o.Duration)
		defer cancel()
	}
	start := time.Now()
	l.lastAck.Store(start.UnixNano())
	var wg sync.WaitGroup
	for j := range l.o.Conns {
		wg.Go(func() { l.conn(ctx, j) })
	}
	wg.Wait()
	var err error
	if e := l.unreachable.Load(); e != nil {
		err = *e
	}
	if l.out != nil {
		l.outMu.Lock()
		if l.outErr == nil {
			l.outErr = l.out.Flush()
		}
		if err == nil {
			err = l.outErr
		}
		l.outMu.Unlock()
	}
	return l.summary(start), err
}

func (l *Loader) summary(start time.Time) Summary {
	s := Summary{
		Entries: l.acked.Load(), Bytes: l.bytes.Load(), Calls: l.calls.Load(), TryLater: l.later.Load(),
		Errors: l.errs.Load(), Unknown: l.unknown.Load(), Behind: l.behind.Load(),
	}
	end := time.Unix(0, l.lastAck.Load())
	if l.o.Count == 0 {
		end = time.Now() // a duration: the rate over all of it
	}
	s.Seconds = end.Sub(start).Seconds()
	if s.Seconds > 0 {
		s.PerSec = float64(s.Entries) / s.Seconds
		s.MBPerSec = float64(s.Bytes) / 1e6 / s.Seconds
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	l.histMu.Lock()
	s.LatencyMs = Latency{ms(l.hist.quantile(0.5)), ms(l.hist.quantile(0.9)), ms(l.hist.quantile(0.99)), ms(l.hist.quantile(1))}
	l.histMu.Unlock()
	if e := l.lastErr.Load(); e != nil {
		s.LastErr = *e
	}
	return s
}

// claim takes the next batch: its first line and size (0: none left).
func (l *Loader) claim() (int64, int) {
	first := l.next.Add(int64(l.o.Batch)) - int64(l.o.Batch)
	n := int64(l.o.Batch)
	if l.o.Count > 0 {
		n = min(n, l.o.First+l.o.Count-first)
	}
	return first, int(max(n, 0))
}

func (l *Loader) fail(err error) {
	l.errs.Add(1)
	s := err.Error()
	l.lastErr.Store(&s)
}

// conn sends batches on connection j until there are none left or ctx
// ends, then merges its latencies.
func (l *Loader) conn(ctx context.Context, j int) {
	var h hist
	defer func() {
		l.histMu.Lock()
		l.hist.merge(&h)
		l.histMu.Unlock()
	}()
	var client *scribeapi.Client
	defer func() {
		if client != nil {
			_ = client.Close() // the run is over; its calls were answered or counted
		}
	}()
	var interval time.Duration
	if l.o.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(l.o.Batch) * float64(l.o.Conns) / l.o.Rate)
	}
	// Paced, connection j sends its first batch j/Conns of an interval
	// after the first one's: all at once, a rate below a batch a
	// connection a second sent Conns batches at the start (--rate 100
	// over 3s: 8000 entries, not 300 or the one batch the batch size
	// allows).
	next := time.Now().Add(interval * time.Duration(j) / time.Duration(l.o.Conns))
	// The connection's one frame buffer, reused call after call: the
	// lines are made straight into the Log call's arguments, after the
	// room LogFrame writes the frame's head into; spans are where each
	// message lies in it (for Out).
	var frame []byte
	recs := make([]Record, 0, l.o.Batch)
	spans := make([][2]int, 0, l.o.Batch)
	for ctx.Err() == nil && !l.outFailed() {
		if interval > 0 {
			now := time.Now()
			if next.After(now) {
				t := time.NewTimer(next.Sub(now))
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			} else if now.Sub(next) > time.Second {
				l.behind.Add(1)
				next = now
			}
			next = next.Add(interval)
		}
		first, n := l.claim()
		if n == 0 {
			return
		}
		recs, spans = recs[:0], spans[:0]
		var size int64
		nowMs := l.o.Now().UnixMilli()
		frame = scribewire.AppendLogHead(append(frame[:0], make([]byte, scribeapi.LogFrameHead)...), n)
		for i := range n {
			frame = scribewire.AppendEntryStart(frame, l.o.Category)
			start := len(frame)
			var r Record
			frame, r = l.o.Lines.Append(frame, first+int64(i), nowMs)
			spans = append(spans, [2]int{start, len(frame)})
			size += int64(len(frame) - start)
			frame = scribewire.EndEntry(frame, start)
			recs = append(recs, r)
		}
		frame = scribewire.AppendLogTail(frame)
		var failingSince time.Time
		for {
			if client == nil {
				c, err := scribeapi.DialTLS(l.o.Addr, l.o.TLS, thriftsrv.Limits{}, l.o.Timeout)
				if err != nil {
					l.fail(err)
					// A server that comes back (a restart) is waited
					// for; one that stays away ends the run rather than
					// leave a --count run retrying silently forever.
					if failingSince.IsZero() {
						failingSince = time.Now()
					} else if time.Since(failingSince) >= l.o.Timeout {
						e := fmt.Errorf("cannot connect to %s for %v: %w", l.o.Addr, l.o.Timeout, err)
						l.unreachable.CompareAndSwap(nil, &e)
						return
					}
					if !backoff.Sleep(ctx, 100*time.Millisecond) {
						return
					}
					continue
				}
				client = c
				failingSince = time.Time{}
			}
			l.calls.Add(1)
			t0 := time.Now()
			rc, err := client.LogFrame(context.Background(), frame)
			h.add(time.Since(t0))
			if err != nil {
				l.fail(fmt.Errorf("log to %s: %w", l.o.Addr, err))
				l.unknown.Add(int64(n))
				if l.o.OnUnknown != nil {
					l.o.OnUnknown(recs)
				}
				_ = client.Close() // reconnecting; the call error is counted
				client = nil
				break
			}
			if rc == scribe.ResultCode_OK {
				l.acked.Add(int64(n))
				l.bytes.Add(size)
				l.lastAck.Store(time.Now().UnixNano())
				if l.o.OnAck != nil {
					l.o.OnAck(recs)
				}
				if l.out != nil {
					l.outMu.Lock()
					for _, sp := range spans {
						if l.outErr != nil {
							break
						}
						_, err := l.out.Write(frame[sp[0]:sp[1]])
						if err == nil {
							err = l.out.WriteByte('\n')
						}
						if err != nil {
							l.outErr = fmt.Errorf("write acknowledged lines: %w", err)
						}
					}
					l.outMu.Unlock()
				}
				break
			}
			l.later.Add(1)
			if !backoff.Sleep(ctx, 10*time.Millisecond) {
				// Stopped while the server pushed back: the batch was
				// not taken, so it is neither acknowledged nor unknown.
				return
			}
		}
	}
}

// outFailed reports whether writing Out failed (the run then stops).
func (l *Loader) outFailed() bool {
	if l.out == nil {
		return false
	}
	l.outMu.Lock()
	defer l.outMu.Unlock()
	return l.outErr != nil
}
