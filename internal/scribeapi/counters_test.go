package scribeapi

import (
	"maps"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestCounters(t *testing.T) {
	reg := prometheus.NewRegistry()
	in := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "in_total", Help: "h"}, []string{"source", "reason"})
	depth := prometheus.NewGauge(prometheus.GaugeOpts{Name: "depth", Help: "h"})
	reg.MustRegister(in, depth)
	in.WithLabelValues("app", "ok").Add(3)
	in.WithLabelValues("app", "bad").Add(1)
	in.WithLabelValues("tail", "ok").Add(5)
	depth.Set(7)
	got := Counters(reg,
		Counter{Name: "all", Metric: "in_total"},
		Counter{Name: "app", Metric: "in_total", Labels: prometheus.Labels{"source": "app"}},
		Counter{Name: "app_ok", Metric: "in_total", Labels: prometheus.Labels{"source": "app", "reason": "ok"}},
		Counter{Name: "by", Metric: "in_total", By: "reason"},
		Counter{Name: "depth", Metric: "depth"},
		Counter{Name: "none", Metric: "no_such_metric"},
		Counter{Name: "none_by", Metric: "no_such_metric", By: "reason"},
	)()
	want := map[string]int64{"all": 9, "app": 4, "app_ok": 3, "by.ok": 8, "by.bad": 1, "depth": 7, "none": 0}
	if !maps.Equal(got, want) {
		t.Fatalf("Counters = %v, want %v", got, want)
	}
}
