package interop_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/icetcp/tcpmux"
	"github.com/icetcp/tcpmux/interop/internal/harness"
	"github.com/pion/ice/v4"
	"github.com/pion/logging"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// Bounds for every network test: each stops by itself well within them.
const (
	testTimeout = 60 * time.Second
	settle      = 10 * time.Second // for require.Eventually on Stats
	poll        = 10 * time.Millisecond
)

// messagesPerDirection is "thousands of messages each way" per session.
const messagesPerDirection = 2000

func leakCheck(t *testing.T) {
	t.Helper()
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)

	return ctx
}

var loggers logging.LoggerFactory = harness.Loggers(logging.LogLevelWarn)

// newMux starts the library's mux on a fresh loopback port of network
// ("tcp4" on 127.0.0.1, "tcp6" on ::1), with params adjusted by the
// optional tune functions. The mux is closed at cleanup.
func newMux(t *testing.T, network, host string, tune ...func(*tcpmux.TCPMuxParams)) *tcpmux.TCPMuxDefault {
	t.Helper()
	ln, err := net.Listen(network, net.JoinHostPort(host, "0"))
	require.NoError(t, err)
	params := tcpmux.TCPMuxParams{
		Listener: ln,
		Logger:   loggers.NewLogger("tcpmux"),
		// Bounded so that a stuck test fails instead of waiting 30 s.
		FirstStunBindTimeout:         5 * time.Second,
		AliveDurationForConnFromStun: 5 * time.Second,
	}
	for _, f := range tune {
		f(&params)
	}
	mux := tcpmux.NewTCPMuxDefault(params)
	t.Cleanup(func() { require.NoError(t, mux.Close()) })

	return mux
}

func muxPort(t *testing.T, mux interface{ LocalAddr() net.Addr }) int {
	t.Helper()
	addr, ok := mux.LocalAddr().(*net.TCPAddr)
	require.True(t, ok, "LocalAddr is %T", mux.LocalAddr())

	return addr.Port
}

// requireIdle waits until mux holds no PacketConn and no connection: no
// state is left for any ufrag.
func requireIdle(t *testing.T, mux *tcpmux.TCPMuxDefault) {
	t.Helper()
	requireLevels(t, mux, 0, 0)
}

// requireLevels waits until mux has exactly packetConns PacketConns and
// active attached connections, and no pending connection.
func requireLevels(t *testing.T, mux *tcpmux.TCPMuxDefault, packetConns, active int) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		st := mux.Stats()
		assert.Equal(c, packetConns, st.PacketConns, "PacketConns")
		assert.Equal(c, active, st.ConnsActive, "ConnsActive")
		assert.Zero(c, st.ConnsPending, "ConnsPending")
	}, settle, poll)
}

// connect runs harness.Connect and closes the session at cleanup.
func connect(ctx context.Context, t *testing.T, mux ice.TCPMux, o harness.Options) *harness.Session {
	t.Helper()
	s, err := harness.Connect(ctx, mux, loggers, o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })

	return s
}

// exchange moves messagesPerDirection messages each way over the session
// and checks them.
func exchange(ctx context.Context, t *testing.T, s *harness.Session, seed uint64) harness.ExchangeResult {
	t.Helper()
	res, err := harness.Exchange(ctx, s.ServerConn, s.ClientConn, harness.ExchangeConfig{
		Messages: messagesPerDirection,
		Seed:     seed,
	})
	require.NoError(t, err)
	require.Equal(t, messagesPerDirection, res.Messages)

	return res
}

// requireCarried checks that, since before, mux has received at least
// packets packets and received bytes, and sent at least sent bytes: the
// application data went through it. It polls, because the library counts a
// received packet just after queueing it, so a snapshot taken right after
// the application read it may not include it yet (see the report).
func requireCarried(t *testing.T, mux *tcpmux.TCPMuxDefault, before tcpmux.Stats, packets int, received, sent uint64) tcpmux.Stats {
	t.Helper()
	var after tcpmux.Stats
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		after = mux.Stats()
		assert.GreaterOrEqual(c, after.PacketsReceived-before.PacketsReceived, uint64(packets), "PacketsReceived")
		assert.GreaterOrEqual(c, after.BytesReceived-before.BytesReceived, received, "BytesReceived")
		assert.GreaterOrEqual(c, after.PacketsSent-before.PacketsSent, uint64(packets), "PacketsSent")
		assert.GreaterOrEqual(c, after.BytesSent-before.BytesSent, sent, "BytesSent")
	}, settle, poll)

	return after
}
