package interop_test

import (
	"testing"

	"github.com/icetcp/tcpmux/interop/internal/harness"
	"github.com/pion/ice/v4"
	"github.com/stretchr/testify/require"
)

// TestCloseAndRestartOnLongLivedMux: one mux outlives many sessions.
//   - Agent Close: pion calls RemoveConnByUfrag and closes its handles; the
//     mux is left with no PacketConn and no connection, over and over.
//   - ICE restart: both agents take new credentials, the server gathers
//     again from the mux under its new ufrag, the client reconnects over a
//     new TCP connection, and the same ice.Conns carry data again. After
//     each restart the mux holds exactly one PacketConn and one connection
//     (the new ufrag's): nothing is left for the old ufrags.
//
// goleak then checks that no goroutine of the mux or of pion is left.
func TestCloseAndRestartOnLongLivedMux(t *testing.T) {
	leakCheck(t)
	ctx := testContext(t)
	mux := newMux(t, "tcp4", "127.0.0.1")
	port := muxPort(t, mux)
	types := []ice.NetworkType{ice.NetworkTypeTCP4}

	// Sessions that come and go.
	for i := range 3 {
		s := connect(ctx, t, mux, harness.Options{NetworkTypes: types})
		require.NoError(t, s.CheckServerPair(port))
		requireLevels(t, mux, 1, 1)
		_, err := harness.Exchange(ctx, s.ServerConn, s.ClientConn, harness.ExchangeConfig{Messages: 500, Seed: uint64(4000 + i)})
		require.NoError(t, err)
		require.NoError(t, s.Close())
		requireIdle(t, mux)
	}

	// One session through several ICE restarts.
	s := connect(ctx, t, mux, harness.Options{NetworkTypes: types})
	exchange(ctx, t, s, 5000)
	seen := map[string]bool{s.ServerUfrag: true}
	for i := range 3 {
		old := s.ServerUfrag
		require.NoError(t, s.Restart(ctx, nil), "restart %d", i)
		require.NotEqual(t, old, s.ServerUfrag)
		require.False(t, seen[s.ServerUfrag])
		seen[s.ServerUfrag] = true
		require.NoError(t, s.CheckServerPair(port))

		// Only the new ufrag's state remains.
		requireLevels(t, mux, 1, 1)
		exchange(ctx, t, s, uint64(5001+i))
		requireLevels(t, mux, 1, 1)
	}
	st := mux.Stats()
	require.Zero(t, st.ConnsRejected, "rejections: %+v", st.Rejected)
	require.Equal(t, uint64(3+4), st.ConnsAccepted, "one TCP connection per session and per restart")

	require.NoError(t, s.Close())
	requireIdle(t, mux)
}
