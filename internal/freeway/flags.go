package freeway

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/freeway-dev/freeway/internal/config"
)

// flagDef is a command-line flag that overrides one configuration key.
// Flags are named after their YAML keys.
type flagDef struct {
	name    string
	usage   string
	modules []string // nil: every target
	field   func(c *Config) any
}

func flagDefs() []flagDef {
	return []flagDef{
		{"data-dir", "directory of the embedded backends and the agent's queue", nil, func(c *Config) any { return &c.DataDir }},
		{"dfs", "bucket file system URL: file:///path or hdfs://host:port/root (default file://<data-dir>/dfs)", nil, func(c *Config) any { return &c.DFS }},
		{"store", "checkpoint store URL: bolt:///path or hbase://host:port[/prefix] (default bolt://<data-dir>/store.db)", nil, func(c *Config) any { return &c.Store }},
		{"coord", "coordination URL: inproc:// or zk://host:port[,host:port]/root (default inproc://)", nil, func(c *Config) any { return &c.Coord }},
		{"buckets", "buckets of categories not declared under categories:", nil, func(c *Config) any { return &c.Buckets }},
		{"log.level", "log level: debug, info, warn, error", nil, func(c *Config) any { return &c.Log.Level }},
		{"log.format", "log format: text or json", nil, func(c *Config) any { return &c.Log.Format }},
		{"tls.cert-file", "PEM certificate of the process: TLS on every listener and client (with --tls.key-file)", nil, func(c *Config) any { return &c.TLS.CertFile }},
		{"tls.key-file", "PEM private key of --tls.cert-file", nil, func(c *Config) any { return &c.TLS.KeyFile }},
		{"tls.ca-file", "PEM CA certificates that servers and client certificates must chain to (default: system roots, no client certificates)", nil, func(c *Config) any { return &c.TLS.CAFile }},
		{"tls.client-auth", "require a client certificate of --tls.ca-file on every listener (mutual TLS; HTTP ports answer GET /healthz and /readyz without one)", nil, func(c *Config) any { return &c.TLS.ClientAuth }},
		{"auth.query-tokens-file", "file of bearer tokens (one a line) required on /api/v1/*, the web page, the Thrift query port and --puma.listen", nil, func(c *Config) any { return &c.Auth.QueryTokensFile }},
		{"auth.admin-token-file", "file of the admin bearer token required on /metrics, /debug/pprof/ and POST /admin/* (fb303 control calls are then refused)", nil, func(c *Config) any { return &c.Auth.AdminTokenFile }},
		{"advertise", "host name or IP other processes reach this one by: published, with the port, for a listener bound to 0.0.0.0 or [::] (required then)", nil, func(c *Config) any { return &c.Advertise }},
		{"agent.listen", "Scribe address apps log to", []string{Agent}, func(c *Config) any { return &c.Agent.Listen }},
		{"agent.upstream", "calligraphus addresses the agent ships to (comma-separated; in \"all\", this process's writer), or the writers' coordinator URL zk://host:port[,host:port]/root, where the live writers are found", []string{Agent}, func(c *Config) any { return &c.Agent.Upstream }},
		{"agent.tls", "with --tls.cert-file, the app-facing port speaks TLS too (false: plaintext, for stock Scribe clients)", []string{Agent}, func(c *Config) any { return &c.Agent.TLS }},
		{"agent.queue-dir", "the agent's durable queue (default <data-dir>/agent)", []string{Agent}, func(c *Config) any { return &c.Agent.QueueDir }},
		{"calligraphus.listen", "Scribe address of the writer", []string{Calligraphus}, func(c *Config) any { return &c.Calligraphus.Listen }},
		{"calligraphus.segment-max-age", "publish an open segment at the latest after this long", []string{Calligraphus}, func(c *Config) any { return &c.Calligraphus.SegmentMaxAge }},
		{"puma.checkpoint-interval", "how often each shard commits its state to the store", []string{Puma}, func(c *Config) any { return &c.Puma.CheckpointInterval }},
		{"puma.listen", "address of the Puma node's query listener, which serving's fan-out asks for the fresh state of the shards the node owns (\"\": none; the node then takes every shard it can)", []string{Puma}, func(c *Config) any { return &c.Puma.Listen }},
		{"puma.takeover-grace", "take a shard preferred for another Puma node once nobody has held it for this long", []string{Puma}, func(c *Config) any { return &c.Puma.TakeoverGrace }},
		{"serving.listen", "HTTP address of the query API, metrics and web page", []string{Serving}, func(c *Config) any { return &c.Serving.Listen }},
		{"serving.thrift-listen", "Thrift address of the query service (\"\" disables it)", []string{Serving}, func(c *Config) any { return &c.Serving.ThriftListen }},
		{"serving.fanout-timeout", "how long a standalone serving waits for a Puma node's partial state before answering its shards from the store (stale_shards)", []string{Serving}, func(c *Config) any { return &c.Serving.FanoutTimeout }},
		{"serving.pprof", "expose /debug/pprof/ on the HTTP address", []string{Serving}, func(c *Config) any { return &c.Serving.Pprof }},
		{"dfs-retention", "delete a segment once Puma and the copier are past it and it is older than this (0 keeps every segment)", []string{Retention}, func(c *Config) any { return &c.DFSRetention }},
		{"copier.destination", "dfs URL the copier copies published segments to (\"\" disables the copier in \"all\")", []string{Copier}, func(c *Config) any { return &c.Copier.Destination }},
	}
}

// Flags are the configuration flags of one target.
type Flags struct {
	set      *pflag.FlagSet
	defaults Config
	defs     []flagDef
}

// RegisterFlags adds the flags of target's modules to fs; their defaults
// are DefaultConfig's.
func RegisterFlags(fs *pflag.FlagSet, target string) *Flags {
	f := &Flags{set: fs, defaults: DefaultConfig()}
	mods := map[string]bool{}
	for _, m := range Targets()[target] {
		mods[m] = true
	}
	for _, d := range flagDefs() {
		wanted := d.modules == nil
		for _, m := range d.modules {
			wanted = wanted || mods[m]
		}
		if !wanted {
			continue
		}
		f.defs = append(f.defs, d)
		switch p := d.field(&f.defaults).(type) {
		case *string:
			fs.StringVar(p, d.name, *p, d.usage)
		case *[]string:
			fs.StringSliceVar(p, d.name, *p, d.usage)
		case *int:
			fs.IntVar(p, d.name, *p, d.usage)
		case *bool:
			fs.BoolVar(p, d.name, *p, d.usage)
		case *config.Duration:
			fs.Var(p, d.name, d.usage)
		default:
			panic(fmt.Sprintf("flag %s: unsupported type %T", d.name, p))
		}
	}
	return f
}

// Apply copies the flags given on the command line over cfg: flags win
// over the file.
func (f *Flags) Apply(cfg *Config) {
	byName := map[string]flagDef{}
	for _, d := range f.defs {
		byName[d.name] = d
	}
	f.set.Visit(func(fl *pflag.Flag) {
		d, ok := byName[fl.Name]
		if !ok {
			return
		}
		switch src := d.field(&f.defaults).(type) {
		case *string:
			*d.field(cfg).(*string) = *src
		case *[]string:
			*d.field(cfg).(*[]string) = append([]string(nil), *src...)
		case *int:
			*d.field(cfg).(*int) = *src
		case *bool:
			*d.field(cfg).(*bool) = *src
		case *config.Duration:
			*d.field(cfg).(*config.Duration) = *src
		}
	})
}
