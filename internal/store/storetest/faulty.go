package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/freeway-dev/freeway/internal/store"
)

// Op names a store call.
type Op string

// The calls of store.Store (String and Close aside).
const (
	OpPut           Op = "put"
	OpGet           Op = "get"
	OpScan          Op = "scan"
	OpDeleteNewer   Op = "delete-newer"
	OpDeleteBetween Op = "delete-between"
	OpDeleteUpTo    Op = "delete-up-to"
	OpCheckAndPut   Op = "check-and-put"
)

// Call is one call a Faulty store saw.
type Call struct {
	Op    Op
	Table string
	// Row is the row of a Get or a CheckAndPut, the first row of a Put,
	// the start of a Scan or a delete.
	Row    string
	Stop   string // Scan, Delete*: the end of the range
	Column string // CheckAndPut: the column compared
	// Rows is how many rows a Put writes.
	Rows int
	// From and To are the timestamps of a delete's range: (From, To] for
	// DeleteNewer (To: store.Latest) and DeleteBetween, [0, To] for
	// DeleteUpTo; Get and Scan: To is the as-of.
	From, To int64
}

// Changes reports whether the call changes the store.
func (c Call) Changes() bool { return c.Op != OpGet && c.Op != OpScan }

// Fault is what becomes of a call (Faulty.SetFault).
type Fault int

const (
	// Pass: the call is made.
	Pass Fault = iota
	// Crash: the process dies before the call: it is not made, and it and
	// every later call fail with ErrCrashed.
	Crash
	// Fail: the call fails cleanly, changing nothing.
	Fail
	// FailApplied: the call is made, and then fails all the same: a reply
	// lost after the server applied the call (a timeout after success).
	FailApplied
	// FailPartly: a Put or a delete is applied to the first half of its
	// rows only (at least one row when it has two or more), then fails:
	// HBase applies a multi-row call row by row.
	FailPartly
	// FailLate: the call fails now and is made later, when Land is
	// called: the HBase gateway applies a request it received after its
	// caller gave up on it. A CheckAndPut compares when it lands.
	FailLate
)

func (f Fault) String() string {
	switch f {
	case Pass:
		return "pass"
	case Crash:
		return "crash"
	case Fail:
		return "fail"
	case FailApplied:
		return "fail-applied"
	case FailPartly:
		return "fail-partly"
	case FailLate:
		return "fail-late"
	}
	return fmt.Sprintf("fault(%d)", int(f))
}

var (
	// ErrCrashed is what every call returns once a Crash fault struck.
	ErrCrashed = errors.New("storetest: the process crashed")
	// ErrFault is what a failed call returns.
	ErrFault = errors.New("storetest: injected store failure")
)

// Faulty wraps a store.Store for crash tests: every call is counted and
// passed, before it is made, to the fault function, which says what
// becomes of it (Fault). Calls made from a Scan's fn are calls of their
// own, counted in turn.
type Faulty struct {
	store.Store

	mu      sync.Mutex
	fault   func(n int, c Call) Fault
	calls   []Call
	crashed bool
	late    []func()
}

// NewFaulty wraps inner; until a fault function is set it only counts.
func NewFaulty(inner store.Store) *Faulty { return &Faulty{Store: inner} }

// SetFault sets the function every call passes through first, with the
// number of calls before it. It runs without f locked: it may call Land,
// or other stores.
func (f *Faulty) SetFault(fn func(n int, c Call) Fault) {
	f.mu.Lock()
	f.fault = fn
	f.mu.Unlock()
}

// Calls returns the calls seen so far.
func (f *Faulty) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Call(nil), f.calls...)
}

// Crashed reports whether a Crash fault struck.
func (f *Faulty) Crashed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.crashed
}

// Land makes the calls failed with FailLate so far, in the order they
// were failed, and reports how many there were.
func (f *Faulty) Land() int {
	f.mu.Lock()
	late := f.late
	f.late = nil
	f.mu.Unlock()
	for _, fn := range late {
		fn()
	}
	return len(late)
}

// before counts c and returns what becomes of it.
func (f *Faulty) before(c Call) Fault {
	f.mu.Lock()
	if f.crashed {
		f.mu.Unlock()
		return Crash
	}
	n := len(f.calls)
	f.calls = append(f.calls, c)
	fn := f.fault
	f.mu.Unlock()
	if fn == nil {
		return Pass
	}
	what := fn(n, c)
	if what == Crash {
		f.mu.Lock()
		f.crashed = true
		f.mu.Unlock()
	}
	if !c.Changes() && what > Fail {
		what = Fail // a read that failed changed nothing, whenever it was made
	}
	return what
}

// faulted is the error of a call that became what: nil for Pass.
func faulted(what Fault) error {
	switch what {
	case Pass:
		return nil
	case Crash:
		return ErrCrashed
	}
	return ErrFault
}

// later keeps fn for Land.
func (f *Faulty) later(fn func()) {
	f.mu.Lock()
	f.late = append(f.late, fn)
	f.mu.Unlock()
}

