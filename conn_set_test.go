package tcpmux

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestConnSetMatchesModel drives a connSet across its indexing threshold
// both ways with random adds and removes, checking every address against a
// map after each step.
func TestConnSetMatchesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var s connSet
	model := map[netip.AddrPort]*streamConn{}
	addr := func(n int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(n >> 8), byte(n)}), 5000)
	}
	for step := range 5000 {
		n := rng.IntN(3 * connSetIndexMin)
		a := addr(n)
		i := s.find(a)
		if c, ok := model[a]; ok {
			require.GreaterOrEqual(t, i, 0, "step %d: %v lost", step, a)
			require.Same(t, c, s.list[i])
			if rng.IntN(2) == 0 { // remove, or leave it for find
				s.remove(i)
				delete(model, a)
			}
		} else {
			require.Equal(t, -1, i, "step %d: %v found but never added", step, a)
			c := &streamConn{remoteAP: a}
			s.add(c)
			model[a] = c
		}
		require.Equal(t, len(model), s.len())
		for a, c := range model {
			i := s.find(a)
			require.GreaterOrEqual(t, i, 0, "step %d: %v lost", step, a)
			require.Same(t, c, s.list[i])
		}
	}
	list := s.take()
	require.Len(t, list, len(model))
	require.Zero(t, s.len())
	require.Equal(t, -1, s.find(addr(0)))
}

// BenchmarkConnSetAttach is the cost of one attach's duplicate check and
// add, and one detach, in a set of the given size: it must not grow with
// the size (SPEC 8), since an attacker picks the size.
func BenchmarkConnSetAttach(b *testing.B) {
	for _, size := range []int{1, 4, 100, 10000} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			var s connSet
			for n := range size {
				s.add(&streamConn{remoteAP: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 1}), uint16(n))})
			}
			c := &streamConn{remoteAP: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 2}), 1)}
			for b.Loop() {
				if s.find(c.remoteAP) >= 0 {
					b.Fatal("duplicate")
				}
				s.add(c)
				s.remove(s.find(c.remoteAP))
			}
		})
	}
}

// A set that grew past the indexing size and shrank back keeps neither
// the index nor the room of its peak.
func TestConnSetShrinksAfterFlood(t *testing.T) {
	var s connSet
	for n := range 1000 {
		s.add(&streamConn{remoteAP: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 1}), uint16(n))})
	}
	require.NotNil(t, s.index)
	for s.len() > 2 {
		s.remove(0)
	}
	require.Nil(t, s.index, "the index outlived the flood")
	require.LessOrEqual(t, cap(s.list), connSetIndexMin, "the list kept the flood's room")
	for _, c := range s.list {
		require.Equal(t, s.find(c.remoteAP), slices.Index(s.list, c))
	}
}
