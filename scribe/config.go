package scribe

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
)

// TailConfig is one file the agent follows. A file rotated while the agent
// is down is looked for beside Path (or, Path a symlink, beside the file
// it named; see the package doc, Limits): with
// logrotate's olddir, or compress without delaycompress, the lines it had
// not read of that file are lost.
type TailConfig struct {
	Path     string `yaml:"path"`
	Category string `yaml:"category"`
}

// Config configures the agent. The zero value is not usable; start from
// DefaultConfig.
type Config struct {
	// Listen is where apps connect (Scribe's conventional port is 1463).
	Listen string `yaml:"listen"`
	// Upstream are calligraphus addresses, tried in turn on connection
	// errors; or one coordinator URL, zk://host:port[,host:port]/root
	// (the writers' coord), where the live writers are found: each batch
	// then goes to the next of them in turn (see upstreams.go).
	Upstream []string `yaml:"upstream"`
	// QueueDir holds the disk queue, the agent's id and tail positions.
	QueueDir string `yaml:"queue_dir"`
	// MaxQueueBytes bounds unshipped bytes, as they lie on the queue's
	// disk (compressed, with QueueCompress); beyond it apps get TRY_LATER.
	MaxQueueBytes config.ByteSize `yaml:"max_queue_bytes"`
	// QueueCompress compresses each Log call's entries in the queue
	// (Snappy) when that makes them smaller, while the queue holds at
	// least QueueCompressAbove unshipped bytes: a backlog (an upstream
	// outage, a slow writer) then takes ~6x fewer bytes of disk and of
	// max_queue_bytes for JSON lines, while an agent whose shipping keeps
	// up spends no CPU on it (its batches are read back from memory).
	QueueCompress bool `yaml:"queue_compress"`
	// QueueCompressAbove is that backlog, at most half of
	// max_queue_bytes; 0 compresses every call.
	QueueCompressAbove config.ByteSize `yaml:"queue_compress_above"`
	// MaxMessageBytes bounds one tailed line; a longer one is split into
	// pieces of this size. It does not apply to Scribe entries, which are
	// taken whatever their size: the call size bounds them (a stock
	// client has no way to split an entry, so refusing one would lose it).
	MaxMessageBytes config.ByteSize `yaml:"max_message_bytes"`
	// BatchBytes bounds one LogBatch sent upstream (its entries'
	// diskqueue.RecordSize, uncompressed, which exceeds their Thrift
	// encoding; not the bytes they take in the queue).
	BatchBytes config.ByteSize `yaml:"batch_bytes"`
	// BatchEntries bounds the entries of one LogBatch.
	BatchEntries int `yaml:"batch_entries"`
	// MaxInFlight bounds the batches sent upstream and not yet
	// acknowledged, each on a connection of its own; 1 sends one batch at
	// a time, in order. Batches in flight together also stay within
	// segment.SeqWindow sequence numbers of each other.
	MaxInFlight int `yaml:"max_in_flight"`
	// SeqWindow bounds the sequence numbers batches in flight together
	// span: a batch other than the oldest in flight is sent only while it
	// ends at most this far past the oldest's first. Puma tells re-sends
	// apart only that far below the highest number it has seen, so this
	// must not exceed the seen-window of any Puma the entries reach:
	// segment.SeqWindowV1 (65,536, the default) for every version,
	// segment.SeqWindow (131,072) for Pumas of this version and later.
	SeqWindow int `yaml:"seq_window"`
	// SegmentBytes is the size of the queue's segment files.
	SegmentBytes config.ByteSize `yaml:"segment_bytes"`
	// UpstreamTimeout bounds connecting to and one call on calligraphus.
	UpstreamTimeout config.Duration `yaml:"upstream_timeout"`
	// RetryMin and RetryMax bound the exponential backoff (with jitter)
	// between attempts to ship a batch, and between retries of a tailed
	// batch while the queue is full.
	RetryMin config.Duration `yaml:"retry_min"`
	RetryMax config.Duration `yaml:"retry_max"`
	// TailPollInterval is how often an idle tailed file is checked for
	// new lines, rotation and truncation.
	TailPollInterval config.Duration `yaml:"tail_poll_interval"`
	// TailRotateWait is how long a tailed file whose path names another
	// file now (rotated) is still read after it stopped growing: the app
	// writes to it until it reopens its log (logrotate signals it after
	// creating the new file). The new file is read after it, so its
	// lines wait this long at each rotation: keep it below the interval
	// between two rotations.
	TailRotateWait config.Duration `yaml:"tail_rotate_wait"`
	// Tail lists the files to follow, each by its path (not a pattern).
	Tail []TailConfig `yaml:"tail"`
	// TLS: when the process has TLS (tls.cert_file), the app-facing port
	// speaks it too, unless this is false (stock Scribe clients speak no
	// TLS). The link upstream uses the process's TLS either way.
	TLS bool `yaml:"tls"`
	// The Scribe port's limits: max_call_bytes, max_connections,
	// idle_timeout, read_timeout.
	thriftsrv.PortConfig `yaml:",inline"`
}

