package copier

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	copied      *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	skipped     *prometheus.CounterVec
	replaced    *prometheus.CounterVec
	vanished    *prometheus.CounterVec
	errors      *prometheus.CounterVec
	tempsGone   prometheus.Counter
	lag         *prometheus.GaugeVec
	lagSeconds  *prometheus.GaugeVec
	merged      *prometheus.CounterVec
	mergedLines *prometheus.CounterVec
	moved       *prometheus.CounterVec
	conflicts   *prometheus.CounterVec
	passes      prometheus.Counter
	passSecs    prometheus.Gauge
	passTime    prometheus.Gauge
	active      prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		copied:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_segments_copied_total", Help: "Segments copied to the destination, by category."}, []string{"category"}),
		bytes:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_bytes_copied_total", Help: "Bytes copied to the destination, by category."}, []string{"category"}),
		skipped:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_segments_skipped_total", Help: "Segments found at the destination already, identical, and not copied again, by category."}, []string{"category"}),
		replaced:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_segments_replaced_total", Help: "Segments found at the destination with other contents and copied over, by category."}, []string{"category"}),
		vanished:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_segments_vanished_total", Help: "Segments removed from the source (retention) before they were copied, by category."}, []string{"category"}),
		errors:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_errors_total", Help: "Failed operations, by operation (list, copy, verify, progress, lease)."}, []string{"op"}),
		tempsGone:   prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_copier_temp_files_removed_total", Help: "Temporary files left at the destination by an interrupted copy, removed."}),
		lag:         prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "freeway_copier_lag_segments", Help: "Published segments seen in the source and not yet copied (merged: not wholly in published period files), by category."}, []string{"category"}),
		lagSeconds:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "freeway_copier_lag_seconds", Help: "Age of the oldest published segment not yet copied (merged), by category; 0 when none."}, []string{"category"}),
		merged:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_merged_files_total", Help: "Period files written to the destination by the merge, by category."}, []string{"category"}),
		mergedLines: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_merged_lines_total", Help: "Lines written to period files by the merge, by category."}, []string{"category"}),
		moved:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_merge_lines_moved_total", Help: "Lines the merge wrote to a later period than their arrival, by category and reason (late: published after their period was closed, or after a later block; future: arrived ahead of the copier's clock)."}, []string{"category", "reason"}),
		conflicts:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_copier_merge_conflicts_total", Help: "Period files found published with other lines than the merge would write without progress saying so (kept, logged), by category."}, []string{"category"}),
		passes:      prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_copier_passes_total", Help: "Copy passes completed."}),
		passSecs:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_copier_last_pass_seconds", Help: "Duration of the last copy pass."}),
		passTime:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_copier_last_pass_timestamp_seconds", Help: "When the last copy pass ended, Unix seconds."}),
		active:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_copier_active", Help: "1 while this copier holds the copier lease and copies, 0 while it stands by."}),
	}
	if reg != nil {
		reg.MustRegister(m.copied, m.bytes, m.skipped, m.replaced, m.vanished, m.errors, m.tempsGone, m.lag, m.lagSeconds,
			m.merged, m.mergedLines, m.moved, m.conflicts, m.passes, m.passSecs, m.passTime, m.active)
	}
	return m
}
