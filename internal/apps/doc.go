// Package apps holds Puma's aggregation apps as users declare them in
// YAML, and turns each into what the data path runs: a parser that pulls
// the fields an app needs out of a log line (json, regex, tsv, logfmt), its
// event time, its where filter, its group key, and the shard key that
// calligraphus routes a category by.
//
// An app is validated as a whole before anything starts; a FieldError names
// the YAML path of what is wrong so that the config loader can point at
// the file, line and column.
package apps
