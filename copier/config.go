package copier

import (
	"fmt"
	"net/url"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/store"
)

// Verification modes.
const (
	// VerifySize compares sizes: the copy's with the source's, and an
	// existing destination file's with the source's.
	VerifySize = "size"
	// VerifyChecksum also reads the copy back and compares its CRC-32C
	// with the source's, and compares an existing destination file's
	// contents with the source's before skipping it.
	VerifyChecksum = "checksum"
)

// Config configures a copier.
type Config struct {
	// Destination is the dfs URL of the second root (file:///...,
	// hdfs://...). Empty disables the copier: the wiring does not start it.
	// It must not be the source, nor inside it or around it (New refuses
	// it, however spelled).
	Destination string `yaml:"destination"`
	// Interval is how long the copier waits after a pass before looking
	// for new segments again, and how often a standby retries the lease.
	Interval config.Duration `yaml:"interval"`
	// Categories to copy (any non-empty Scribe categories); empty means
	// every category found in the source.
	Categories []string `yaml:"categories"`
	// ID names this copier in its lease and in the progress rows; default
	// host-pid.
	ID string `yaml:"id"`
	// Concurrency is how many buckets are copied at once. Within a bucket
	// segments are copied one at a time, in order.
	Concurrency int `yaml:"concurrency"`
	// Verify is "checksum" (default) or "size"; see VerifyChecksum.
	Verify string `yaml:"verify"`
	// Table is the store table holding progress. The lease that makes one
	// copier active at a time guards that table, so it is named after it.
	Table string `yaml:"table"`
	// ProgressInterval: a long pass (a backfill) logs its progress this
	// often.
	ProgressInterval config.Duration `yaml:"progress_interval"`
	// MergePeriod, when set, makes the copier merge each bucket's lines
	// into one file per period of arrival (MergedFile in
	// internal/layout: <category>/dt=YYYY-MM-DD/hh=HH/part-<bucket>)
	// instead of copying segments. Any whole number of minutes that
	// divides a day (1m, 5m, 1h, 24h); 0 (default) copies segments as
	// they are.
	MergePeriod config.Duration `yaml:"merge_period"`
	// MergeDelay is how long after its end a period is closed and
	// written: how late a segment may be published and still have its
	// lines in the period they arrived in. Lines of a segment published
	// later go to the period still open (see doc.go).
	MergeDelay config.Duration `yaml:"merge_delay"`
	// Compression of merged files: "none" (default) or "gzip" (the files
	// are named part-<bucket>.gz).
	Compression string `yaml:"compression"`
}

// Compression of merged files.
const (
	CompressionNone = "none"
	CompressionGzip = "gzip"
)

// DefaultConfig returns the defaults; Destination is empty (disabled).
func DefaultConfig() Config {
	return Config{
		Interval:         config.Duration(2 * time.Second),
		Concurrency:      4,
		Verify:           VerifyChecksum,
		Table:            "copier",
		ProgressInterval: config.Duration(10 * time.Second),
		MergeDelay:       config.Duration(2 * time.Minute),
		Compression:      CompressionNone,
	}
}

// Merging reports whether the copier merges periods rather than copying
// segments.
func (c *Config) Merging() bool { return c.MergePeriod > 0 }

// Enabled reports whether a destination is set.
func (c *Config) Enabled() bool { return c.Destination != "" }

// Validate checks the configuration; errors are config.FieldErrors at
// paths relative to the copier's section (the wiring places them under
// "copier", config.Under).
func (c *Config) Validate() error {
	if c.Destination != "" {
		u, err := url.Parse(c.Destination)
		if err != nil {
			return config.Errorf("destination", "not a URL: %v", err)
		}
		if u.Scheme != "file" && u.Scheme != "hdfs" {
			return config.Errorf("destination", "want a file:// or hdfs:// URL, not %q", c.Destination)
		}
	}
	for i, cat := range c.Categories {
		if !layout.ValidCategory(cat) {
			return config.Errorf(fmt.Sprintf("categories[%d]", i), "a category must not be empty")
		}
		for _, prev := range c.Categories[:i] {
			if prev == cat {
				return config.Errorf(fmt.Sprintf("categories[%d]", i), "category %q listed twice", cat)
			}
		}
	}
	switch {
	case c.Interval.D() < 10*time.Millisecond:
		return config.Errorf("interval", "must be at least 10ms")
	case c.Concurrency < 1 || c.Concurrency > 256:
		return config.Errorf("concurrency", "must be between 1 and 256")
	case c.Verify != VerifySize && c.Verify != VerifyChecksum:
		return config.Errorf("verify", "must be %q or %q, not %q", VerifyChecksum, VerifySize, c.Verify)
	case !store.ValidTable(c.Table):
		return config.Errorf("table", "%q is not a valid table name", c.Table)
	case c.ProgressInterval.D() < 100*time.Millisecond:
		return config.Errorf("progress_interval", "must be at least 100ms")
	case c.MergePeriod < 0:
		return config.Errorf("merge_period", "must not be negative")
	case c.MergePeriod > 0 && (c.MergePeriod.D()%time.Minute != 0 || (24*time.Hour)%c.MergePeriod.D() != 0):
		return config.Errorf("merge_period", "must be a whole number of minutes that divides a day (1m, 5m, 15m, 1h, 24h...), not %v", c.MergePeriod) // as written: "7m", not "7m0s"
	case c.MergeDelay < 0:
		return config.Errorf("merge_delay", "must not be negative")
	case c.Compression != CompressionNone && c.Compression != CompressionGzip:
		return config.Errorf("compression", "must be %q or %q, not %q", CompressionNone, CompressionGzip, c.Compression)
	}
	return nil
}
