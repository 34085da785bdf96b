// Package layout is the one authority on how Freeway names things in the
// dfs, in the coordinator and in the store: the directory of a category
// and of its buckets, segment files and their temporary and salvage names,
// the coord leases of writers and Puma shards, and the category part of
// Puma's store rows. Writers (calligraphus), readers (ptail, Puma) and the
// copier all build and parse names here, so they cannot disagree.
//
//	<cat>/                              category directory (cat = Encode(category))
//	<cat>/.category                     sidecar: the full category, for long names
//	<cat>/<bucket>/                     bucket directory, bucket in decimal
//	<cat>/<bucket>/<epoch>-<seq>.seg    published segment, both 16 hex digits
//	<cat>/<bucket>/.<segment>.inprogress  segment being written
//	<cat>/<bucket>/.<segment>.salvage     salvaged copy of a crashed writer's segment
//	<cat>/<bucket>/.retention           retention mark: the last segment deleted
//	<cat>/dt=YYYY-MM-DD/hh=HH/part-<bucket>[.gz]  the copier's merged period (warehouse side;
//	                                    plus mm=MM/ for periods under an hour)
//	calligraphus/<cat>/<bucket>         writer lease
//	puma/<cat>/<bucket>                 Puma shard lease
//	wants/puma/<cat>/<bucket>           coord group: Puma nodes asking for the shard
//	c/<cat>/<bucket>, s/<cat>/<bucket>/  Puma's commit row and cell rows
//
// # Categories
//
// A Scribe category is any non-empty string (stock Scribe servers accept
// them all), but a dfs path component, a ZooKeeper node name and a store
// row prefix are not. Encode maps a category to a name that is safe in all
// of them, reversibly: bytes outside [A-Za-z0-9_.-], a leading "." or "_"
// (hidden names in HDFS tools and to Freeway's readers) and "%" become %XX
// (upper-case hex), so the result is plain ASCII without "/", ":" or a
// leading dot. Categories that were valid before this encoding existed
// ([A-Za-z0-9][A-Za-z0-9_.-]*, at most 200 bytes) encode to themselves, so
// their directories, leases and rows keep working.
//
// A dfs component has a length limit (255 bytes on most file systems and
// by default in HDFS). An encoding longer than MaxName bytes becomes its
// first bytes, "~" and a hash of the full category ("~" is escaped
// everywhere else, so the two forms cannot collide), and the full category
// is kept in a hidden sidecar file (SidecarName) in the category
// directory, so that listing the dfs stays reversible (Categories).
package layout

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// MaxName is the longest name Encode returns: a safe path component on
// every dfs (HDFS and most local file systems allow 255 bytes), and the
// old limit on category names, which therefore all keep their names.
const MaxName = 200

// hashLen is the length of the hash suffix of a long name, in hex digits
// (128 bits: collisions need about 2^64 categories).
const hashLen = 32

// SidecarName is the hidden file in a long category's directory that
// holds the full category.
const SidecarName = ".category"

// ValidCategory reports whether c can be written and consumed: any
// non-empty string. (Stock Scribe servers drop entries without a
// category; so does calligraphus.)
func ValidCategory(c string) bool { return c != "" }

// Encode returns the name of category in the dfs, in coord lease names and
// in store rows: the same string everywhere. It is injective.
func Encode(category string) string {
	var b strings.Builder
	b.Grow(len(category))
	for i := 0; i < len(category); i++ {
		c := category[i]
		if plain(c) && !(i == 0 && (c == '.' || c == '_')) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(upperHex[c>>4])
		b.WriteByte(upperHex[c&0xf])
	}
	s := b.String()
	if len(s) <= MaxName {
		return s
	}
	// Cut the prefix on an escape boundary so that it reads as the start
	// of the category.
	cut := MaxName - 1 - hashLen
	for i := cut - 1; i >= 0 && i >= cut-2; i-- {
		if s[i] == '%' {
			cut = i
			break
		}
	}
	return s[:cut] + "~" + hashOf(category)
}

func hashOf(category string) string {
	sum := sha256.Sum256([]byte(category))
	return hex.EncodeToString(sum[:hashLen/2])
}

const upperHex = "0123456789ABCDEF"

// plain reports whether c stands for itself in an encoded name (except a
// leading "." or "_").
func plain(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-'
}

// Decode inverts Encode for a name that holds its whole category. A long
// (hashed) name reports hashed: its category is in the sidecar (see
// Categories). Anything Encode cannot produce (a foreign directory) is
// refused.
func Decode(name string) (category string, hashed, ok bool) {
	if name == "" || len(name) > MaxName {
		return "", false, false
	}
	if name[0] == '.' || name[0] == '_' {
		return "", false, false
	}
	if i := strings.IndexByte(name, '~'); i >= 0 {
		if i == 0 || len(name) != i+1+hashLen || !isLowerHex(name[i+1:]) {
			return "", false, false
		}
		if _, ok := unescape(name[:i]); !ok {
			return "", false, false
		}
		return "", true, true
	}
	c, ok := unescape(name)
	if !ok || Encode(c) != name {
		return "", false, false
	}
	return c, false, true
}

// MatchesHashed reports whether category is the one a hashed name stands
// for: what a sidecar must hold.
func MatchesHashed(name, category string) bool {
	return category != "" && Encode(category) == name
}

func unescape(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) || !isUpperHex(s[i+1]) || !isUpperHex(s[i+2]) {
				return "", false
			}
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		case plain(c):
			b.WriteByte(c)
		default:
			return "", false
		}
	}
	return b.String(), true
}

