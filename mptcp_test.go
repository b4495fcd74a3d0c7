package tcpmux

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// SPEC 2 and 6: MPTCP listeners and clients. The test skips where the
// kernel has no MPTCP (it reads /proc/sys/net/mptcp/enabled, so anywhere
// but Linux), and builds everywhere.

// SPEC 2 and 6: an MPTCP listener and client work end to end and are
// counted in MultipathConns while attached.
func TestMultipathTCP(t *testing.T) {
	if b, err := os.ReadFile("/proc/sys/net/mptcp/enabled"); err != nil || strings.TrimSpace(string(b)) != "1" {
		t.Skipf("MPTCP not enabled in this kernel (/proc/sys/net/mptcp/enabled: %q, %v)", b, err)
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	require.NoError(t, err)
	m := newTestMux(t, TCPMuxParams{Listener: ln})
	pc := getConn(t, m, "mptcp")

	var d net.Dialer
	d.SetMultipathTCP(true)
	conn, err := d.Dial("tcp", m.LocalAddr().String())
	require.NoError(t, err)
	defer conn.Close()
	if mp, err := conn.(*net.TCPConn).MultipathTCP(); err != nil || !mp {
		t.Skipf("the kernel did not negotiate MPTCP on loopback (MultipathTCP() = %v, %v)", mp, err)
	}

	req := bindingRequest(t, "mptcp")
	_, err = conn.Write(frame(req))
	require.NoError(t, err)
	got, from := readPacket(t, pc)
	require.Equal(t, req, got)
	for i := range 10 {
		p := []byte(fmt.Sprintf("up %d", i))
		_, err = conn.Write(frame(p))
		require.NoError(t, err)
		got, _ = readPacket(t, pc)
		require.Equal(t, p, got)
		p = make([]byte, 1000*i)
		_, err = pc.WriteTo(p, from)
		require.NoError(t, err)
		require.Equal(t, p, readFrame(t, conn))
	}
	s := m.Stats()
	require.Equal(t, 1, s.ConnsActive)
	require.Equal(t, 1, s.MultipathConns, "the attached connection uses MPTCP")

	require.NoError(t, conn.Close())
	eventually(t, func() bool { s := m.Stats(); return s.ConnsActive == 0 && s.MultipathConns == 0 }, "MultipathConns drops when it leaves")
}
