package nodeapi

import "github.com/spiffe/go-spiffe/v2/spiffeid"

// ConnectedAgents returns the number of Sync streams each agent has open
// on this server (agents with none are absent).
func (s *Service) ConnectedAgents() map[spiffeid.ID]int {
	ix := s.idx
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	out := make(map[spiffeid.ID]int, len(ix.subs))
	for id, set := range ix.subs {
		if len(set) > 0 {
			out[id] = len(set)
		}
	}
	return out
}
