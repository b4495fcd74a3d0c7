package interop_test

import (
	"context"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/icetcp/tcpmux"
	"github.com/icetcp/tcpmux/interop/internal/harness"
	"github.com/pion/ice/v4"
	"github.com/stretchr/testify/require"
)

// credentials is what a server application knows about its agents: the
// local ufrag and password of each, for the mux's PasswordLookup.
type credentials struct {
	mu   sync.Mutex
	pwds map[string]string
}

func (c *credentials) add(ufrag, pwd string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pwds[ufrag] = pwd
}

func (c *credentials) lookup(ufrag string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pwd, ok := c.pwds[ufrag]

	return pwd, ok
}

// TestHardenedMuxWithPionAgents: a mux with PasswordLookup (a connection is
// admitted only if its first Binding request carries MESSAGE-INTEGRITY made
// with the password of a known ufrag), buffered writes, a small read queue
// and connection limits still carries real pion sessions unchanged: pion's
// ICE-TCP checks are authenticated exactly as the library expects. A client
// whose password does not match the one the application registered for the
// ufrag is rejected as Auth, joins no PacketConn, and never connects.
func TestHardenedMuxWithPionAgents(t *testing.T) {
	leakCheck(t)
	ctx := testContext(t)
	creds := &credentials{pwds: map[string]string{}}
	mux := newMux(t, "tcp4", "127.0.0.1", func(p *tcpmux.TCPMuxParams) {
		p.PasswordLookup = creds.lookup
		p.WriteBufferSize = 256 << 10 // well above the exchange's window
		p.ReadBufferSize = 8
		p.MaxConnections = 16
		p.MaxPendingConnections = 8
		p.MaxConnectionsPerUfrag = 2
	})
	port := muxPort(t, mux)
	types := []ice.NetworkType{ice.NetworkTypeTCP4}

	for i := range 2 {
		ufrag, pwd := rand.Text()[:16], rand.Text()
		creds.add(ufrag, pwd)
		s := connect(ctx, t, mux, harness.Options{
			NetworkTypes:  types,
			ServerOptions: []ice.AgentOption{ice.WithLocalCredentials(ufrag, pwd)},
		})
		require.Equal(t, ufrag, s.ServerUfrag)
		require.NoError(t, s.CheckServerPair(port))
		exchange(ctx, t, s, uint64(6000+i))
		require.NoError(t, s.Close())
		requireIdle(t, mux)
	}
	st := mux.Stats()
	require.Zero(t, st.ConnsRejected, "rejections: %+v", st.Rejected)
	require.Zero(t, st.WriteDrops)

	// The application registered another password for this ufrag than the
	// one the agent (and so its client) uses: the mux turns the client away.
	ufrag, pwd := rand.Text()[:16], rand.Text()
	creds.add(ufrag, rand.Text())
	connectCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	failed := make(chan error, 1)
	go func() {
		s, err := harness.Connect(connectCtx, mux, loggers, harness.Options{
			NetworkTypes:  types,
			ServerOptions: []ice.AgentOption{ice.WithLocalCredentials(ufrag, pwd)},
		})
		if s != nil {
			_ = s.Close()
		}
		failed <- err
	}()
	require.Eventually(t, func() bool { return mux.Stats().Rejected.Auth >= 1 }, settle, poll)
	// The rejected connection joined nothing: the only state is the
	// server agent's own PacketConn, with no connection in it.
	st = mux.Stats()
	require.Zero(t, st.ConnsActive)
	require.Equal(t, 1, st.PacketConns)
	cancel()
	select {
	case err := <-failed:
		require.Error(t, err, "a client with the wrong password connected")
	case <-time.After(settle):
		t.Fatal("Connect did not return after cancel")
	}
	requireIdle(t, mux)
}
