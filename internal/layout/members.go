package layout

// Coord groups of live processes (coord.Join). A member's ID is the
// process's id; its data is the address it advertises, "host:port".
const (
	// WriterMembers is the group of live writers; data: the Scribe
	// address agents and other writers send to (calligraphus.listen, or
	// --advertise with its port).
	WriterMembers = "members/calligraphus"
	// PumaMembers is the group of live Puma nodes; data: the address of
	// the node's query listener (puma.listen), which serving fans out to.
	PumaMembers = "members/puma"
)
