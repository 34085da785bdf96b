package segment

// SeqWindow is how far below the highest sequence number it has seen of
// an agent stream (agent id and incarnation) a Puma shard still tells an
// entry it has not counted from a repeat. A shard takes an entry more than
// SeqWindow below that highest number as a repeat without checking.
//
// So an agent must never let an entry reach a writer more than SeqWindow
// after a later one: it sends a batch only while the batch's end is at
// most SeqWindow past its first unacknowledged sequence number (the oldest
// batch in flight goes whatever its size, since nothing can overtake
// what comes before it within itself). With one batch in flight at a time
// entries arrive in order and the bound never binds.
//
// It was SeqWindowV1 before: an agent keeps that bound unless told that
// every Puma it feeds tells SeqWindow apart (agent.seq_window), since a
// Puma of before takes an entry more than SeqWindowV1 below the highest
// as a repeat.
const SeqWindow = 1 << 17

// SeqWindowV1 is the seen-window of Puma before SeqWindow, and the
// agent's default bound.
const SeqWindowV1 = 1 << 16
