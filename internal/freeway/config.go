package freeway

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/freeway-dev/freeway/calligraphus"
	"github.com/freeway-dev/freeway/copier"
	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/backends"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/puma"
	"github.com/freeway-dev/freeway/scribe"
	"github.com/freeway-dev/freeway/serving"
)

// Config is the whole YAML file. Every key is optional: a file holding
// only an apps: list runs with the defaults.
type Config struct {
	// DataDir holds the embedded backends and the agent's queue.
	DataDir string `yaml:"data_dir"`
	// DFS, Store and Coord are backend URLs; "" means the embedded one
	// under DataDir.
	DFS   string `yaml:"dfs"`
	Store string `yaml:"store"`
	Coord string `yaml:"coord"`
	// DFSRetention: a published segment is deleted once every consumer of
	// its bucket (Puma, the copier) is past it and it is older than this
	// (internal/retention); 0 keeps every segment.
	DFSRetention config.Duration `yaml:"dfs_retention"`
	// Buckets is the bucket count of categories not declared in categories.
	Buckets    int                       `yaml:"buckets"`
	Categories map[string]CategoryConfig `yaml:"categories"`
	Log        LogConfig                 `yaml:"log"`
	// MaxInflightBytes bounds the bytes that the calls of all the
	// process's Thrift ports hold at once (a call takes twice its size,
	// as it arrives); calls beyond it wait a little, then are answered
	// TRY_LATER.
	MaxInflightBytes config.ByteSize `yaml:"max_inflight_bytes"`
	// TLS secures every listener of the process and its clients (agent
	// → writer) when cert_file is set; see internal/auth.
	TLS auth.TLSConfig `yaml:"tls"`
	// Auth holds the bearer tokens of the query API and the admin
	// endpoints.
	Auth auth.Config `yaml:"auth"`
	// Advertise is the host name or IP other processes reach this one
	// by: a listener bound to 0.0.0.0 or [::] publishes it, with its
	// port, in coord (writers, Puma nodes); required for such a
	// listener. "": each listener publishes its bind address.
	Advertise string `yaml:"advertise"`

	Agent        scribe.Config       `yaml:"agent"`
	Calligraphus calligraphus.Config `yaml:"calligraphus"`
	Puma         puma.Config         `yaml:"puma"`
	Serving      serving.Config      `yaml:"serving"`
	Copier       copier.Config       `yaml:"copier"`

	Apps []apps.Spec `yaml:"apps"`
}

// CategoryConfig declares how a category is bucketed.
type CategoryConfig struct {
	Buckets int `yaml:"buckets"`
	// ShardKey: the fields entries are routed by; default the shard_key
	// (or group_by) of the first app consuming the category.
	ShardKey []string `yaml:"shard_key"`
}

// LogConfig configures Freeway's own logs.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// DefaultConfig returns the defaults of every key.
func DefaultConfig() Config {
	return Config{
		DataDir:          "freeway-data",
		DFSRetention:     config.Duration(7 * 24 * time.Hour),
		Buckets:          4,
		Log:              LogConfig{Level: "info", Format: "text"},
		MaxInflightBytes: thriftsrv.DefaultBudget,
		Agent:            scribe.DefaultConfig(),
		Calligraphus:     calligraphus.DefaultConfig(),
		Puma:             puma.DefaultConfig(),
		Serving:          serving.DefaultConfig(),
		Copier:           copier.DefaultConfig(),
	}
}

// LoadFile reads and validates a config file over the defaults.
func LoadFile(path string) (Config, error) {
	cfg := DefaultConfig()
	data, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("read config: %w", err)
	}
	err = config.Decode(path, data, &cfg, cfg.Validate)
	return cfg, err
}

