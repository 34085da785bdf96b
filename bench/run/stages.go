package main

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/freeway-dev/freeway/internal/segment"
)

// freshStages splits the probes' freshness on the embedded backends into
// where the time went, from timestamps the run has anyway: the probe's
// Log call (sent, answered once the agent's queue holds it durably), its
// segment's publish (the rename that publishes a segment on a local disk
// sets the file's status change time) and the first query that held it.
type freshStages struct {
	Probes int `json:"probes"` // probes found in a published segment
	// Log: from before the Log call to its answer (the agent's queue).
	LogP50, LogP99 float64
	// ToPublish: from the answer to the publish of the probe's segment
	// (shipping, the writer, waiting for the segment's age, the rename).
	ToPublishP50, ToPublishP99 float64
	// ToSeen: from the publish to the first answer holding the probe
	// (the notice, Puma's listing, reading and applying, the query and
	// up to one query poll).
	ToSeenP50, ToSeenP99 float64
	// SegmentLife: of the segments that held a probe, from the creation
	// of the file to its publish, where the file system says when a file
	// was born (0: it does not).
	SegmentLifeP50, SegmentLifeP99 float64
}

var probeID = regexp.MustCompile(`"id":"(p[0-9]+)"`)

// probeSegments reads every published segment under dir (a local dfs
// root: category/bucket/segment) and returns, by probe id, when the
// segment that holds it was published and created (zero if unknown).
func probeSegments(dir string) (published, created map[string]time.Time, err error) {
	published, created = map[string]time.Time{}, map[string]time.Time{}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") && p != dir {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(d.Name(), ".seg") || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		pub, born, ok := fileTimes(p)
		if !ok {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }() // read only
		r, err := segment.NewReader(f, 0)
		if err != nil {
			return err
		}
		var b segment.Block
		for {
			if err := r.Next(&b); errors.Is(err, io.EOF) {
				return nil
			} else if err != nil {
				return err
			}
			for _, m := range b.Messages {
				if !bytes.Contains(m, []byte(`"key":"probe-`)) {
					continue
				}
				if id := probeID.FindSubmatch(m); id != nil {
					published[string(id[1])], created[string(id[1])] = pub, born
				}
			}
		}
	})
	return published, created, err
}

// stages computes freshStages from the probes' send, answer and seen
// times and their segments.
func stages(sent, acked, seen, published, created map[string]time.Time) (s freshStages) {
	var logMs, pubMs, seenMs, lifeMs []float64
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	for id, t := range sent {
		a, okA := acked[id]
		p, okP := published[id]
		v, okV := seen[id]
		if !okA || !okP || !okV {
			continue
		}
		s.Probes++
		logMs = append(logMs, ms(a.Sub(t)))
		pubMs = append(pubMs, ms(p.Sub(a)))
		seenMs = append(seenMs, ms(v.Sub(p)))
		if c := created[id]; !c.IsZero() {
			lifeMs = append(lifeMs, ms(p.Sub(c)))
		}
	}
	if s.Probes == 0 {
		return s
	}
	s.LogP50, s.LogP99 = quantile(logMs, 0.5), quantile(logMs, 0.99)
	s.ToPublishP50, s.ToPublishP99 = quantile(pubMs, 0.5), quantile(pubMs, 0.99)
	s.ToSeenP50, s.ToSeenP99 = quantile(seenMs, 0.5), quantile(seenMs, 0.99)
	if len(lifeMs) > 0 {
		s.SegmentLifeP50, s.SegmentLifeP99 = quantile(lifeMs, 0.5), quantile(lifeMs, 0.99)
	}
	return s
}
