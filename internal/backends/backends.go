// Package backends opens the dfs, store and coord named by URL. It is the
// only package that knows every implementation; components see only the
// contracts.
//
//	dfs:   file:///path                 local directory (embedded default)
//	       hdfs://host:port[,host:port]/root[?user=NAME]
//	store: bolt:///path/to/file.db      embedded bbolt file (default)
//	       hbase://host:port[/table-prefix]   HBase through its Thrift2 gateway
//	coord: inproc://                    in-process (default; one process only)
//	       zk://host:port[,host:port]/root[?session_timeout=10s]
package backends

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/coord/zkcoord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/hdfs"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
	"github.com/freeway-dev/freeway/internal/store/hbasestore"
)

func scheme(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("bad URL %q: %w", raw, err)
	}
	if u.Scheme == "" {
		return "", fmt.Errorf("bad URL %q: no scheme", raw)
	}
	return strings.ToLower(u.Scheme), nil
}

// localPath reads the path of a file:// or bolt:// URL; relative paths
// ("file://./data") are allowed for convenience.
func localPath(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	p := u.Path
	if u.Host != "" {
		p = u.Host + p // file://./data, file://data
	}
	if p == "" {
		return "", fmt.Errorf("bad URL %q: no path", raw)
	}
	return filepath.FromSlash(p), nil
}

// OpenDFS opens the file system at raw.
func OpenDFS(raw string) (dfs.FS, error) {
	s, err := scheme(raw)
	if err != nil {
		return nil, fmt.Errorf("open dfs: %w", err)
	}
	switch s {
	case "file":
		p, err := localPath(raw)
		if err != nil {
			return nil, fmt.Errorf("open dfs: %w", err)
		}
		return localfs.New(p)
	case "hdfs":
		return hdfs.Open(raw)
	}
	return nil, fmt.Errorf("open dfs %q: unknown scheme %q (want file:// or hdfs://)", raw, s)
}

// OpenStore opens the store at raw. log and reg (either may be nil) get
// what the embedded store reports: a damaged file moved aside, and
// freeway_store_damaged_total.
func OpenStore(raw string, log *slog.Logger, reg prometheus.Registerer) (store.Store, error) {
	s, err := scheme(raw)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	switch s {
	case "bolt":
		p, err := localPath(raw)
		if err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		return boltstore.OpenWith(p, boltstore.Options{Log: log, Metrics: reg})
	case "hbase":
		return hbasestore.Open(raw)
	}
	return nil, fmt.Errorf("open store %q: unknown scheme %q (want bolt:// or hbase://)", raw, s)
}

// CheckDFS, CheckStore and CheckCoord report why OpenDFS, OpenStore and
// Open would refuse raw for its form (nil if they would not), without
// opening anything: a configuration check refuses a URL they could never
// open (a path without file://, a zk:// URL without its root) before
// anything starts, at its key.
func CheckDFS(raw string) error {
	s, err := scheme(raw)
	if err != nil {
		return err
	}
	switch s {
	case "file":
		_, err := localPath(raw)
		return err
	case "hdfs":
		return hdfs.CheckURL(raw)
	}
	return fmt.Errorf("unknown scheme %q in %q (want file:// or hdfs://)", s, raw)
}

// CheckStore: see CheckDFS.
func CheckStore(raw string) error {
	s, err := scheme(raw)
	if err != nil {
		return err
	}
	switch s {
	case "bolt":
		_, err := localPath(raw)
		return err
	case "hbase":
		return hbasestore.CheckURL(raw)
	}
	return fmt.Errorf("unknown scheme %q in %q (want bolt:// or hbase://)", s, raw)
}

// CheckCoord: see CheckDFS.
func CheckCoord(raw string) error {
	s, err := scheme(raw)
	if err != nil {
		return err
	}
	switch s {
	case "inproc":
		return nil
	case "zk":
		return zkcoord.CheckURL(raw)
	}
	return fmt.Errorf("unknown scheme %q in %q (want inproc:// or zk://)", s, raw)
}

// RemoveDFS deletes the file system at raw, its root and everything under
// it; a root that does not exist is no error. Freeway itself never does
// (retention deletes segments one by one): it is for tools and tests that
// remove what they made, such as bench/run's roots on the real engines.
func RemoveDFS(raw string) error {
	s, err := scheme(raw)
	if err != nil {
		return fmt.Errorf("remove dfs: %w", err)
	}
	switch s {
	case "file":
		p, err := localPath(raw)
		if err != nil {
			return fmt.Errorf("remove dfs: %w", err)
		}
		return os.RemoveAll(p)
	case "hdfs":
		fsys, err := hdfs.Open(raw)
		if err != nil {
			return err
		}
		err = fsys.RemoveAll("")
		if cerr := fsys.Close(); err == nil {
			err = cerr
		}
		return err
	}
	return fmt.Errorf("remove dfs %q: unknown scheme %q (want file:// or hdfs://)", raw, s)
}

// DropTables drops tables (store table names, without the URL's prefix)
// of the HBase store at raw, and all they hold; a table that does not
// exist is no error. Like RemoveDFS, it is for tools and tests.
func DropTables(ctx context.Context, raw string, tables ...string) error {
	s, err := scheme(raw)
	if err != nil {
		return fmt.Errorf("drop tables: %w", err)
	}
	if s != "hbase" {
		return fmt.Errorf("drop tables of %q: only an hbase:// store", raw)
	}
	st, err := hbasestore.Open(raw)
	if err != nil {
		return err
	}
	defer func() { _ = st.Close() }() // Close only returns the pool's connections
	for _, t := range tables {
		if err := st.DropTable(ctx, t); err != nil {
			return err
		}
	}
	return nil
}

// Coords opens coordinators. In-process coordinators opened from one
// Coords share a hub, so the components of one process coordinate with
// each other.
type Coords struct {
	hub *inproc.Hub
	log *slog.Logger
}

// NewCoords returns an opener whose in-process coordinators share a hub.
func NewCoords(log *slog.Logger) *Coords { return &Coords{hub: inproc.NewHub(), log: log} }

// Open opens the coordinator at raw.
func (c *Coords) Open(raw string) (coord.Coord, error) {
	s, err := scheme(raw)
	if err != nil {
		return nil, fmt.Errorf("open coord: %w", err)
	}
	switch s {
	case "inproc":
		return c.hub.Session(), nil
	case "zk":
		return zkcoord.Open(raw, c.log)
	}
	return nil, fmt.Errorf("open coord %q: unknown scheme %q (want inproc:// or zk://)", raw, s)
}