// Put implements store.Store.
func (f *Faulty) Put(ctx context.Context, table string, cells []store.Cell) error {
	rows := putRows(cells)
	c := Call{Op: OpPut, Table: table, Rows: len(rows)}
	if len(cells) > 0 {
		c.Row = cells[0].Row
	}
	switch what := f.before(c); what {
	case Pass:
		return f.Store.Put(ctx, table, cells)
	case FailApplied:
		_ = f.Store.Put(ctx, table, cells)
	case FailPartly:
		// The cells of the first half of the rows.
		keep := map[string]bool{}
		for _, r := range rows[:len(rows)/2] {
			keep[r] = true
		}
		var part []store.Cell
		for _, c := range cells {
			if keep[c.Row] {
				part = append(part, c)
			}
		}
		_ = f.Store.Put(ctx, table, part)
	case FailLate:
		kept := cloneCells(cells)
		f.later(func() { _ = f.Store.Put(context.Background(), table, kept) })
	default:
		return faulted(what)
	}
	return ErrFault
}

// cloneCells is a copy of cells that shares nothing with them: the
// caller may reuse what it passed once the call returned.
func cloneCells(cells []store.Cell) []store.Cell {
	out := make([]store.Cell, len(cells))
	for i, c := range cells {
		c.Value = append([]byte{}, c.Value...)
		out[i] = c
	}
	return out
}

// putRows lists the rows of cells, each once, in the order they come.
func putRows(cells []store.Cell) []string {
	seen := map[string]bool{}
	var rows []string
	for _, c := range cells {
		if !seen[c.Row] {
			seen[c.Row] = true
			rows = append(rows, c.Row)
		}
	}
	return rows
}

// Get implements store.Store.
func (f *Faulty) Get(ctx context.Context, table, row string, asOf int64) ([]store.Cell, error) {
	if err := faulted(f.before(Call{Op: OpGet, Table: table, Row: row, To: asOf})); err != nil {
		return nil, err
	}
	return f.Store.Get(ctx, table, row, asOf)
}

// Scan implements store.Store.
func (f *Faulty) Scan(ctx context.Context, table, start, stop string, asOf int64, fn func(row string, cells []store.Cell) error) error {
	if err := faulted(f.before(Call{Op: OpScan, Table: table, Row: start, Stop: stop, To: asOf})); err != nil {
		return err
	}
	return f.Store.Scan(ctx, table, start, stop, asOf, fn)
}

// DeleteNewer implements store.Store.
func (f *Faulty) DeleteNewer(ctx context.Context, table, start, stop string, ts int64) error {
	c := Call{Op: OpDeleteNewer, Table: table, Row: start, Stop: stop, From: ts, To: store.Latest}
	return f.delete(ctx, c, func(ctx context.Context, start, stop string) error {
		return f.Store.DeleteNewer(ctx, table, start, stop, ts)
	})
}

// DeleteBetween implements store.Store.
func (f *Faulty) DeleteBetween(ctx context.Context, table, start, stop string, after, upTo int64) error {
	c := Call{Op: OpDeleteBetween, Table: table, Row: start, Stop: stop, From: after, To: upTo}
	return f.delete(ctx, c, func(ctx context.Context, start, stop string) error {
		return f.Store.DeleteBetween(ctx, table, start, stop, after, upTo)
	})
}

// DeleteUpTo implements store.Store.
func (f *Faulty) DeleteUpTo(ctx context.Context, table, start, stop string, ts int64) error {
	c := Call{Op: OpDeleteUpTo, Table: table, Row: start, Stop: stop, To: ts}
	return f.delete(ctx, c, func(ctx context.Context, start, stop string) error {
		return f.Store.DeleteUpTo(ctx, table, start, stop, ts)
	})
}

// delete makes a delete of the rows in [c.Row, c.Stop) with del, as the
// fault says.
func (f *Faulty) delete(ctx context.Context, c Call, del func(ctx context.Context, start, stop string) error) error {
	switch what := f.before(c); what {
	case Pass:
		return del(ctx, c.Row, c.Stop)
	case FailApplied:
		_ = del(ctx, c.Row, c.Stop)
	case FailPartly:
		// The first half of the rows in the range (with a version).
		var rows []string
		_ = f.Store.Scan(ctx, c.Table, c.Row, c.Stop, store.Latest, func(row string, _ []store.Cell) error {
			rows = append(rows, row)
			return nil
		})
		if half := len(rows) / 2; half > 0 {
			_ = del(ctx, c.Row, rows[half])
		}
	case FailLate:
		f.later(func() { _ = del(context.Background(), c.Row, c.Stop) })
	default:
		return faulted(what)
	}
	return ErrFault
}

// CheckAndPut implements store.Store.
func (f *Faulty) CheckAndPut(ctx context.Context, table, row, column string, expected []byte, cells []store.Cell) (bool, error) {
	switch what := f.before(Call{Op: OpCheckAndPut, Table: table, Row: row, Column: column, Rows: 1}); what {
	case Pass:
		return f.Store.CheckAndPut(ctx, table, row, column, expected, cells)
	case FailApplied, FailPartly: // one row: all or nothing
		_, _ = f.Store.CheckAndPut(ctx, table, row, column, expected, cells)
	case FailLate:
		exp, kept := expected, cloneCells(cells)
		if exp != nil {
			exp = append([]byte{}, exp...)
		}
		f.later(func() { _, _ = f.Store.CheckAndPut(context.Background(), table, row, column, exp, kept) })
	default:
		return false, faulted(what)
	}
	return false, ErrFault
}
