// Package version is Freeway's one version string. `freeway version`,
// fb303's getVersion on the Scribe ports, the "freeway started" log line
// and the freeway_build_info metric all read it, through the wiring
// (freeway.Options.Version, then each component's Deps.Version).
package version

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Dev is the version of a binary built from a work tree (go build, go
// run, go test), which has no module version.
const Dev = "dev"

// Get returns the module version the binary was built from (as by go
// install module@v1.2.3), or Dev.
func Get() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return Dev
}

// Or returns v, or Get() when v is empty: what a component reports when
// the wiring gave it no version.
func Or(v string) string {
	if v == "" {
		return Get()
	}
	return v
}

// BuildInfo returns the freeway_build_info gauge: always 1, labelled
// with the version v and the Go version, so that a dashboard can tell
// which build each process runs.
func BuildInfo(v string) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "freeway_build_info",
		Help:        "Always 1; its labels say which build runs (version, Go version).",
		ConstLabels: prometheus.Labels{"version": v, "goversion": runtime.Version()},
	})
	g.Set(1)
	return g
}
