//go:build !linux

package durable

import "os"

// SyncData makes the bytes written to f durable: an fsync where
// fdatasync(2) is not used.
func SyncData(f *os.File) error { return f.Sync() }
