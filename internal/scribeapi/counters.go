package scribeapi

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Counter is one fb303 counter, read from a Prometheus metric: the sum of
// the series of Metric whose labels include Labels. With By set, it is
// one counter per value of that label instead, named Name+"."+value.
type Counter struct {
	Name   string
	Metric string
	Labels prometheus.Labels
	By     string
}

// Counters returns what getCounters answers (Info.Counters): g gathered
// and flattened by defs, so that fb303 reports the numbers Prometheus
// does. A counter whose metric has no series is 0 (nothing for By).
func Counters(g prometheus.Gatherer, defs ...Counter) func() map[string]int64 {
	return func() map[string]int64 {
		out := make(map[string]int64, len(defs))
		mfs, _ := g.Gather() // what could be gathered, even on error
		byName := make(map[string]*dto.MetricFamily, len(mfs))
		for _, mf := range mfs {
			byName[mf.GetName()] = mf
		}
		for _, d := range defs {
			if d.By == "" {
				out[d.Name] = 0
			}
			mf := byName[d.Metric]
			if mf == nil {
				continue
			}
			for _, m := range mf.GetMetric() {
				labels := map[string]string{}
				for _, lp := range m.GetLabel() {
					labels[lp.GetName()] = lp.GetValue()
				}
				if !matches(labels, d.Labels) {
					continue
				}
				name := d.Name
				if d.By != "" {
					v, ok := labels[d.By]
					if !ok {
						continue
					}
					name += "." + v
				}
				out[name] += int64(value(m))
			}
		}
		return out
	}
}

func matches(labels map[string]string, want prometheus.Labels) bool {
	for k, v := range want {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// value is a counter's or gauge's value (0 for other kinds).
func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}
