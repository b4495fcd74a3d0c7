package interop_test

import (
	"sync"
	"testing"

	"github.com/icetcp/tcpmux/interop/internal/harness"
	"github.com/pion/ice/v4"
	"github.com/stretchr/testify/require"
)

// TestEightPairsShareOneMux: eight server agents take their passive
// candidate from one mux, eight clients connect at once, and all sixteen
// directions move thousands of messages concurrently. Each session's data
// comes from its own seed, so a packet routed to the wrong ufrag, or to the
// wrong TCP connection, fails the byte-for-byte check; each server's
// selected pair is also checked to be with its own client.
func TestEightPairsShareOneMux(t *testing.T) {
	const pairs = 8
	leakCheck(t)
	ctx := testContext(t)
	mux := newMux(t, "tcp4", "127.0.0.1")
	port := muxPort(t, mux)
	types := []ice.NetworkType{ice.NetworkTypeTCP4}

	sessions := make([]*harness.Session, pairs)
	errs := make([]error, pairs)
	var wg sync.WaitGroup
	for i := range pairs {
		wg.Go(func() {
			sessions[i], errs[i] = harness.Connect(ctx, mux, loggers, harness.Options{NetworkTypes: types})
		})
	}
	wg.Wait()
	for i := range pairs {
		if sessions[i] != nil {
			t.Cleanup(func() { _ = sessions[i].Close() })
		}
	}
	for i := range pairs {
		require.NoError(t, errs[i], "session %d", i)
	}

	ufrags := map[string]bool{}
	for i, s := range sessions {
		require.False(t, ufrags[s.ServerUfrag], "ufrag reused")
		ufrags[s.ServerUfrag] = true
		require.NoError(t, s.CheckServerPair(port), "session %d", i)
		// The server's peer is its own client's TCP connection.
		sp, err := s.ServerPair()
		require.NoError(t, err)
		cp, err := s.Client.GetSelectedCandidatePair()
		require.NoError(t, err)
		require.NotNil(t, cp)
		require.Equal(t, cp.Local.Port(), sp.Remote.Port(), "session %d: server talks to another client", i)
		require.Equal(t, port, cp.Remote.Port())
	}
	// One PacketConn and one TCP connection per ufrag.
	requireLevels(t, mux, pairs, pairs)

	before := mux.Stats()
	results := make([]harness.ExchangeResult, pairs)
	for i, s := range sessions {
		wg.Go(func() {
			results[i], errs[i] = harness.Exchange(ctx, s.ServerConn, s.ClientConn, harness.ExchangeConfig{
				Messages: messagesPerDirection,
				Seed:     uint64(1000 + i),
			})
		})
	}
	wg.Wait()
	var toServers, toClients uint64
	for i := range pairs {
		require.NoError(t, errs[i], "session %d", i)
		toServers += results[i].BytesBToA
		toClients += results[i].BytesAToB
	}
	after := requireCarried(t, mux, before, pairs*messagesPerDirection, toServers, toClients)
	require.Zero(t, after.ConnsRejected, "rejections: %+v", after.Rejected)
	require.Zero(t, after.WriteDrops)

	// Closing half the sessions removes exactly their state.
	for _, s := range sessions[:pairs/2] {
		require.NoError(t, s.Close())
	}
	requireLevels(t, mux, pairs/2, pairs/2)
	// The others still work.
	for i, s := range sessions[pairs/2:] {
		_, err := harness.Exchange(ctx, s.ServerConn, s.ClientConn, harness.ExchangeConfig{Messages: 200, Seed: uint64(2000 + i)})
		require.NoError(t, err)
	}
	for _, s := range sessions[pairs/2:] {
		require.NoError(t, s.Close())
	}
	requireIdle(t, mux)
}