// Resolve fills what derives from DataDir. Call after flags are applied.
func (c *Config) Resolve() {
	abs, err := filepath.Abs(c.DataDir)
	if err == nil {
		c.DataDir = abs
	}
	if c.DFS == "" {
		c.DFS = "file://" + filepath.ToSlash(filepath.Join(c.DataDir, "dfs"))
	}
	if c.Store == "" {
		c.Store = "bolt://" + filepath.ToSlash(filepath.Join(c.DataDir, "store.db"))
	}
	if c.Coord == "" {
		c.Coord = "inproc://"
	}
	if c.Agent.QueueDir == "" {
		c.Agent.QueueDir = filepath.Join(c.DataDir, "agent")
	}
}

// Validate checks everything, apps included, and reports the first error
// at its YAML path.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return config.Errorf("$.data_dir", "must not be empty")
	}
	if c.Buckets < 1 || c.Buckets > 4096 {
		return config.Errorf("$.buckets", "must be between 1 and 4096")
	}
	if d := c.DFSRetention.D(); d < 0 || d > 0 && d < time.Second {
		return config.Errorf("$.dfs_retention", "must be 0 (keep every segment) or at least 1s")
	}
	// Empty is the embedded backend under data_dir (Resolve).
	for _, b := range []struct {
		path, url string
		check     func(string) error
	}{
		{"$.dfs", c.DFS, backends.CheckDFS}, {"$.store", c.Store, backends.CheckStore}, {"$.coord", c.Coord, backends.CheckCoord},
	} {
		if b.url == "" {
			continue
		}
		if err := b.check(b.url); err != nil {
			return config.Errorf(b.path, "%v", err)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return config.Errorf("$.log.level", "unknown level %q (want debug, info, warn or error)", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return config.Errorf("$.log.format", "unknown format %q (want text or json)", c.Log.Format)
	}
	// Each section validates at paths relative to itself; tls and auth,
	// which belong to the process, at their own.
	for _, s := range []struct {
		path string
		v    interface{ Validate() error }
	}{
		{"$.tls", &c.TLS}, {"$.auth", &c.Auth},
		{"$.agent", &c.Agent}, {"$.calligraphus", &c.Calligraphus}, {"$.puma", &c.Puma}, {"$.serving", &c.Serving}, {"$.copier", &c.Copier},
	} {
		if err := s.v.Validate(); err != nil {
			return config.Under(s.path, err)
		}
	}
	// The sections check their own keys but for these addresses, which
	// otherwise failed only at the start, with no position in the file.
	for _, l := range []struct{ path, addr string }{
		{"$.calligraphus.listen", c.Calligraphus.Listen}, {"$.puma.listen", c.Puma.Listen},
		{"$.serving.listen", c.Serving.Listen}, {"$.serving.thrift_listen", c.Serving.ThriftListen},
	} {
		if l.addr == "" {
			continue // none, or refused by its section
		}
		if _, p, err := net.SplitHostPort(l.addr); err != nil || !validPort(p) {
			return config.Errorf(l.path, "must be host:port (such as 127.0.0.1:8080; port 0 picks a free one), got %q", l.addr)
		}
	}
	largest, port := c.Agent.MaxCallBytes, "agent"
	if c.Calligraphus.MaxCallBytes > largest {
		largest, port = c.Calligraphus.MaxCallBytes, "calligraphus"
	}
	if need := thriftsrv.Charge(int64(largest) + thriftsrv.Envelope); int64(c.MaxInflightBytes) < need {
		return &config.FieldError{Path: "$.max_inflight_bytes", Also: []string{"$." + port + ".max_call_bytes"},
			Msg: fmt.Sprintf("must be at least %v, what the largest call takes (twice %s.max_call_bytes %v and its envelope), or such a call could never be served", config.ByteSize(need), port, largest)}
	}
	// A writer answers an entry it forwards once the holder has it, or
	// fails it after forward_timeout; an agent that gives the call up
	// first sends the batch again elsewhere while the first copy may still
	// be written. One file configures both ends (freeway all, or the file
	// every process of a deployment reads): keep them ordered.
	if fwd, up := c.Calligraphus.ForwardTimeout, c.Agent.UpstreamTimeout; fwd >= up {
		return &config.FieldError{Path: "$.calligraphus.forward_timeout", Also: []string{"$.agent.upstream_timeout"},
			Msg: fmt.Sprintf("%v must be below agent.upstream_timeout %v: an agent would give up a call that a writer is still forwarding, and send the batch again", fwd, up)}
	}
	// A writer answers a call over its max_call_bytes TRY_LATER, and an
	// agent sends the same batch again until it is taken: a batch of
	// agent.batch_bytes, or of one app's entry of up to
	// agent.max_call_bytes, that no writer takes stops the agent's queue
	// for good. Keep them ordered.
	for _, k := range []struct {
		key string
		v   config.ByteSize
		why string
	}{
		{"batch_bytes", c.Agent.BatchBytes, "a batch"},
		{"max_call_bytes", c.Agent.MaxCallBytes, "an app's entry"},
	} {
		if m := c.Calligraphus.MaxCallBytes; k.v > m {
			return &config.FieldError{Path: "$.agent." + k.key, Also: []string{"$.calligraphus.max_call_bytes"},
				Msg: fmt.Sprintf("%v must not exceed calligraphus.max_call_bytes %v: %s larger than a writer takes would be refused at every retry, and the agent's queue would stop behind it", k.v, m, k.why)}
		}
	}
	names := map[string]int{}
	for i := range c.Apps {
		path := fmt.Sprintf("$.apps[%d]", i)
		if _, err := apps.Compile(c.Apps[i], path); err != nil {
			return err
		}
		if j, dup := names[c.Apps[i].Name]; dup {
			return config.Errorf(path+".name", "app name %q is used by apps[%d] too", c.Apps[i].Name, j)
		}
		names[c.Apps[i].Name] = i
	}
	cats := make([]string, 0, len(c.Categories))
	for name := range c.Categories {
		cats = append(cats, name)
	}
	sort.Strings(cats)
	for _, name := range cats {
		cc := c.Categories[name]
		path := config.Key("$.categories", name)
		if !layout.ValidCategory(name) {
			return config.Errorf(path, "a category must not be empty")
		}
		if cc.Buckets < 0 || cc.Buckets > 4096 {
			return config.Errorf(path+".buckets", "must be between 1 and 4096")
		}
		if len(cc.ShardKey) > 0 {
			app := c.firstApp(name)
			if app == nil {
				return config.Errorf(path+".shard_key", "no app consumes category %s, so there is no format to read a shard key with", name)
			}
			if err := app.CheckFields(cc.ShardKey); err != nil {
				return config.Errorf(path+".shard_key", "%v", err)
			}
		}
	}
	return nil
}

// firstApp is the first app (in file order) consuming category.
func (c *Config) firstApp(category string) *apps.App {
	for i, s := range c.Apps {
		if s.Category == category {
			a, err := apps.Compile(s, fmt.Sprintf("$.apps[%d]", i))
			if err == nil {
				return a
			}
		}
	}
	return nil
}

// BucketsOf is the bucket count of a category (the components read
// Resolved.BucketsOf, the same rule).
func (c *Config) BucketsOf(category string) int {
	return bucketsOf(c.Categories, c.Buckets, category)
}

// bucketsOf is the rule: the category's declared buckets, else the
// default.
func bucketsOf(cats map[string]CategoryConfig, def int, category string) int {
	if cc, ok := cats[category]; ok && cc.Buckets > 0 {
		return cc.Buckets
	}
	return def
}

// validPort reports whether p is a port number a listener can bind.
func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 0 && n <= 65535
}

// CompiledApps compiles the apps (already validated).
func (c *Config) CompiledApps() ([]*apps.App, error) {
	r, err := c.Resolved()
	if err != nil {
		return nil, err
	}
	return r.Apps, nil
}

// Routes says how calligraphus buckets each category (Resolved.Routes).
func (c *Config) Routes() (map[string]calligraphus.Route, error) {
	r, err := c.Resolved()
	if err != nil {
		return nil, err
	}
	return r.Routes, nil
}
