package storetest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/storetest"
)

// TestFaulty: each fault does to a call what it says, and a crash fails
// every call after it.
func TestFaulty(t *testing.T) {
	ctx := context.Background()
	cells := []store.Cell{
		{Row: "a", Column: "c", Timestamp: 1, Value: []byte("1")},
		{Row: "b", Column: "c", Timestamp: 1, Value: []byte("1")},
		{Row: "c", Column: "c", Timestamp: 1, Value: []byte("1")},
		{Row: "d", Column: "c", Timestamp: 1, Value: []byte("1")},
	}
	rows := func(s store.Store) string {
		var out []string
		if err := s.Scan(ctx, "t", "", "", store.Latest, func(row string, _ []store.Cell) error {
			out = append(out, row)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(out)
	}
	for _, tc := range []struct {
		fault      storetest.Fault
		err        error
		put, late  string // the rows after the Put, and after the CheckAndPut and Land
		deleted    string // the rows after a DeleteUpTo of all of them
		checkWrote bool   // a CheckAndPut's cell is there
	}{
		{storetest.Pass, nil, "[a b c d]", "[a b c d x]", "[x]", true},
		{storetest.Fail, storetest.ErrFault, "[]", "[]", "[a b c d]", false},
		{storetest.FailApplied, storetest.ErrFault, "[a b c d]", "[a b c d x]", "[x]", true},
		{storetest.FailPartly, storetest.ErrFault, "[a b]", "[a b x]", "[c d x]", true},
		{storetest.FailLate, storetest.ErrFault, "[]", "[a b c d x]", "[a b c d x]", false},
	} {
		t.Run(tc.fault.String(), func(t *testing.T) {
			mem := storetest.NewMem()
			f := storetest.NewFaulty(mem)
			f.SetFault(func(n int, c storetest.Call) storetest.Fault {
				if c.Changes() && n < 3 {
					return tc.fault
				}
				return storetest.Pass
			})
			if err := f.Put(ctx, "t", cells); !errors.Is(err, tc.err) {
				t.Fatalf("put: %v, want %v", err, tc.err)
			}
			if got := rows(mem); got != tc.put {
				t.Fatalf("after the put: %s, want %s", got, tc.put)
			}
			_, err := f.CheckAndPut(ctx, "t", "x", "c", nil, []store.Cell{{Row: "x", Column: "c", Timestamp: 1, Value: []byte("x")}})
			if !errors.Is(err, tc.err) {
				t.Fatalf("check and put: %v, want %v", err, tc.err)
			}
			if got, _ := mem.Get(ctx, "t", "x", store.Latest); (len(got) == 1) != tc.checkWrote {
				t.Fatalf("check and put wrote %v", got)
			}
			f.Land()
			if got := rows(mem); got != tc.late {
				t.Fatalf("after landing: %s, want %s", got, tc.late)
			}
			// The delete (call 2) of rows a to d, all of them there now.
			_ = mem.Put(ctx, "t", cells)
			if err := f.DeleteUpTo(ctx, "t", "a", "x", 1); !errors.Is(err, tc.err) {
				t.Fatalf("delete: %v, want %v", err, tc.err)
			}
			if got := rows(mem); got != tc.deleted {
				t.Fatalf("after the delete: %s, want %s", got, tc.deleted)
			}
		})
	}
	t.Run("crash", func(t *testing.T) {
		f := storetest.NewFaulty(storetest.NewMem())
		f.SetFault(func(n int, _ storetest.Call) storetest.Fault {
			if n == 1 {
				return storetest.Crash
			}
			return storetest.Pass
		})
		if err := f.Put(ctx, "t", cells); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Get(ctx, "t", "a", store.Latest); !errors.Is(err, storetest.ErrCrashed) {
			t.Fatalf("the call crashed at: %v", err)
		}
		if _, err := f.Get(ctx, "t", "a", store.Latest); !errors.Is(err, storetest.ErrCrashed) || !f.Crashed() {
			t.Fatalf("a call after the crash: %v", err)
		}
		if n := len(f.Calls()); n != 2 {
			t.Fatalf("%d calls counted, want 2 (none after the crash)", n)
		}
	})
}
