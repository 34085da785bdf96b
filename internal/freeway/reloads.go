package freeway

import "github.com/prometheus/client_golang/prometheus"

// Reloads counts the reloads of the configuration file asked for
// (SIGHUP, fb303 reinitialize, POST /admin/reload) by result, and says
// whether the last one took. fb303 reinitialize is oneway and SIGHUP has
// no answer either: without these a refused file showed only in the
// log, while the process ran on the previous configuration. The command
// creates one and hands it to every Process it builds (Options.Reloads),
// so that the counts outlive the components a reload restarts, each with
// a registry of its own.
type Reloads struct {
	total *prometheus.CounterVec
	last  prometheus.Gauge
}

// NewReloads returns the counts of a process that has not reloaded yet.
func NewReloads() *Reloads {
	r := &Reloads{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_config_reloads_total",
			Help: "Reloads of the configuration file asked for (SIGHUP, fb303 reinitialize, POST /admin/reload), by result (ok; error: the file does not validate, or the components do not start with it, and the previous configuration runs on)."},
			[]string{"result"}),
		last: prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_config_last_reload_successful",
			Help: "1 if the last reload asked for took (or none was asked for), 0 if the process runs on the previous configuration instead."}),
	}
	// Both series from the start, so that an alert on an increase of
	// errors has a zero to increase from.
	r.total.WithLabelValues("ok")
	r.total.WithLabelValues("error")
	r.last.Set(1)
	return r
}

// Done records a reload's result: nil if the components run on the
// reloaded file.
func (r *Reloads) Done(err error) {
	if err != nil {
		r.total.WithLabelValues("error").Inc()
		r.last.Set(0)
		return
	}
	r.total.WithLabelValues("ok").Inc()
	r.last.Set(1)
}

// Describe implements prometheus.Collector.
func (r *Reloads) Describe(ch chan<- *prometheus.Desc) {
	r.total.Describe(ch)
	r.last.Describe(ch)
}

// Collect implements prometheus.Collector.
func (r *Reloads) Collect(ch chan<- prometheus.Metric) {
	r.total.Collect(ch)
	r.last.Collect(ch)
}
