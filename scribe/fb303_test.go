package scribe

import (
	"context"
	"slices"
	"testing"

	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// TestFB303CountersAreTheMetrics: getCounters answers the names monitors
// read (Freeway's and stock Scribe's), each the value of the Prometheus
// metric it is read from.
func TestFB303CountersAreTheMetrics(t *testing.T) {
	up := deadAddr(t)
	a := startAgent(t, testConfig(t.TempDir(), up))
	c := dial(t, a.Addr())
	mustLog(t, c, entries("c", "m", 0, 3))
	mustLog(t, c, []*scribethrift.LogEntry{{Category: "", Message: []byte("x")}})
	testkit.WaitFor(t, "a ship error", func() bool { return gather(t, a, "freeway_agent_ship_errors_total", "", "") > 0 })
	got, err := c.GetCounters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	names := []string{
		"agent.received", "agent.received_tail", "agent.rejected", "agent.try_later_sent",
		"agent.queue_entries", "agent.queue_bytes", "agent.queue_lost", "agent.queue_write_errors",
		"agent.shipped", "agent.ship_errors", "agent.try_later_received", "agent.batches_in_flight",
		"received good", "received bad", "received blank category", "denied for queue size", "sent",
		"agent.rejected.empty_category",
		"agent.try_later_sent.queue_full", "agent.try_later_sent.write_error", "agent.try_later_sent.closed", "agent.try_later_sent.too_large",
	}
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	slices.Sort(names)
	if !slices.Equal(keys, names) {
		t.Fatalf("getCounters names %q, want %q", keys, names)
	}
	for name, want := range map[string]float64{
		"agent.received":                gather(t, a, "freeway_agent_entries_received_total", "source", "scribe"),
		"received good":                 gather(t, a, "freeway_agent_entries_received_total", "source", "scribe"),
		"agent.received_tail":           gather(t, a, "freeway_agent_entries_received_total", "source", "tail"),
		"agent.rejected.empty_category": gather(t, a, "freeway_agent_entries_rejected_total", "reason", "empty_category"),
		"received blank category":       gather(t, a, "freeway_agent_entries_rejected_total", "reason", "empty_category"),
		"agent.queue_entries":           gather(t, a, "freeway_agent_queue_entries", "", ""),
		"agent.queue_bytes":             gather(t, a, "freeway_agent_queue_bytes", "", ""),
		"agent.shipped":                 gather(t, a, "freeway_agent_entries_shipped_total", "", ""),
	} {
		if float64(got[name]) != want {
			t.Errorf("%s = %d, Prometheus says %v", name, got[name], want)
		}
	}
	if got["agent.received"] != 3 || got["agent.rejected"] != 1 || got["agent.queue_entries"] != 3 || got["agent.queue_bytes"] == 0 || got["agent.ship_errors"] == 0 {
		t.Errorf("getCounters %v", got)
	}
}
