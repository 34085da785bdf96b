package hbasestore

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/thrift/gen/hbase"
)

// admin is call for admin operations, retried with a bounded backoff while
// the master is initializing.
func (s *Store) admin(ctx context.Context, op, name string, fn func(context.Context, *hbase.THBaseServiceClient) error) error {
	deadline := time.Now().Add(s.initWait)
	bo := backoff.New(s.backoffMin, s.backoffMax)
	for {
		err := s.call(ctx, op, name, true, fn)
		if err == nil || !masterStarting(err) {
			return err
		}
		delay := bo.Next()
		if time.Now().Add(delay).After(deadline) {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("hbase %s %s: %w (while the master was initializing)", op, name, ctx.Err())
		}
	}
}

func (s *Store) tableState(table string) *tableState {
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := s.tables[table]
	if ts == nil {
		ts = &tableState{lock: make(chan struct{}, 1)}
		s.tables[table] = ts
	}
	return ts
}

// ensureTable reports whether table exists, creating it first if create is
// set. Reads do not create tables: a missing table reads as empty.
func (s *Store) ensureTable(ctx context.Context, table string, create bool) (bool, error) {
	ts := s.tableState(table)
	if ts.ready.Load() {
		return true, nil
	}
	select {
	case ts.lock <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-ts.lock }()
	if ts.ready.Load() {
		return true, nil
	}
	name, tn := s.dataName(table), s.adminName(table)
	var exists bool
	err := s.admin(ctx, "check table", name, func(ctx context.Context, c *hbase.THBaseServiceClient) (err error) {
		exists, err = c.TableExists(ctx, tn)
		return err
	})
	if err != nil {
		return false, err
	}
	if !exists {
		if !create {
			return false, nil
		}
		err := s.admin(ctx, "create table", name, func(ctx context.Context, c *hbase.THBaseServiceClient) error {
			return c.CreateTable(ctx, s.tableDescriptor(tn))
		})
		// Another client (or our own retry after a lost reply) created it.
		if err != nil && !tableExistsErr(err) {
			return false, err
		}
	}
	ts.ready.Store(true)
	return true, nil
}

func (s *Store) tableDescriptor(tn *hbase.TTableName) *hbase.TTableDescriptor {
	return &hbase.TTableDescriptor{
		TableName: tn,
		Columns: []*hbase.TColumnFamilyDescriptor{{
			Name:        s.family,
			MaxVersions: thrift.Int32Ptr(Versions),
		}},
	}
}

// noteError forgets that table exists when HBase says it does not (dropped
// by an operator): the next write creates it again.
func (s *Store) noteError(table string, err error) {
	if tableNotFound(err) {
		s.tableState(table).ready.Store(false)
	}
}

// DropTable disables and deletes table and all it holds; a table that
// does not exist is no error. Freeway itself never drops a table: this is
// for tools and tests that clean up the tables they made (bench/run drops
// its runs' tables on the real engines).
func (s *Store) DropTable(ctx context.Context, table string) error {
	if err := s.checkTable(table); err != nil {
		return err
	}
	name, tn := s.dataName(table), s.adminName(table)
	var exists bool
	err := s.admin(ctx, "check table", name, func(ctx context.Context, c *hbase.THBaseServiceClient) (err error) {
		exists, err = c.TableExists(ctx, tn)
		return err
	})
	if err != nil || !exists {
		return err
	}
	err = s.admin(ctx, "disable table", name, func(ctx context.Context, c *hbase.THBaseServiceClient) error {
		return c.DisableTable(ctx, tn)
	})
	if err != nil && !strings.Contains(messageOf(err), "TableNotEnabledException") {
		return err
	}
	s.tableState(table).ready.Store(false)
	err = s.admin(ctx, "delete table", name, func(ctx context.Context, c *hbase.THBaseServiceClient) error {
		return c.DeleteTable(ctx, tn)
	})
	if err != nil && tableNotFound(err) { // dropped meanwhile by someone else
		return nil
	}
	return err
}

// tableState remembers that a table is known to exist, so the check (an
// admin call through the master) is made once per table and process.
type tableState struct {
	lock  chan struct{} // held while checking or creating the table
	ready atomic.Bool
}
