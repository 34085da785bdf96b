// Package apps holds Puma's aggregation apps as users declare them in
// YAML, and turns each into what the data path runs: a parser that pulls
// the fields an app needs out of a log line (json, regex, tsv, logfmt), its
// event time, its where filter, its group key, and the shard key that
// calligraphus routes a category by. Apps of one category that read lines
// alike (ParseGroups: every JSON or logfmt app, regex apps of one
// pattern, TSV apps of one separator and column list) can share one parse
// per line (SharedParser, over the union of their fields), each then
// extracting its own fields from the record (Extractor.ExtractRecord)
// exactly as from its own parse.
//
// A line's Record is the one form it takes from the parse to Puma's
// cells: an Extractor finds its app's fields in a record by index once per
// record layout (its where filter bound the same way), and its Extracted
// reads the event time, the group key and each aggregate's input from the
// record where they lie, for the table to apply; nothing is copied out
// per line but what a cell keeps.
//
// A JSON line is read by a scan of the fields the apps use (jsonscan),
// which builds nothing and copies nothing: the record holds the scan's
// fields as the scan left them (a kind and a place in the line), a number
// is parsed when it is read as one, and a string is a view of the line;
// what outlives the line (a new cell's key, a text input a state keeps)
// is copied. The few lines the scan cannot read alone, and every line it
// refuses, go to the full parse (fastjson), whose reading and whose error
// words are what the scan is held to (FuzzJSONScanMatchesFullParse); its
// fields are Values of their own, as the other formats' are.
//
// An event time must be a moment after 1970 that fits in int64 ms: NaN,
// infinities, zero, negative and overflowing values are ErrBadTime, never
// converted (a conversion would wrap). How far ahead of its arrival an
// event time may be (the app's max_future) is checked by Puma, which knows
// the arrival; so is the app's max_cells, the bound on its cells in a
// Puma node's memory.
//
// An app is validated as a whole before anything starts; a FieldError names
// the YAML path of what is wrong so that the config loader can point at
// the file, line and column.
package apps
