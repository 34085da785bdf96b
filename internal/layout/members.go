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

// PumaWants is the group of the Puma nodes that ask for a shard (one
// bucket) held by another node: the node preferred for it joins while
// another holds it, and the holder hands it over only to a member of it.
// No data.
func PumaWants(category string, bucket int) string {
	return "wants/puma/" + BucketDir(category, bucket)
}
