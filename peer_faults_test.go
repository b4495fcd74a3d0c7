package tcpmux

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// SPEC 1, 2 and 4: peers that fail at awkward moments, over real sockets
// unless a timing race needs an in-memory pipe: a reset mid-frame, a
// half-close, a peer that leaves right after its first frame.

// SPEC 4: a peer that resets mid-frame is removed quietly; the other
// connection of the PacketConn keeps working both ways, and nothing of
// the torn frame is delivered.
func TestResetMidFrame(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	pc := getConn(t, m, "srv")
	a := dialUfrag(t, m, "srv")
	_, aAddr := readPacket(t, pc)
	b := dialUfrag(t, m, "srv")
	_, bAddr := readPacket(t, pc)
	require.Equal(t, 2, m.Stats().ConnsActive)

	torn := frame(make([]byte, 1000))[:500]
	_, err := a.Write(append(frame([]byte("complete")), torn...))
	require.NoError(t, err)
	got, from := readPacket(t, pc)
	require.Equal(t, "complete", string(got))
	require.Equal(t, aAddr.String(), from.String())
	require.NoError(t, a.(*net.TCPConn).SetLinger(0))
	require.NoError(t, a.Close()) // RST
	eventually(t, func() bool { return m.Stats().ConnsActive == 1 }, "the reset connection is removed")

	_, err = pc.WriteTo([]byte("to a"), aAddr)
	require.ErrorIs(t, err, ErrNoConnForAddr)

	_, err = b.Write(frame([]byte("from b")))
	require.NoError(t, err)
	got, from = readPacket(t, pc)
	require.Equal(t, "from b", string(got), "the torn frame was not delivered")
	require.Equal(t, bAddr.String(), from.String())
	_, err = pc.WriteTo([]byte("to b"), bAddr)
	require.NoError(t, err)
	require.Equal(t, "to b", string(readFrame(t, b)))
	require.Equal(t, 1, m.Stats().PacketConns)
}

// SPEC 4: a peer that half-closes after its frames has every complete frame
// delivered, in order, even after its connection is removed; the trailing
// partial frame is not; the ufrag's PacketConn lives on.
func TestHalfCloseDeliversEveryFrame(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	pc := getConn(t, m, "srv")
	c := dial(t, m, nil)
	stream := frame(bindingRequest(t, "srv"))
	const frames = 20
	for i := range frames {
		stream = append(stream, frame(pattern(i*97, byte(i)))...)
	}
	stream = append(stream, 0x01, 0x00, 'x') // a partial frame
	_, err := c.Write(stream)
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	eventually(t, func() bool {
		s := m.Stats()
		return s.PacketsReceived == frames+1 && s.ConnsActive == 0
	}, "every complete frame queued, then the connection removed")
	waitClosedByPeer(t, c, time.Second)

	_, from := readPacket(t, pc)
	require.Equal(t, c.LocalAddr().String(), from.String())
	for i := range frames {
		got, _ := readPacket(t, pc)
		require.Equal(t, pattern(i*97, byte(i)), got, "frame %d", i)
	}
	s := m.Stats()
	require.Equal(t, 1, s.PacketConns)
	require.Zero(t, s.ConnsRejected)

	again := dialUfrag(t, m, "srv")
	_, from = readPacket(t, pc)
	require.Equal(t, again.LocalAddr().String(), from.String(), "a new connection joins the same PacketConn")
}

// closeOnDrainConn is the server end of a net.Pipe whose client closes
// as soon as the server has read its last byte: a peer that sends its
// request and leaves at once, without a timing race.
type closeOnDrainConn struct {
	net.Conn
	peer      net.Conn
	remaining int
}

func (c *closeOnDrainConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.remaining -= n; n > 0 && c.remaining == 0 {
		_ = c.peer.Close()
	}
	return n, err
}

// SPEC 1, 2 and 4: a peer that sends a valid first frame (and a packet)
// and closes at once is admitted and its packets are delivered; its EOF
// only removes it. Over an in-memory listener (SPEC 2: any listener
// works), where a pipe refuses deadlines once its other end closed.
func TestPeerLeavingRightAfterFirstFrame(t *testing.T) {
	ln := newPipeListener("127.0.0.1:443")
	m := newTestMux(t, TCPMuxParams{Listener: ln})
	pc := getConn(t, m, "srv")
	req := bindingRequest(t, "srv")
	stream := append(frame(req), frame([]byte("last words"))...)

	client, server := net.Pipe()
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	ln.conns <- &addrConn{
		Conn:   &closeOnDrainConn{Conn: server, peer: client, remaining: len(stream)},
		local:  mustTCPAddr("127.0.0.1:443"),
		remote: mustTCPAddr("192.0.2.1:1000"),
	}
	go func() { _, _ = client.Write(stream) }()

	eventually(t, func() bool { s := m.Stats(); return s.ConnsRejected > 0 || s.PacketsReceived > 0 }, "a verdict")
	require.Zero(t, m.Stats().ConnsRejected, "rejected: %+v", m.Stats().Rejected)
	got, _ := readPacket(t, pc)
	require.Equal(t, req, got)
	got, _ = readPacket(t, pc)
	require.Equal(t, "last words", string(got))
	eventually(t, func() bool { return m.Stats().ConnsActive == 0 }, "removed at EOF")
}
