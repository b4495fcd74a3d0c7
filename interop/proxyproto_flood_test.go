package interop

import (
	"net"
	"testing"
	"time"

	"github.com/icetcp/tcpmux"
	"github.com/pion/stun/v3"
	proxyproto "github.com/pires/go-proxyproto"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// SPEC 8: the accept loop never waits on a peer. Behind a PROXY-protocol
// listener, RemoteAddr reads the header, so a mux that asked it in the
// accept loop (on the over-limit branch, to rank sources) stalled for the
// listener's ReadHeaderTimeout on every silent connection, and an honest
// client queued behind them waited as long. With the pending table (or the
// connection table) full of silent connections, and more silent ones
// arriving just before it, an honest client is admitted within a second.
func TestProxyProtocolFloodAdmitsHonestClient(t *testing.T) {
	defer goleak.VerifyNone(t)
	const limit = 4
	for _, tc := range []struct {
		name string
		tune func(*tcpmux.TCPMuxParams)
	}{
		{"MaxPendingConnections", func(p *tcpmux.TCPMuxParams) { p.MaxPendingConnections = limit }},
		{"MaxConnections", func(p *tcpmux.TCPMuxParams) { p.MaxConnections = limit }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := net.Listen("tcp4", "127.0.0.1:0")
			require.NoError(t, err)
			ln := tcpmux.KeepSocketLocalAddr(&proxyproto.Listener{Listener: raw, ReadHeaderTimeout: 3 * time.Second})
			params := tcpmux.TCPMuxParams{
				Listener:                     ln,
				FirstStunBindTimeout:         5 * time.Second,
				AliveDurationForConnFromStun: 5 * time.Second,
			}
			tc.tune(&params)
			mux := tcpmux.NewTCPMuxDefault(params)
			t.Cleanup(func() { closeMuxWithin(t, mux, 5*time.Second) })
			pc, err := mux.GetConnByUfrag("honest", false, net.IPv4(127, 0, 0, 1))
			require.NoError(t, err)
			t.Cleanup(func() { _ = pc.Close() })

			// silent connects a client that never sends its PROXY header.
			silent := func() {
				c, err := net.Dial("tcp4", raw.Addr().String())
				require.NoError(t, err)
				t.Cleanup(func() { _ = c.Close() })
			}
			for range limit {
				silent()
			}
			require.Eventually(t, func() bool {
				s := mux.Stats()
				return s.ConnsAccepted == limit && s.ConnsPending == limit
			}, 5*time.Second, time.Millisecond, "the silent connections fill the table")

			// More silent connections, then the honest client right behind
			// them in the accept queue.
			for range limit {
				silent()
			}
			req, err := stun.Build(stun.BindingRequest, stun.TransactionID, stun.NewUsername("honest:peer"), stun.Fingerprint)
			require.NoError(t, err)
			framed, err := tcpmux.AppendFrame(nil, req.Raw)
			require.NoError(t, err)
			client := &net.TCPAddr{IP: net.ParseIP("203.0.113.7").To4(), Port: 40000}
			header := proxyproto.HeaderProxyFromAddrs(2, client, &net.TCPAddr{IP: net.ParseIP("198.51.100.1").To4(), Port: 443})
			hdr, err := header.Format()
			require.NoError(t, err)

			start := time.Now()
			honest, err := net.Dial("tcp4", raw.Addr().String())
			require.NoError(t, err)
			t.Cleanup(func() { _ = honest.Close() })
			_, err = honest.Write(append(hdr, framed...))
			require.NoError(t, err)

			require.NoError(t, pc.SetReadDeadline(start.Add(5*time.Second)))
			buf := make([]byte, 1500)
			n, from, err := pc.ReadFrom(buf)
			took := time.Since(start)
			t.Logf("honest client's request read %v after its dial; stats %+v", took.Round(time.Microsecond), mux.Stats())
			require.NoError(t, err, "honest client not admitted within 5 s")
			require.Equal(t, req.Raw, buf[:n])
			require.Equal(t, "203.0.113.7:40000", from.String(), "the real client, from the PROXY header")
			require.Less(t, took, time.Second, "honest client admitted that long after its dial")

			require.Eventually(t, func() bool {
				return mux.Stats().ConnsAccepted == 2*limit+1
			}, 5*time.Second, time.Millisecond, "every connection accepted")
			s := mux.Stats()
			require.Positive(t, s.Rejected.Evicted, "silent connections evicted to make room")
			require.Equal(t, uint64(limit+1), s.Rejected.Evicted, "each arrival into a full table evicts one silent connection")
			require.Zero(t, s.Rejected.Limit, "nobody refused: silent connections are evictable")
			require.Equal(t, 1, s.ConnsActive)
			require.Equal(t, limit-1, s.ConnsPending)
		})
	}
}

// closeMuxWithin closes mux and fails the test if that takes over d.
func closeMuxWithin(t *testing.T, mux *tcpmux.TCPMuxDefault, d time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- mux.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(d):
		t.Errorf("mux Close did not return within %v", d)
		<-done
	}
}
