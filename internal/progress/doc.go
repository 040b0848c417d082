// Package progress shows a conversion's progress (convert.Progress): a live line per layer
// in flight on a terminal (Term), or a log line per layer started and done elsewhere (Log).
package progress
