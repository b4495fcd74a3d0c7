package tcpmux

import (
	"net/netip"
	"slices"
)

// connSetIndexMin is the size at which a connSet starts indexing: below
// it, a scan of a few pointers is as fast as a map and costs no memory.
const connSetIndexMin = 8

// connSet is a PacketConn's connections, one per remote address. An ICE
// session attaches one or a few (one per candidate pair), which a slice
// holds for less memory than a map. But anybody who knows or picks a ufrag
// may attach thousands, and every attach looks for a duplicate under the
// mux's lock; so once the set outgrows a scan it keeps an index, and find,
// add and remove stay O(1) (SPEC 8: no check may cost O(n)).
//
// Order is not kept: remove moves the last connection into the hole.
type connSet struct {
	list  []*streamConn
	index map[netip.AddrPort]int // position in list; nil until the set outgrows a scan
}

func (s *connSet) len() int { return len(s.list) }

// find returns the position of the connection from addr, or -1.
func (s *connSet) find(addr netip.AddrPort) int {
	if s.index != nil {
		if i, ok := s.index[addr]; ok {
			return i
		}
		return -1
	}
	for i, c := range s.list {
		if c.remoteAP == addr {
			return i
		}
	}
	return -1
}

// add appends c, whose address must not be in the set yet.
func (s *connSet) add(c *streamConn) {
	s.list = append(s.list, c)
	switch {
	case s.index != nil:
		s.index[c.remoteAP] = len(s.list) - 1
	case len(s.list) >= connSetIndexMin:
		s.index = make(map[netip.AddrPort]int, len(s.list))
		for i, c := range s.list {
			s.index[c.remoteAP] = i
		}
	}
}

// remove drops the connection at position i. A set that shrinks well
// below the indexing size drops its index and its spare room, so a session
// that outlived a flood of connections does not keep the flood's memory
// (SPEC 8: memory follows what is held, not what was).
func (s *connSet) remove(i int) {
	last := len(s.list) - 1
	if s.index != nil {
		delete(s.index, s.list[i].remoteAP)
		if i != last {
			s.index[s.list[last].remoteAP] = i
		}
	}
	s.list[i] = s.list[last]
	s.list[last] = nil
	s.list = s.list[:last]
	if s.index != nil && len(s.list) < connSetIndexMin/2 {
		s.index = nil
		s.list = slices.Clone(s.list)
	}
}

// take empties the set and returns what it held.
func (s *connSet) take() []*streamConn {
	list := s.list
	*s = connSet{}
	return list
}
