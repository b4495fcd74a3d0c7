package metrics_test

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/icetcp/tcpmux"
	"github.com/icetcp/tcpmux/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// fixedStats is a StatsSource with chosen values.
type fixedStats tcpmux.Stats

func (f fixedStats) Stats() tcpmux.Stats { return tcpmux.Stats(f) }

// Every Stats field reaches its metric, counters as counters with _total
// names, rejections under one metric with a reason label.
func TestCollectorExportsEveryField(t *testing.T) {
	src := fixedStats{
		ConnsAccepted: 100, ConnsRejected: 36,
		Rejected:    tcpmux.RejectedStats{Timeout: 1, NotSTUN: 2, Username: 3, TooLarge: 4, Limit: 5, Auth: 6, Evicted: 7, Other: 8},
		ConnsActive: 9, ConnsPending: 10, PacketConns: 11, UnclaimedExpired: 12, FallbackConns: 13,
		PacketsReceived: 14, BytesReceived: 15, PacketsSent: 16, BytesSent: 17, WriteDrops: 18, MultipathConns: 19,
	}
	c := metrics.NewCollector(src, prometheus.Labels{"port": "443"})
	want := `
# HELP tcpmux_connections_accepted_total TCP connections returned by the listener's Accept.
# TYPE tcpmux_connections_accepted_total counter
tcpmux_connections_accepted_total{port="443"} 100
# HELP tcpmux_connections_rejected_total Connections closed before admission, or evicted, by reason.
# TYPE tcpmux_connections_rejected_total counter
tcpmux_connections_rejected_total{port="443",reason="auth"} 6
tcpmux_connections_rejected_total{port="443",reason="evicted"} 7
tcpmux_connections_rejected_total{port="443",reason="limit"} 5
tcpmux_connections_rejected_total{port="443",reason="not_stun"} 2
tcpmux_connections_rejected_total{port="443",reason="other"} 8
tcpmux_connections_rejected_total{port="443",reason="timeout"} 1
tcpmux_connections_rejected_total{port="443",reason="too_large"} 4
tcpmux_connections_rejected_total{port="443",reason="username"} 3
# HELP tcpmux_connections_active Connections attached to a PacketConn.
# TYPE tcpmux_connections_active gauge
tcpmux_connections_active{port="443"} 9
# HELP tcpmux_connections_pending Connections whose first frame has not arrived yet.
# TYPE tcpmux_connections_pending gauge
tcpmux_connections_pending{port="443"} 10
# HELP tcpmux_packet_conns Open PacketConns, claimed or not.
# TYPE tcpmux_packet_conns gauge
tcpmux_packet_conns{port="443"} 11
# HELP tcpmux_unclaimed_packet_conns_expired_total PacketConns closed because no agent claimed them: expiry, or their last connection went.
# TYPE tcpmux_unclaimed_packet_conns_expired_total counter
tcpmux_unclaimed_packet_conns_expired_total{port="443"} 12
# HELP tcpmux_fallback_connections_total Connections handed to the fallback listener (port sharing).
# TYPE tcpmux_fallback_connections_total counter
tcpmux_fallback_connections_total{port="443"} 13
# HELP tcpmux_received_packets_total Packets queued for or read by ReadFrom, first frames included.
# TYPE tcpmux_received_packets_total counter
tcpmux_received_packets_total{port="443"} 14
# HELP tcpmux_received_bytes_total Payload bytes of the received packets.
# TYPE tcpmux_received_bytes_total counter
tcpmux_received_bytes_total{port="443"} 15
# HELP tcpmux_sent_packets_total Packets WriteTo accepted: written, or queued in buffered mode.
# TYPE tcpmux_sent_packets_total counter
tcpmux_sent_packets_total{port="443"} 16
# HELP tcpmux_sent_bytes_total Payload bytes of the sent packets.
# TYPE tcpmux_sent_bytes_total counter
tcpmux_sent_bytes_total{port="443"} 17
# HELP tcpmux_write_drops_total Frames buffered mode dropped because the connection's write buffer was full.
# TYPE tcpmux_write_drops_total counter
tcpmux_write_drops_total{port="443"} 18
# HELP tcpmux_multipath_connections Attached connections that use Multipath TCP.
# TYPE tcpmux_multipath_connections gauge
tcpmux_multipath_connections{port="443"} 19
`
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want)))
	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	require.Empty(t, problems, "metric names and help follow Prometheus conventions")
}

// A live mux, registered as an application would.
func ExampleNewCollector() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{Listener: ln})
	defer mux.Close()

	registry := prometheus.NewRegistry() // or prometheus.MustRegister
	registry.MustRegister(metrics.NewCollector(mux, nil))

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	_, _ = conn.Write([]byte("GET / HTTP/1.1\r\n\r\n")) // not ICE: rejected
	_, _ = conn.Read(make([]byte, 1))                   // returns once the mux closed it
	conn.Close()

	families, err := registry.Gather()
	if err != nil {
		panic(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			if v := m.GetCounter().GetValue(); v > 0 {
				fmt.Println(f.GetName(), labels(m.GetLabel()), v)
			}
		}
	}
	// Output:
	// tcpmux_connections_accepted_total  1
	// tcpmux_connections_rejected_total reason=too_large 1
}
