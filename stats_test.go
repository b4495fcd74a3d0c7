package tcpmux

import (
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"
)

// SPEC 6: the Stats contract, every counter through one mux.

// SPEC 6: one connection of every rejection reason through one mux, an
// admitted session with traffic, and a silent client, with every counter.
func TestStatsAccounting(t *testing.T) {
	const timeout = 400 * time.Millisecond
	m := newTestMux(t, TCPMuxParams{
		FirstStunBindTimeout:   timeout,
		MaxConnectionsPerUfrag: 1,
		PasswordLookup:         func(ufrag string) (string, bool) { return "pwd", ufrag != "stranger" },
	})
	require.Equal(t, Stats{}, m.Stats())

	waitClosedByPeer(t, dial(t, m, []byte("not a STUN message")), time.Second)            // NotSTUN
	waitClosedByPeer(t, dial(t, m, bindingRequestWith(t, stun.Fingerprint)), time.Second) // Username
	tooLarge := dial(t, m, nil)
	_, err := tooLarge.Write([]byte{0xff, 0xff})
	require.NoError(t, err)
	waitClosedByPeer(t, tooLarge, time.Second)                    // TooLarge
	waitClosedByPeer(t, dialUfrag(t, m, "stranger"), time.Second) // Auth
	require.NoError(t, dial(t, m, nil).Close())                   // Other: leaves before its first frame

	pc := getConn(t, m, "srv")
	req := bindingRequest(t, "srv")
	client := dial(t, m, req)
	_, from := readPacket(t, pc)
	waitClosedByPeer(t, dialUfrag(t, m, "srv"), time.Second) // Limit: one per ufrag

	want := RejectedStats{NotSTUN: 1, Username: 1, TooLarge: 1, Auth: 1, Other: 1, Limit: 1}
	eventually(t, func() bool { return m.Stats().Rejected == want }, "each reason counted once")

	sizes := []int{0, 10, 100}
	for _, n := range sizes {
		_, err := client.Write(frame(make([]byte, n)))
		require.NoError(t, err)
		got, _ := readPacket(t, pc)
		require.Len(t, got, n)
	}
	for _, n := range []int{5, 50} {
		_, err := pc.WriteTo(make([]byte, n), from)
		require.NoError(t, err)
		require.Len(t, readFrame(t, client), n)
	}

	// PacketsReceived may lag the packet ReadFrom returned by an instant.
	eventually(t, func() bool { return m.Stats().PacketsReceived == uint64(1+len(sizes)) }, "received counted")

	silent := dial(t, m, nil)
	eventually(t, func() bool { return m.Stats().ConnsPending == 1 }, "the silent client is pending")
	s := m.Stats()
	require.Equal(t, uint64(8), s.ConnsAccepted)
	require.Equal(t, uint64(6), s.ConnsRejected)
	require.Equal(t, 1, s.ConnsActive)
	require.Equal(t, 1, s.PacketConns)
	require.Equal(t, uint64(1+len(sizes)), s.PacketsReceived, "the first frame counts; rejected frames do not")
	require.Equal(t, uint64(len(req)+0+10+100), s.BytesReceived)
	require.Equal(t, uint64(2), s.PacketsSent)
	require.Equal(t, uint64(55), s.BytesSent)
	require.Zero(t, s.WriteDrops)
	require.Zero(t, s.MultipathConns)

	waitClosedByPeer(t, silent, timeout+time.Second)
	want.Timeout = 1
	eventually(t, func() bool { s := m.Stats(); return s.Rejected == want && s.ConnsPending == 0 }, "the silent client timed out")
	s = m.Stats()
	r := s.Rejected
	require.Equal(t, r.Timeout+r.NotSTUN+r.Username+r.TooLarge+r.Limit+r.Auth+r.Other, s.ConnsRejected)
	require.Equal(t, uint64(7), s.ConnsRejected)
	require.Equal(t, uint64(8), s.ConnsAccepted)

	require.NoError(t, client.Close())
	eventually(t, func() bool { return m.Stats().ConnsActive == 0 }, "the session's connection left")
	require.Equal(t, 1, m.Stats().PacketConns, "its PacketConn stays with its handle")
	require.NoError(t, pc.Close())
	eventually(t, func() bool { return m.Stats().PacketConns == 0 }, "and closes with it")
}
