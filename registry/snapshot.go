package registry

import (
	"slices"
	"sort"

	"github.com/ai-lb/ai-lb/request"
)

// Member is a live node as the routing layer sees it.
type Member struct {
	*Node
	// Dial is the host:port reverse_proxy connects to.
	Dial string
}

// Snapshot is an immutable view of the live nodes, indexed for routing.
// Readers never lock: the watcher swaps in a new Snapshot on every change.
type Snapshot struct {
	// Members holds the live nodes, sorted by ID.
	Members []*Member
	// Synced reports whether the registry has been read at least once.
	Synced bool

	byID    map[string]*Member
	byModel map[string][]*Member // by request.ModelKey
	byDial  map[string]*Member
	models  []string
	dormant map[string]bool // by request.ModelKey
}

// NewSnapshot indexes live members, sorting them by ID in place;
// dormantModels are the models of registered nodes that are not routed to
// (not live, unhealthy by their agent's probe, or draining), and
// synced reports whether the registry has been read. The watcher builds
// one on every change; other packages' tests build their own.
//
// Model names are matched as Ollama reads them (request.ModelKey): a name
// without a tag is its ":latest", so "llama3.2" finds the nodes that list
// "llama3.2:latest" and the other way round.
func NewSnapshot(members []*Member, dormantModels map[string]bool, synced bool) *Snapshot {
	sort.Slice(members, func(i, j int) bool { return members[i].ID < members[j].ID })
	s := &Snapshot{
		Members: members,
		Synced:  synced,
		byID:    make(map[string]*Member, len(members)),
		byModel: make(map[string][]*Member),
		byDial:  make(map[string]*Member, len(members)),
		dormant: make(map[string]bool, len(dormantModels)),
	}
	for model := range dormantModels {
		s.dormant[request.ModelKey(model)] = true
	}
	for _, m := range members {
		s.byID[m.ID] = m
		_, dup := s.byDial[m.Dial]
		if !dup {
			s.byDial[m.Dial] = m
		}
		for i, model := range m.Models {
			key := request.ModelKey(model)
			if slices.ContainsFunc(m.Models[:i], func(earlier string) bool { return request.ModelKey(earlier) == key }) {
				continue // listed under both of its names
			}
			if len(s.byModel[key]) == 0 {
				s.models = append(s.models, model)
			}
			// Two IDs for one address (rare): offer it once per model.
			if dup && slices.ContainsFunc(s.byModel[key], func(x *Member) bool { return x.Dial == m.Dial }) {
				continue
			}
			s.byModel[key] = append(s.byModel[key], m)
		}
	}
	sort.Strings(s.models)
	return s
}

// ServingModel returns the live members that serve model. The slice is
// shared: do not modify it.
func (s *Snapshot) ServingModel(model string) []*Member { return s.byModel[request.ModelKey(model)] }

// ByDial returns the live member at a dial address, or nil.
func (s *Snapshot) ByDial(dial string) *Member { return s.byDial[dial] }

// Models returns the sorted union of the models of live members, each
// once, as the first member (by ID) that lists it names it.
func (s *Snapshot) Models() []string { return s.models }

// Known reports whether any registered node, routed to or not, lists model.
func (s *Snapshot) Known(model string) bool {
	key := request.ModelKey(model)
	return len(s.byModel[key]) > 0 || s.dormant[key]
}

// has reports whether m is in the snapshot as the same member.
func (s *Snapshot) has(m *Member) bool { return s.byID[m.ID] == m }
