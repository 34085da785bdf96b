//go:build !linux

package main

import "time"

// fileTimes is not available here: the freshness stages are not split.
func fileTimes(string) (changed, born time.Time, ok bool) { return time.Time{}, time.Time{}, false }
