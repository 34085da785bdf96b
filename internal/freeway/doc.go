// Package freeway wires Freeway's components into one process: it opens
// the backends named in the configuration, builds the components a target
// needs in dependency order, and runs them together. `freeway all` runs
// every component on embedded backends; `freeway puma` (say) runs one
// against whatever backends the URLs name.
//
// The wiring is data: modules.go lists how to build each module and
// each target's modules; resolved.go what each module needs built first
// (moduleNeeds: start order follows it, stop order is its reverse) and
// the configuration resolved once (Resolved: compiled apps, the apps of
// each category, bucket counts, routes), the one value every module
// reads. Segment
// retention (internal/retention) is a module of the targets all, puma
// and copier (and of its own target): its consumers are built here from
// the configuration (Puma for the categories of the apps, the copier for
// the categories it copies). Backfill is `freeway copier --backfill`.
//
// Every component is New(cfg, deps) and Run(ctx), and every Deps embeds
// the same component.Common, built once here (Process.common): the
// logger, the metrics registry, the clock, the version (internal/version)
// and the per-process Shared bundle below. The components validate their
// sections at relative paths, which Config.Validate places under the
// section's key (config.Under).
//
// What the components of a process share is created here: the backends,
// the metrics registry, the in-flight byte budget of every Thrift port
// (max_inflight_bytes), and the TLS and tokens of internal/auth (tls.*,
// auth.*: every listener speaks TLS when the process has a certificate,
// the agent dials upstream with it, the HTTP ports and the Thrift query
// port check the tokens). The Scribe ports' fb303 getOptions reports the
// process's effective configuration (Options, without secrets: files
// appear as paths); its reinitialize and shutdown calls, and POST
// /admin/reload and /admin/shutdown on the HTTP port, reach the command
// through Options' hooks, which restarts the process with a reloaded
// file or stops it; the command's counts of those reloads (Reloads,
// freeway_config_reloads_total) are registered in every process it
// builds, so that they outlive the restarts. With an admin token configured the fb303 calls,
// which cannot carry it, are refused and only the HTTP ones work.
package freeway
