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
}

// DefaultConfig returns the defaults; Destination is empty (disabled).
func DefaultConfig() Config {
	return Config{
		Interval:         config.Duration(2 * time.Second),
		Concurrency:      4,
		Verify:           VerifyChecksum,
		Table:            "copier",
		ProgressInterval: config.Duration(10 * time.Second),
	}
}

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
	}
	return nil
}