// The Thrift frame limit of Freeway's ingest ports; a batch must fit in one
// frame with room for its envelope.
const (
	frameLimit    = 16 << 20
	maxBatchBytes = frameLimit - 64<<10
	maxBatchCount = 1 << 20 // the container limit of writers before this version
	maxInFlight   = 64      // connections per agent to its upstream
)

// DefaultConfig returns the defaults: listen on 127.0.0.1:1463, ship to
// 127.0.0.1:1464.
func DefaultConfig() Config {
	return Config{
		Listen:             "127.0.0.1:1463",
		Upstream:           []string{"127.0.0.1:1464"},
		MaxQueueBytes:      1 << 30,
		QueueCompress:      true,
		QueueCompressAbove: 256 << 20,
		MaxMessageBytes:    1 << 20,
		BatchBytes:         1 << 20,
		BatchEntries:       10000,
		MaxInFlight:        4,
		SeqWindow:          segment.SeqWindowV1,
		SegmentBytes:       64 << 20,
		UpstreamTimeout:    config.Duration(30 * time.Second),
		RetryMin:           config.Duration(50 * time.Millisecond),
		RetryMax:           config.Duration(5 * time.Second),
		TailPollInterval:   config.Duration(250 * time.Millisecond),
		TailRotateWait:     config.Duration(5 * time.Second),
		TLS:                true,
		PortConfig:         thriftsrv.DefaultPortConfig(),
	}
}

// Validate checks the configuration. Each problem is a config.FieldError
// at its path relative to the agent's section ("batch_bytes"; the wiring
// places it under "agent", config.Under); all of them are joined.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, config.Errorf(key, format, args...))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "must be host:port, got %q", c.Listen)
	}
	if len(c.Upstream) == 0 {
		bad("upstream", "must list at least one calligraphus address")
	}
	if url, ok := CoordUpstream(c.Upstream); ok {
		if !strings.HasPrefix(url, "zk://") && !strings.HasPrefix(url, "inproc://") {
			bad("upstream", "a coordinator URL must be zk://host:port[,host:port]/root (or inproc://), got %q", url)
		}
	} else {
		for i, u := range c.Upstream {
			if _, _, err := net.SplitHostPort(u); err != nil {
				bad(fmt.Sprintf("upstream[%d]", i), "must be host:port or a coordinator URL (zk://host:port/root), got %q", u)
			}
		}
	}
	if c.MaxQueueBytes <= 0 {
		bad("max_queue_bytes", "must be positive")
	}
	if c.QueueCompressAbove < 0 {
		bad("queue_compress_above", "must not be negative (0: compress every call)")
	}
	if c.MaxMessageBytes <= 0 {
		bad("max_message_bytes", "must be positive")
	}
	switch {
	case c.BatchBytes <= 0:
		bad("batch_bytes", "must be positive")
	case c.BatchBytes > maxBatchBytes:
		bad("batch_bytes", "must be at most %s, below the 16MiB Thrift frame limit", config.ByteSize(maxBatchBytes))
	case c.MaxMessageBytes > c.BatchBytes:
		bad("max_message_bytes", "must not exceed agent.batch_bytes (%s), or a message could never be shipped", c.BatchBytes)
	}
	if c.BatchEntries <= 0 || c.BatchEntries > maxBatchCount {
		bad("batch_entries", "must be between 1 and %d", maxBatchCount)
	}
	if c.MaxInFlight < 1 || c.MaxInFlight > maxInFlight {
		bad("max_in_flight", "must be between 1 and %d", maxInFlight)
	}
	if c.SeqWindow < 1 || c.SeqWindow > segment.SeqWindow {
		bad("seq_window", "must be between 1 and %d (Puma's seen-window)", segment.SeqWindow)
	}
	if c.SegmentBytes < 4<<10 {
		bad("segment_bytes", "must be at least 4KiB")
	}
	if c.UpstreamTimeout <= 0 {
		bad("upstream_timeout", "must be positive")
	}
	if c.RetryMin <= 0 {
		bad("retry_min", "must be positive")
	}
	if c.RetryMax < c.RetryMin {
		bad("retry_max", "must be at least agent.retry_min (%s)", c.RetryMin)
	}
	if c.TailPollInterval <= 0 {
		bad("tail_poll_interval", "must be positive")
	}
	if c.TailRotateWait < 0 {
		bad("tail_rotate_wait", "must not be negative")
	}
	seen := map[string]bool{}
	for i, t := range c.Tail {
		key := fmt.Sprintf("tail[%d]", i)
		if t.Path == "" {
			bad(key+".path", "must be set")
		} else if strings.ContainsAny(t.Path, "*?[") {
			// A pattern would be waited for as a file that never appears,
			// and its files never read, without a word.
			bad(key+".path", "%s is a pattern; a tail entry follows one file: list each file", t.Path)
		} else if p := filepath.Clean(t.Path); seen[p] {
			bad(key+".path", "%s is tailed twice", t.Path)
		} else {
			seen[p] = true
		}
		if t.Category == "" {
			bad(key+".category", "must be set")
		}
	}
	if err := c.PortConfig.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
