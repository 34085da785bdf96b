package boltstore

import (
	"bytes"
	"path/filepath"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestAppendEscaped pins the key encoding (a format on disk): each 0x00
// of a row is 0x00 0xff, the row ends with 0x00 0x01, the rest is copied,
// it reads back, and escaped rows sort as the rows do.
func TestAppendEscaped(t *testing.T) {
	cases := []struct {
		row  string
		want []byte
	}{
		{"", []byte{0, 1}},
		{"ab", []byte{'a', 'b', 0, 1}},
		{"\x00", []byte{0, 0xff, 0, 1}},
		{"a\x00b", []byte{'a', 0, 0xff, 'b', 0, 1}},
		{"\x00\x00a\x00", []byte{0, 0xff, 0, 0xff, 'a', 0, 0xff, 0, 1}},
		{"s/c/0/app@1f/000001/r1", []byte("s/c/0/app@1f/000001/r1\x00\x01")},
	}
	var rows []string
	for _, c := range cases {
		got := appendEscaped([]byte("pre"), c.row)
		if !bytes.Equal(got, append([]byte("pre"), c.want...)) {
			t.Errorf("appendEscaped(%q) = %x, want pre+%x", c.row, got, c.want)
		}
		if c.row != "" {
			back, rest, ok := readEscaped(append(got[3:], "col"...))
			if !ok || back != c.row || string(rest) != "col" {
				t.Errorf("readEscaped of %q = %q, %q, %v", c.row, back, rest, ok)
			}
		}
		rows = append(rows, c.row)
	}
	rows = append(rows, "a", "a\x00", "a\x01", "a\xff", "\xff")
	slices.Sort(rows)
	for i := 1; i < len(rows); i++ {
		if a, b := appendEscaped(nil, rows[i-1]), appendEscaped(nil, rows[i]); bytes.Compare(a, b) >= 0 && rows[i-1] != rows[i] {
			t.Errorf("%q < %q but escaped %x >= %x", rows[i-1], rows[i], a, b)
		}
	}
}

func BenchmarkAppendEscaped(b *testing.B) {
	row := "s/orders/0/orders@1f2e3d4c5b6a7988/0000018c2b3f4a00/r123"
	buf := make([]byte, 0, 128)
	for i := 0; i < b.N; i++ {
		buf = appendEscaped(buf[:0], row)
	}
}

// TestBoltCopiesKeys: putCells encodes each key into a buffer it reuses
// two keys later, which is right only while bbolt's Put copies its key
// (its documentation asks only the value to stay valid until the
// transaction ends). A bbolt that kept the caller's key would fail here.
func TestBoltCopiesKeys(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "k.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	key := []byte("key-a")
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("b"))
		if err != nil {
			return err
		}
		if err := b.Put(key, []byte("1")); err != nil {
			return err
		}
		copy(key, "key-b") // before the commit
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("b"))
		if v := b.Get([]byte("key-a")); string(v) != "1" {
			t.Errorf("key-a = %q, want 1", v)
		}
		if v := b.Get([]byte("key-b")); v != nil {
			t.Errorf("key-b = %q, want none", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
