package tcpmux

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// proxiedListener stands for a PROXY-protocol listener: its connections
// report the header's addresses (the client behind the balancer, and the
// balancer's destination) and give their socket through Raw, as
// go-proxyproto's do.
type proxiedListener struct{ net.Listener }

func (l proxiedListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &proxiedConn{Conn: conn}, nil
}

type proxiedConn struct{ net.Conn }

func (c *proxiedConn) LocalAddr() net.Addr  { return mustTCPAddr("203.0.113.1:443") }
func (c *proxiedConn) RemoteAddr() net.Addr { return mustTCPAddr("198.51.100.7:5000") }
func (c *proxiedConn) Raw() net.Conn        { return c.Conn }

func TestKeepSocketLocalAddr(t *testing.T) {
	for _, keep := range []bool{true, false} {
		t.Run(map[bool]string{true: "wrapped", false: "bare"}[keep], func(t *testing.T) {
			raw, err := net.Listen("tcp4", "127.0.0.1:0")
			require.NoError(t, err)
			var ln net.Listener = proxiedListener{raw}
			if keep {
				ln = KeepSocketLocalAddr(ln)
			}
			m := newTestMux(t, TCPMuxParams{Listener: ln})
			pc := getConn(t, m, "srv")
			client := dialUfrag(t, m, "srv")
			if !keep {
				// The failure the wrapper prevents: the connection keys a
				// second, unclaimed PacketConn by the balancer's address.
				eventually(t, func() bool { return m.Stats().PacketConns == 2 }, "an unclaimed PacketConn for the balancer's IP")
				require.NoError(t, pc.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
				_, _, err := pc.ReadFrom(make([]byte, 1500))
				require.ErrorIs(t, err, os.ErrDeadlineExceeded)
				return
			}
			_, from := readPacket(t, pc)
			require.Equal(t, "198.51.100.7:5000", from.String(), "the real client, as the PROXY header says")
			_, err = pc.WriteTo([]byte("hello"), from)
			require.NoError(t, err)
			require.Equal(t, "hello", string(readFrame(t, client)))
			require.Equal(t, 1, m.Stats().PacketConns)
		})
	}
}
