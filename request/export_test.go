package request

import "slices"

// TriedDials returns the addresses tried so far, in order.
func (r *Info) TriedDials() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.tried)
}
