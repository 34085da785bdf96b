// Package freeway wires Freeway's components into one process: it opens
// the backends named in the configuration, builds the components a target
// needs in dependency order, and runs them together. `freeway all` runs
// every component on embedded backends; `freeway puma` (say) runs one
// against whatever backends the URLs name.
//
// The wiring is data: modules.go lists each module with its dependencies
// and how to build it, and each target is a list of modules.
package freeway
