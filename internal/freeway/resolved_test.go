package freeway

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/scribe"
)

// TestStartOrder: modules start after what they need, whatever order a
// target lists them in, and a cycle is refused.
func TestStartOrder(t *testing.T) {
	check := func(name string, mods, order []string) {
		t.Helper()
		if len(order) != len(mods) {
			t.Fatalf("%s: order %v of %v", name, order, mods)
		}
		pos := map[string]int{}
		for i, m := range order {
			pos[m] = i
		}
		for _, m := range mods {
			for _, d := range moduleNeeds[m] {
				if j, ok := pos[d]; ok && j > pos[m] {
					t.Errorf("%s: %s starts before %s, which it needs (order %v)", name, m, d, order)
				}
			}
		}
	}
	for target, mods := range Targets() {
		order, err := startOrder(mods, moduleNeeds)
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		check(target, mods, order)
	}
	all := slices.Clone(Targets()[All])
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		order, err := startOrder(all, moduleNeeds)
		if err != nil {
			t.Fatal(err)
		}
		check("shuffled all", all, order)
		if order[len(order)-1] != Serving {
			t.Errorf("serving is not last in %v", order)
		}
	}
	if _, err := startOrder([]string{"a", "b"}, map[string][]string{"a": {"b"}, "b": {"a"}}); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: %v, want an error", err)
	}
	if _, err := startOrder([]string{"nope"}, moduleNeeds); err == nil {
		t.Errorf("unknown module: no error")
	}
}

// TestResolved: one derivation of apps, consumers, bucket counts and
// routes, agreeing with the configuration.
func TestResolved(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Buckets = 3
	cfg.Categories = map[string]CategoryConfig{"a": {Buckets: 5, ShardKey: []string{"x"}}, "unused": {Buckets: 2}}
	cfg.Apps = []apps.Spec{
		{Name: "one", Category: "a", Format: "json", GroupBy: []string{"x", "y"}, Aggregates: []apps.AggregateSpec{{Name: "n", Fn: "count"}}},
		{Name: "two", Category: "b", Format: "json", GroupBy: []string{"y"}, Aggregates: []apps.AggregateSpec{{Name: "n", Fn: "count"}}},
		{Name: "three", Category: "a", Format: "json", GroupBy: []string{"y"}, Aggregates: []apps.AggregateSpec{{Name: "n", Fn: "count"}}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r, err := cfg.Resolved()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Apps) != 3 || r.Apps[0].Spec.Name != "one" || r.Apps[2].Spec.Name != "three" {
		t.Errorf("apps out of file order")
	}
	if got := r.Consumers["a"]; len(got) != 2 || got[0].Spec.Name != "one" || got[1].Spec.Name != "three" {
		t.Errorf("consumers of a: %v", got)
	}
	if got := r.Categories(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("categories = %v, want [a b]", got)
	}
	for cat, want := range map[string]int{"a": 5, "b": 3, "unused": 2, "other": 3} {
		if got := r.BucketsOf(cat); got != want || cfg.BucketsOf(cat) != want {
			t.Errorf("buckets of %s = %d (config %d), want %d", cat, got, cfg.BucketsOf(cat), want)
		}
	}
	if rt := r.Routes["a"]; rt.Buckets != 5 || !slices.Equal(rt.JSONFields, []string{"x"}) {
		t.Errorf("route of a = %+v, want 5 buckets by x", rt)
	}
	if rt := r.Routes["b"]; rt.Buckets != 3 || !slices.Equal(rt.JSONFields, []string{"y"}) {
		t.Errorf("route of b = %+v, want 3 buckets by y", rt)
	}
	if rt, ok := r.Routes["unused"]; !ok || rt.Buckets != 2 || rt.NewKeyFunc != nil {
		t.Errorf("route of unused = %+v, want 2 buckets, no key", rt)
	}
}

// TestAgentUpstreamFlag: --agent.upstream takes the writers' coord URL,
// several ZooKeeper servers included (the flag parser splits at commas;
// the agent joins them again), as well as writer addresses.
func TestAgentUpstreamFlag(t *testing.T) {
	for _, tc := range []struct {
		arg, url string
		isURL    bool
	}{
		{"zk://a:2181,b:2181/freeway?session_timeout=4s", "zk://a:2181,b:2181/freeway?session_timeout=4s", true},
		{"zk://127.0.0.1:2181/freeway", "zk://127.0.0.1:2181/freeway", true},
		{"w1:1464,w2:1464", "", false},
	} {
		fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		f := RegisterFlags(fs, Agent)
		if err := fs.Parse([]string{"--agent.upstream", tc.arg}); err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		f.Apply(&cfg)
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: %v", tc.arg, err)
		}
		url, ok := scribe.CoordUpstream(cfg.Agent.Upstream)
		if url != tc.url || ok != tc.isURL {
			t.Errorf("--agent.upstream %s: coord URL %q %v, want %q %v", tc.arg, url, ok, tc.url, tc.isURL)
		}
	}
}

// TestAgentUpstreamCoord: in one process, an agent whose upstream is the
// coordinator URL finds the process's writer in the group of live writers
// and ships to it.
func TestAgentUpstreamCoord(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Coord = "inproc://"
	cfg.Agent.Upstream = []string{"inproc://"}
	r := start(t, cfg)
	defer r.stop(t)
	os := orders(500, 0, base)
	send(t, r.p.Agent.Addr(), os, 50)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(os))
	if ok, why := r.p.Agent.Readiness(); !ok {
		t.Errorf("agent not ready: %s", why)
	}
}
