package interop_test

import (
	"net"
	"testing"

	"github.com/icetcp/tcpmux"
	"github.com/icetcp/tcpmux/interop/internal/harness"
	"github.com/pion/ice/v4"
	"github.com/stretchr/testify/require"
)

// TestMultiMuxTwoPorts: a MultiTCPMuxDefault over two listeners. pion's
// agent sees ice.AllConnsGetter and advertises one passive candidate per
// port. Two sessions are signalled one port each, so each port carries a
// full, checked exchange, and each mux's counters show it; a third session
// is given both candidates and its client reaches both ports.
func TestMultiMuxTwoPorts(t *testing.T) {
	leakCheck(t)
	ctx := testContext(t)
	muxes := []*tcpmux.TCPMuxDefault{newMux(t, "tcp4", "127.0.0.1"), newMux(t, "tcp4", "127.0.0.1")}
	ports := []int{muxPort(t, muxes[0]), muxPort(t, muxes[1])}
	multi := tcpmux.NewMultiTCPMuxDefault(muxes[0], muxes[1])
	t.Cleanup(func() { require.NoError(t, multi.Close()) })

	// pion only gathers TCP candidates on the IP the mux reports.
	la, ok := multi.LocalAddr().(*net.TCPAddr)
	require.True(t, ok)
	require.Equal(t, "127.0.0.1", la.IP.String())
	require.Equal(t, ports[0], la.Port)

	types := []ice.NetworkType{ice.NetworkTypeTCP4}
	onPort := func(port int) func(ice.Candidate) bool {
		return func(c ice.Candidate) bool { return c.Port() == port }
	}
	for i, port := range ports {
		s := connect(ctx, t, multi, harness.Options{NetworkTypes: types, KeepServerCandidate: onPort(port)})

		// One passive candidate per port.
		require.Len(t, s.ServerCandidates, 2)
		got := []int{}
		for _, c := range s.ServerCandidates {
			require.Equal(t, ice.TCPTypePassive, c.TCPType())
			require.Equal(t, "127.0.0.1", c.Address())
			got = append(got, c.Port())
		}
		require.ElementsMatch(t, ports, got)

		// The pair uses the port it was given.
		require.NoError(t, s.CheckServerPair(port))

		// Each mux holds one PacketConn for the ufrag (GetAllConns took a
		// handle on every mux); only the signalled one has a connection.
		requireLevels(t, muxes[i], 1, 1)
		requireLevels(t, muxes[1-i], 1, 0)

		before := muxes[i].Stats()
		otherBefore := muxes[1-i].Stats()
		res := exchange(ctx, t, s, uint64(3000+i))
		requireCarried(t, muxes[i], before, messagesPerDirection, res.BytesBToA, res.BytesAToB)
		// Nothing of it went through the other port.
		require.Equal(t, otherBefore.PacketsReceived, muxes[1-i].Stats().PacketsReceived)

		require.NoError(t, s.Close())
		requireIdle(t, muxes[0])
		requireIdle(t, muxes[1])
	}
	for i, m := range muxes {
		st := m.Stats()
		require.Equal(t, uint64(1), st.ConnsAccepted, "mux %d", i)
		require.Zero(t, st.ConnsRejected, "mux %d: %+v", i, st.Rejected)
	}

	// Given both candidates, the client connects to both ports and the
	// session works over whichever pair ICE selects.
	s := connect(ctx, t, multi, harness.Options{NetworkTypes: types})
	require.NoError(t, s.CheckServerPair(ports...))
	for i, m := range muxes {
		require.Eventually(t, func() bool { return m.Stats().ConnsAccepted == 2 }, settle, poll, "mux %d", i)
	}
	exchange(ctx, t, s, 3100)
	require.NoError(t, s.Close())
	requireIdle(t, muxes[0])
	requireIdle(t, muxes[1])
}
