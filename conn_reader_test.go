package tcpmux

import (
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

// stuckTimeout is a timeout that is not Temporary: a crypto/tls.Conn that
// gets one from its transport keeps it and fails every later Read with it.
type stuckTimeout struct{}

func (stuckTimeout) Error() string   { return "wrapper timed out" }
func (stuckTimeout) Timeout() bool   { return true }
func (stuckTimeout) Temporary() bool { return false }

// stuckConn is a wrapper whose timeout, once stuck, fails every Read at
// once, after waiting delay (zero: none), as a tls.Conn over a transport
// whose timeout is not Temporary does. After spinLimit such Reads it gives
// up with another error, so that a mux that keeps reading fails the test
// instead of spinning in it.
type stuckConn struct {
	net.Conn
	delay time.Duration
	stuck atomic.Bool
	reads atomic.Int64
	// unstickAfter, if set, makes the timeout pass after that many stuck
	// Reads: a wrapper's own timeout that does not stick.
	unstickAfter int64
}

const spinLimit = 100_000

var errStuckSpun = errors.New("the mux kept reading a stuck stream")

func (c *stuckConn) Read(b []byte) (int, error) {
	if !c.stuck.Load() {
		return c.Conn.Read(b)
	}
	n := c.reads.Add(1)
	if n > spinLimit {
		return 0, errStuckSpun
	}
	time.Sleep(c.delay)
	if n == c.unstickAfter {
		c.stuck.Store(false)
	}
	return 0, stuckTimeout{}
}

// stuckPair is a mux over net.Pipe whose one connection is wrapped in a
// stuckConn, with a claimed PacketConn that has read the first frame.
func stuckPair(t *testing.T, delay time.Duration) (net.PacketConn, net.Conn, *stuckConn) {
	t.Helper()
	var wrapped *stuckConn
	_, pc, client := wrappedPipePair(t, func(server net.Conn) net.Conn {
		wrapped = &stuckConn{Conn: server, delay: delay}
		return wrapped
	})
	return pc, client, wrapped
}

// A wrapper whose timeout stuck makes every Read fail at once; reading on
// would spin a core for as long as the connection lives. The connection's
// goroutine drops such a stream as broken at once, whether the stream
// stuck while the goroutine read it or while a reader held the socket on
// loan (that reader hands the socket back on the first timeout it cannot
// explain).
func TestStuckWrapperTimeoutDropsConnection(t *testing.T) {
	for _, direct := range []bool{false, true} {
		name := map[bool]string{false: "queued", true: "direct"}[direct]
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				pc, client, wrapped := stuckPair(t, 0)
				m := pc.(*packetConnHandle).pc.mux
				var holder <-chan pcReadResult
				if direct {
					require.NoError(t, pc.SetReadDeadline(time.Time{}))
					first := readerInPipeSocket(t, pc, client)
					holder = startReader(pc, 1500) // waits its turn
					synctest.Wait()
					wrapped.stuck.Store(true)
					// The Read in progress gets this frame; the next
					// reader takes the socket and finds it stuck.
					writeFrames(t, client, "read whole")
					require.NoError(t, (<-first).err)
				} else {
					wrapped.stuck.Store(true)
					// The Read in progress takes part of this frame;
					// the stream breaks before the rest.
					go func() { _, _ = client.Write(frame([]byte("cut short"))) }()
				}
				synctest.Wait()

				require.Less(t, wrapped.reads.Load(), int64(spinLimit), "the mux spun on the stuck stream")
				require.Zero(t, pc.(*packetConnHandle).pc.connCount(), "the stuck connection is still attached")
				require.Zero(t, m.Stats().ConnsActive)
				if direct {
					require.NoError(t, pc.Close())
					require.ErrorIs(t, (<-holder).err, net.ErrClosed)
				}
			})
		})
	}
}

// A wrapper's own timeout that does not stick (it came after a while, and
// the next Read waits for data again) leaves the connection as it is,
// whoever reads the socket: frames before and after it arrive.
func TestWrapperTimeoutKeepsConnection(t *testing.T) {
	for _, direct := range []bool{false, true} {
		name := map[bool]string{false: "queued", true: "direct"}[direct]
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				pc, client, wrapped := stuckPair(t, 5*stuckTimeoutBound)
				wrapped.unstickAfter = 1
				if direct {
					require.NoError(t, pc.SetReadDeadline(time.Time{}))
					writeFrames(t, client, "wake") // an idle connection lends nothing
					readPacket(t, pc)
				}
				wrapped.stuck.Store(true) // from the Read after the one in progress
				writeFrames(t, client, "before")
				got, _ := readPacket(t, pc)
				require.Equal(t, "before", string(got))
				require.NoError(t, pc.SetReadDeadline(time.Time{}))
				pending := startReader(pc, 1500)
				time.Sleep(10 * stuckTimeoutBound)
				synctest.Wait()
				require.Equal(t, int64(1), wrapped.reads.Load(), "the wrapper timed out once")
				require.Equal(t, 1, pc.(*packetConnHandle).pc.connCount(), "the connection was dropped")

				writeFrames(t, client, "after")
				r := <-pending
				require.NoError(t, r.err)
				require.Equal(t, len("after"), r.n)
			})
		})
	}
}
