package interop

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/icetcp/tcpmux"
	"github.com/pion/stun/v3"
	proxyproto "github.com/pires/go-proxyproto"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// Behind a load balancer that speaks the PROXY protocol, ReadFrom reports
// the real client's address and WriteTo reaches it.
func TestProxyProtocolReportsRealClient(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, version := range []byte{1, 2} {
		t.Run(map[byte]string{1: "v1", 2: "v2"}[version], func(t *testing.T) {
			raw, err := net.Listen("tcp4", "127.0.0.1:0")
			require.NoError(t, err)
			ln := tcpmux.KeepSocketLocalAddr(&proxyproto.Listener{Listener: raw, ReadHeaderTimeout: 2 * time.Second})
			mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{Listener: ln})
			defer mux.Close()
			pc, err := mux.GetConnByUfrag("srv", false, net.IPv4(127, 0, 0, 1))
			require.NoError(t, err)
			defer pc.Close()

			// The load balancer connects and announces the real client.
			lb, err := net.Dial("tcp4", raw.Addr().String())
			require.NoError(t, err)
			defer lb.Close()
			client := &net.TCPAddr{IP: net.ParseIP("203.0.113.7").To4(), Port: 40000}
			header := proxyproto.HeaderProxyFromAddrs(version, client, &net.TCPAddr{IP: net.ParseIP("198.51.100.1").To4(), Port: 443})
			_, err = header.WriteTo(lb)
			require.NoError(t, err)
			req, err := stun.Build(stun.BindingRequest, stun.TransactionID, stun.NewUsername("srv:peer"), stun.Fingerprint)
			require.NoError(t, err)
			framed, err := tcpmux.AppendFrame(nil, req.Raw)
			require.NoError(t, err)
			_, err = lb.Write(framed)
			require.NoError(t, err)

			require.NoError(t, pc.SetReadDeadline(time.Now().Add(5*time.Second)))
			buf := make([]byte, 1500)
			n, from, err := pc.ReadFrom(buf)
			require.NoError(t, err)
			require.Equal(t, req.Raw, buf[:n])
			require.Equal(t, "203.0.113.7:40000", from.String(), "the real client, not the load balancer")

			_, err = pc.WriteTo([]byte("to the real client"), from)
			require.NoError(t, err)
			require.NoError(t, lb.SetReadDeadline(time.Now().Add(5*time.Second)))
			var hdr [2]byte
			_, err = io.ReadFull(lb, hdr[:])
			require.NoError(t, err)
			got := make([]byte, binary.BigEndian.Uint16(hdr[:]))
			_, err = io.ReadFull(lb, got)
			require.NoError(t, err)
			require.Equal(t, "to the real client", string(got))
		})
	}
}
