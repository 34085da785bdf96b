package thriftsrv

import (
	"errors"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/config"
)

const (
	// Envelope is what a frame may carry beyond max_call_bytes: the
	// message header, field and list headers, categories.
	Envelope = 64 << 10
	// MaxCallLimit is the most max_call_bytes may be set to.
	MaxCallLimit = 256 << 20
	// maxMethodName bounds the method name of a message header; fb303 and
	// Scribe names are a few bytes.
	maxMethodName = 255
)

// Limits bounds what one peer may send and hold.
type Limits struct {
	// MaxCallBytes bounds a call served (its frame may be Envelope more).
	// A larger call is read, discarded and refused (TRY_LATER for Scribe)
	// on the same connection.
	MaxCallBytes int64
	// MaxContainerSize bounds the elements of one list, set or map; 0
	// (the default) bounds them only by the call's bytes: each element
	// takes at least a byte of the frame, and what decoding allocates for
	// it is charged to the in-flight byte budget. (A limit of its own
	// refused stock clients' calls of many tiny entries that were within
	// max_call_bytes, with PROTOCOL_ERROR, and they sent them again
	// forever.)
	MaxContainerSize int32
	// MaxConnections caps open connections; at the cap the longest-idle
	// one is closed for a newcomer (see internal/connlimit).
	MaxConnections int
	// IdleTimeout closes a connection that starts no call for this long.
	IdleTimeout time.Duration
	// ReadTimeout: a call whose first byte has arrived must arrive in
	// full within it (not counting its waits for memory, if any); a reply
	// must be written within it too.
	ReadTimeout time.Duration
	// BudgetWait bounds how long a call waits for room in the in-flight
	// byte budget before it is refused: in all, for a call charged chunk
	// by chunk as it arrives.
	BudgetWait time.Duration
}

var defaultLimits = Limits{
	MaxCallBytes:   64 << 20,
	MaxConnections: 1024,
	IdleTimeout:    10 * time.Minute,
	ReadTimeout:    30 * time.Second,
	BudgetWait:     5 * time.Second,
}

// DefaultLimits returns the limits of the ingest ports unless configured.
func DefaultLimits() Limits { return defaultLimits }

func (l Limits) withDefaults() Limits {
	d := defaultLimits
	if l.MaxCallBytes <= 0 {
		l.MaxCallBytes = d.MaxCallBytes
	}
	l.MaxCallBytes = min(l.MaxCallBytes, MaxCallLimit)
	l.MaxContainerSize = max(l.MaxContainerSize, 0)
	if l.MaxConnections <= 0 {
		l.MaxConnections = d.MaxConnections
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = d.IdleTimeout
	}
	if l.ReadTimeout <= 0 {
		l.ReadTimeout = d.ReadTimeout
	}
	if l.BudgetWait <= 0 {
		l.BudgetWait = d.BudgetWait
	}
	return l
}

// maxFrame is the largest frame served.
func (l Limits) maxFrame() int64 { return l.MaxCallBytes + Envelope }

// Config returns the Thrift configuration for these limits (clients use
// it; the server decodes with its own framing).
func (l Limits) Config() *thrift.TConfiguration {
	l = l.withDefaults()
	return &thrift.TConfiguration{
		MaxFrameSize:       int32(l.maxFrame()),
		MaxMessageSize:     int32(l.maxFrame()),
		MaxContainerSize:   l.MaxContainerSize,
		TBinaryStrictRead:  thrift.BoolPtr(false),
		TBinaryStrictWrite: thrift.BoolPtr(true),
	}
}

// PortConfig is the YAML of a Scribe port's limits, inlined into the agent
// and calligraphus sections.
type PortConfig struct {
	// MaxCallBytes: the largest call served (at most 256MiB); a larger
	// one is answered TRY_LATER and the connection stays usable.
	MaxCallBytes config.ByteSize `yaml:"max_call_bytes"`
	// MaxConnections caps open connections; at the cap the longest-idle
	// one is closed to make room for a new client.
	MaxConnections int `yaml:"max_connections"`
	// IdleTimeout closes a connection that starts no call for this long.
	IdleTimeout config.Duration `yaml:"idle_timeout"`
	// ReadTimeout: a call must arrive in full within this long of its
	// first byte (and a reply be written within it).
	ReadTimeout config.Duration `yaml:"read_timeout"`
}

// DefaultPortConfig returns the defaults of the Scribe ports.
func DefaultPortConfig() PortConfig {
	return PortConfig{
		MaxCallBytes:   config.ByteSize(defaultLimits.MaxCallBytes),
		MaxConnections: defaultLimits.MaxConnections,
		IdleTimeout:    config.Duration(defaultLimits.IdleTimeout),
		ReadTimeout:    config.Duration(defaultLimits.ReadTimeout),
	}
}

// Validate checks the keys; errors are config.FieldErrors at paths
// relative to the section the keys are in (config.Under places them),
// all of them joined.
func (p *PortConfig) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, config.Errorf(key, format, args...))
	}
	if p.MaxCallBytes < 1<<10 || p.MaxCallBytes > MaxCallLimit {
		bad("max_call_bytes", "must be between 1KiB and %s, got %s", config.ByteSize(MaxCallLimit), p.MaxCallBytes)
	}
	if p.MaxConnections < 1 || p.MaxConnections > 1<<20 {
		bad("max_connections", "must be between 1 and %d, got %d", 1<<20, p.MaxConnections)
	}
	if p.IdleTimeout.D() < time.Millisecond {
		bad("idle_timeout", "must be at least 1ms, got %s", p.IdleTimeout)
	}
	if p.ReadTimeout.D() < time.Millisecond {
		bad("read_timeout", "must be at least 1ms, got %s", p.ReadTimeout)
	}
	return errors.Join(errs...)
}

// Limits are the server limits of this port.
func (p *PortConfig) Limits() Limits {
	return Limits{
		MaxCallBytes:   int64(p.MaxCallBytes),
		MaxConnections: p.MaxConnections,
		IdleTimeout:    p.IdleTimeout.D(),
		ReadTimeout:    p.ReadTimeout.D(),
	}.withDefaults()
}
