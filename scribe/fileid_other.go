//go:build !unix

package scribe

import "io/fs"

// fileID is empty where the platform offers no file identity: rotation
// by rename is then not detected, truncation still is.
type fileID struct{ dev, ino uint64 }

func idOf(fs.FileInfo) fileID { return fileID{} }
