package tcpmux

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSmokeRoundTrip(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	pc := getConn(t, m, "srv")
	req := bindingRequest(t, "srv")
	client := dial(t, m, req)

	got, from := readPacket(t, pc)
	require.Equal(t, req, got, "the first frame is delivered")
	require.Equal(t, client.LocalAddr().String(), from.String())

	_, err := client.Write(frame([]byte("hello")))
	require.NoError(t, err)
	got, _ = readPacket(t, pc)
	require.Equal(t, "hello", string(got))

	n, err := pc.WriteTo([]byte("world"), from)
	require.NoError(t, err)
	require.Equal(t, 5, n)
	require.Equal(t, "world", string(readFrame(t, client)))

	local := pc.LocalAddr().(*net.TCPAddr)
	require.True(t, local.IP.Equal(net.IPv4(127, 0, 0, 1)))
	require.Equal(t, m.LocalAddr().(*net.TCPAddr).Port, local.Port)
}
