package copier

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	copied    *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	skipped   *prometheus.CounterVec
	replaced  *prometheus.CounterVec
	vanished  *prometheus.CounterVec
	errors    *prometheus.CounterVec
	tempsGone prometheus.Counter
	lag       *prometheus.GaugeVec
	passes    prometheus.Counter
	passSecs  prometheus.Gauge
	passTime  prometheus.Gauge
	active    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		copied:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_segments_copied_total", Help: "Segments copied to the destination, by category."}, []string{"category"}),
		bytes:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_bytes_copied_total", Help: "Bytes copied to the destination, by category."}, []string{"category"}),
		skipped:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_segments_skipped_total", Help: "Segments found at the destination already, identical, and not copied again, by category."}, []string{"category"}),
		replaced:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_segments_replaced_total", Help: "Segments found at the destination with other contents and copied over, by category."}, []string{"category"}),
		vanished:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_segments_vanished_total", Help: "Segments removed from the source (retention) before they were copied, by category."}, []string{"category"}),
		errors:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_errors_total", Help: "Failed operations, by operation (list, copy, verify, progress, lease)."}, []string{"op"}),
		tempsGone: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_copier_temp_files_removed_total", Help: "Temporary files left at the destination by an interrupted copy, removed."}),
		lag:       prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "freeway_copier_lag_segments", Help: "Published segments seen in the source and not yet copied, by category."}, []string{"category"}),
		passes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_copier_passes_total", Help: "Copy passes completed."}),
		passSecs:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_copier_last_pass_seconds", Help: "Duration of the last copy pass."}),
		passTime:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_copier_last_pass_timestamp_seconds", Help: "When the last copy pass ended, Unix seconds."}),
		active:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_copier_active", Help: "1 while this copier holds the copier lease and copies, 0 while it stands by."}),
	}
	if reg != nil {
		reg.MustRegister(m.copied, m.bytes, m.skipped, m.replaced, m.vanished, m.errors, m.tempsGone, m.lag, m.passes, m.passSecs, m.passTime, m.active)
	}
	return m
}
