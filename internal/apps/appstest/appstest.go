// Package appstest holds the example apps that tests of several packages
// aggregate with, so that a test reads "the orders app" and means the
// same app everywhere.
package appstest

import (
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
)

// Orders is the app most pipeline tests use: JSON orders of category
// "orders", {"ts": <event time>, "region": "eu", "kind": "book", "amount":
// 12.5}, in one-minute windows of ts (read with timeLayout: "unix",
// "unix_ms", ...), grouped by region and kind, with every aggregate of
// amount: n (count), total (sum), lo (min), hi (max), mean (avg).
func Orders(timeLayout string) apps.Spec {
	return apps.Spec{
		Name: "orders", Category: "orders", Format: "json",
		Time:    &apps.TimeSpec{Field: "ts", Layout: timeLayout},
		Window:  config.Duration(time.Minute),
		GroupBy: []string{"region", "kind"},
		Aggregates: []apps.AggregateSpec{
			{Name: "n", Fn: "count"},
			{Name: "total", Fn: "sum", Field: "amount"},
			{Name: "lo", Fn: "min", Field: "amount"},
			{Name: "hi", Fn: "max", Field: "amount"},
			{Name: "mean", Fn: "avg", Field: "amount"},
		},
	}
}

// Compile compiles s, failing t if it does not compile.
func Compile(t testing.TB, s apps.Spec) *apps.App {
	t.Helper()
	a, err := apps.Compile(s, "$.apps[0]")
	if err != nil {
		t.Fatalf("compile app %s: %v", s.Name, err)
	}
	return a
}
