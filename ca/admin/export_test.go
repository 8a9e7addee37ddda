package admin

// SetAllowedUIDs replaces the set of uids s lets call admin methods,
// including root and the server's own uid, so that tests running as
// either can see a caller refused. Call it before serving.
func SetAllowedUIDs(s *Service, uids ...uint32) {
	s.allowed = make(map[uint32]bool, len(uids))
	for _, uid := range uids {
		s.allowed[uid] = true
	}
}