func isUpperHex(c byte) bool { return '0' <= c && c <= '9' || 'A' <= c && c <= 'F' }

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'A' + 10
}

// CategoryDir is the directory of a category.
func CategoryDir(category string) string { return Encode(category) }

// SidecarPath is the sidecar file of a category.
func SidecarPath(category string) string { return Encode(category) + "/" + SidecarName }

// NeedsSidecar reports whether a category's name does not hold it whole
// (a hashed long name): its directory needs the sidecar to be listed.
func NeedsSidecar(category string) bool { return strings.IndexByte(Encode(category), '~') >= 0 }

// BucketDir is the directory of a bucket.
func BucketDir(category string, bucket int) string {
	return Encode(category) + "/" + strconv.Itoa(bucket)
}

// ParseBucket parses a bucket directory's name (its last element):
// exactly the decimal numbers BucketDir makes.
func ParseBucket(name string) (int, bool) {
	b, err := strconv.Atoi(name)
	if err != nil || b < 0 || strconv.Itoa(b) != name {
		return 0, false
	}
	return b, true
}

// SegmentExt is the file extension of a published segment.
const SegmentExt = ".seg"

// SegmentName is the file name of segment seq of a writer's epoch: both
// fixed-width hex, so that name order is (epoch, seq) order.
func SegmentName(epoch int64, seq uint64) string {
	return fmt.Sprintf("%016x-%016x%s", uint64(epoch), seq, SegmentExt)
}

// ParseSegmentName parses a name made by SegmentName.
func ParseSegmentName(name string) (epoch int64, seq uint64, ok bool) {
	base, found := strings.CutSuffix(name, SegmentExt)
	if !found || len(base) != 33 || base[16] != '-' {
		return 0, 0, false
	}
	e, err1 := strconv.ParseUint(base[:16], 16, 64)
	s, err2 := strconv.ParseUint(base[17:], 16, 64)
	if err1 != nil || err2 != nil || e > 1<<63-1 {
		return 0, 0, false
	}
	return int64(e), s, true
}

// TempSuffix ends the hidden name a segment is written under (the form
// of dfs.TempName).
const TempSuffix = ".inprogress"

// TempSegment is the hidden name segment (a file name) is written under
// before it is published by a rename.
func TempSegment(segment string) string { return "." + segment + TempSuffix }

// ParseTempSegment returns the segment of a name made by TempSegment.
func ParseTempSegment(name string) (string, bool) {
	s, ok := strings.CutPrefix(name, ".")
	if !ok {
		return "", false
	}
	if s, ok = strings.CutSuffix(s, TempSuffix); !ok {
		return "", false
	}
	if _, _, ok := ParseSegmentName(s); !ok {
		return "", false
	}
	return s, true
}

// SalvageSuffix ends the hidden name a salvaged segment is copied under.
const SalvageSuffix = ".salvage"

// SalvageSegment is the hidden name under which a crashed writer's
// segment is rewritten before it is published.
func SalvageSegment(segment string) string { return "." + segment + SalvageSuffix }

// ParseSalvageSegment returns the segment of a name made by
// SalvageSegment.
func ParseSalvageSegment(name string) (string, bool) {
	s, ok := strings.CutPrefix(name, ".")
	if !ok {
		return "", false
	}
	if s, ok = strings.CutSuffix(s, SalvageSuffix); !ok {
		return "", false
	}
	if _, _, ok := ParseSegmentName(s); !ok {
		return "", false
	}
	return s, true
}

// WriterLease is the coord lease of a bucket's writer.
func WriterLease(category string, bucket int) string {
	return "calligraphus/" + BucketDir(category, bucket)
}

// ShardLease is the coord lease of a Puma shard (one bucket).
func ShardLease(category string, bucket int) string {
	return "puma/" + BucketDir(category, bucket)
}

// PumaCommitRow is the store row of a Puma shard's commit. The encoded
// category holds no "/", so one category's rows cannot be mistaken for
// another's.
func PumaCommitRow(category string, bucket int) string {
	return "c/" + BucketDir(category, bucket)
}

// PumaCellPrefix starts every cell row of a Puma shard.
func PumaCellPrefix(category string, bucket int) string {
	return "s/" + BucketDir(category, bucket) + "/"
}

// PumaWindowPrefix starts the rows of a Puma shard's deduplication
// windows, one per agent key.
func PumaWindowPrefix(category string, bucket int) string {
	return "d/" + BucketDir(category, bucket) + "/"
}

// Label is a category as a metric label value: its encoded name, which
// is bounded (MaxName bytes), ASCII (Prometheus refuses invalid UTF-8) and
// still one series per category. A client cannot make a 4 MiB label.
func Label(category string) string { return Encode(category) }

// MergedFile is where the copier's merge writes the lines of a bucket
// that arrived in the period starting at start, of length period, in the
// warehouse layout Hive-style readers expect:
//
//	<cat>/dt=YYYY-MM-DD/hh=HH/part-<bucket><ext>        periods of an hour or more
//	<cat>/dt=YYYY-MM-DD/hh=HH/mm=MM/part-<bucket><ext>  shorter periods
//
// in UTC; ext is "" or ".gz". The category directory is the one of the
// pipeline's dfs (Encode, with the sidecar of a long name).
func MergedFile(category string, bucket int, start time.Time, period time.Duration, ext string) string {
	t := start.UTC()
	dir := Encode(category) + "/dt=" + t.Format("2006-01-02") + "/hh=" + t.Format("15")
	if period < time.Hour {
		dir += "/mm=" + t.Format("04")
	}
	return dir + "/part-" + strconv.Itoa(bucket) + ext
}
