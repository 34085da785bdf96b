package main

import (
	"strings"
	"testing"
)

// The goal of 1.5 M/s durable acknowledgement is judged by the agent
// alone (B2) when it ran, with the end-to-end runs' rate still shown,
// and by the end-to-end runs when it did not.
func TestAckGoalJudgedByAgentAlone(t *testing.T) {
	goalLine := func(md string) string {
		for l := range strings.SplitSeq(md, "\n") {
			if strings.HasPrefix(l, "| durable acknowledgement ≥ 1.5 M/s |") {
				return l
			}
		}
		t.Fatalf("no acknowledgement goal in:\n%s", md)
		return ""
	}
	r := &report{
		E2E:        []e2eRun{{AckPerSec: 300e3, Exact: true}, {AckPerSec: 320e3, Exact: true}},
		AgentAlone: []agentRun{{PerSec: 1.6e6, CPUMicros: 0.5, Entries: 10}, {PerSec: 1.7e6, CPUMicros: 0.4, Entries: 10}},
	}
	r.summarize()
	l := goalLine(r.markdown())
	for _, want := range []string{"1.65 M/s by an agent alone", "0.45 µs", "310 k/s in the end-to-end runs", "| met |"} {
		if !strings.Contains(l, want) {
			t.Errorf("goal line %q lacks %q", l, want)
		}
	}

	r.AgentAlone = []agentRun{{PerSec: 1.2e6, CPUMicros: 0.5}}
	r.summarize()
	if l := goalLine(r.markdown()); !strings.Contains(l, "| not met |") {
		t.Errorf("1.2 M/s alone: goal line %q, want not met", l)
	}

	r.AgentAlone = nil
	r.E2E = []e2eRun{{AckPerSec: 1.6e6}}
	r.summarize()
	if l := goalLine(r.markdown()); !strings.Contains(l, "B2 not run") || !strings.Contains(l, "| met |") {
		t.Errorf("without B2: goal line %q, want the end-to-end rate judged and B2 named as not run", l)
	}
}
