// Package freeway wires Freeway's components into one process: it opens
// the backends named in the configuration, builds the components a target
// needs in dependency order, and runs them together. `freeway all` runs
// every component on embedded backends; `freeway puma` (say) runs one
// against whatever backends the URLs name.
//
// The wiring is data: modules.go lists each module with its dependencies
// and how to build it, and each target is a list of modules.
//
// What the components of a process share is created here: the backends,
// the metrics registry, and the in-flight byte budget of every Thrift
// port (max_inflight_bytes). The Scribe ports' fb303 getOptions reports
// the process's effective configuration (Options, without secrets); its
// reinitialize and shutdown calls reach the command through Options'
// hooks, which restarts the process with a reloaded file or stops it.
package freeway
