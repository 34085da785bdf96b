// Package jsonscan reads chosen fields of a JSON line in one pass over
// its bytes, building nothing, where a full parse (fastjson, what Puma's
// apps and the writer's shard key are defined by) builds the whole object
// to read two or three fields. For each field, a dotted path, it gives
// what the line holds there: a string's bytes, a number's text, true,
// false, null, or nothing; or it says the line is one the full parse
// refuses; or it leaves the line to the full parse, for the few shapes it
// does not decide alone (see Scanner). ScanPrefix reads only as far as
// the last field's value, for a reader that takes the line whether the
// full parse does or not (the writer's shard key). The answer is exactly
// the full parse's (for ScanPrefix, on every line the full parse takes):
// FuzzScanMatchesFastjson here and the fuzz targets of its users
// (calligraphus's FuzzJSONKeyMatchesFullParse, apps'
// FuzzJSONScanMatchesFullParse) hold the two equal on arbitrary bytes.
//
// It keeps no state beyond a Scanner's buffer of the last line's fields,
// and nothing survives a crash.
package jsonscan
