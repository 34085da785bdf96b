// Package agg is the one registry of Freeway's aggregate functions: what
// each needs (a field, numbers), which parameters it takes, and its state.
// The app validator (internal/apps), Puma's tables and checkpoints on every
// store, and the query merges all take the functions from here.
//
// Two kinds of state. count, sum, min, max and avg keep a fixed run of
// float64 slots in a cell (Func.Slots): compact, one allocation per cell,
// stored as 8 bytes a slot, the fast path. count_distinct, topk,
// percentile, first and last keep a variable-size State made by their
// Kind (Init), fed one input at a time (Add), merged with a state of the
// same Kind (Merge), encoded (Marshal) and decoded (Kind.Unmarshal), and
// answered (Result). Every encoding starts with a format byte, so that a
// later version can read what this one wrote.
//
// Merges are what one state over all the input would answer, within the
// function's stated error, whatever the order of the merges:
//
//   - count_distinct: the 64-bit xxhash of each value's text, kept exactly
//     (a sorted set) up to ExactDistinct values, then a HyperLogLog
//     (axiomhq/hyperloglog, precision 14: 16,384 one-byte registers, sparse
//     while small) whose standard error is 1.04/√16384 ≈ 0.81% (within
//     2.5% in 99.7% of cases). Merging is register-wise max: exactly the
//     sketch of the union.
//   - percentile: a DDSketch (DataDog/sketches-go) with 1% relative
//     accuracy: the answer for quantile q is within 1% of the input value
//     of rank q·(n−1) (0-based, in ascending order; when that falls
//     between two ranks, of one of the two). Its bins are bounded (MaxPercentileBins
//     per sign; beyond, the lowest bins collapse, which only happens when
//     the largest value exceeds the smallest by a factor over 10^17).
//     Merging adds bin counts: exactly the sketch of the union.
//   - topk: Space-Saving with max(64, 4k) counters. A reported count
//     overestimates the true count by at most its reported error, which is
//     at most N/counters (N: the values counted); every value whose true
//     count exceeds the last reported count is reported. Merged summaries
//     keep the same guarantees (Agarwal et al., "Mergeable summaries",
//     2012): merges add counts and bound absent values by each summary's
//     smallest counter, sums that do not depend on the merge order.
//   - first, last: the value at the smallest (largest) event time; of
//     values with the same event time, the first (last) to arrive in a cell
//     and, between cells merged by a query, the one whose block arrived
//     first (last), then the smaller (larger) value, so that an answer does
//     not depend on the order cells are merged in. Exact.
//
// Bounds. Values longer than MaxTextBytes are clipped (topk adds a hash of
// the whole value, so that long values that share a prefix stay apart);
// each Kind bounds its encoding (Kind.MaxBytes), and an app's cell may not
// exceed MaxCellBytes, so that a checkpoint's cell fits in one store
// request (HBase Thrift2 gateway frames are 2 MB, and a scan of 256 rows
// must stay under the client's 64 MiB frame).
//
// Crashes. A state lives in a Puma cell; its encoding is what a
// checkpoint stores. Decoding restores it exactly (topk keeps its counters
// in the same order), so a shard that recovers and reads on answers what
// it would have answered without the crash.
package agg
