// Package metrics exports a tcpmux mux's Stats to Prometheus.
//
// It is a module of its own, github.com/icetcp/tcpmux/metrics, so that the
// library keeps its few dependencies. Register one Collector per mux (or
// one for a MultiTCPMuxDefault, which sums its muxes):
//
//	prometheus.MustRegister(metrics.NewCollector(mux, nil))
//
// Every scrape takes one Stats snapshot, which never waits on I/O.
package metrics

import (
	"github.com/icetcp/tcpmux"
	"github.com/prometheus/client_golang/prometheus"
)

// StatsSource is what a Collector reads: *tcpmux.TCPMuxDefault and
// *tcpmux.MultiTCPMuxDefault both are one.
type StatsSource interface {
	Stats() tcpmux.Stats
}

// Collector is a prometheus.Collector for a StatsSource. Create it with
// NewCollector.
type Collector struct {
	source StatsSource

	accepted, rejected, unclaimedExpired, fallback         *prometheus.Desc
	active, pending, packetConns, multipath                *prometheus.Desc
	packetsReceived, bytesReceived, packetsSent, bytesSent *prometheus.Desc
	writeDrops                                             *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector of source's Stats. Every metric carries
// constLabels (nil: none), e.g. {"port": "443"} to tell several muxes
// apart in one registry.
func NewCollector(source StatsSource, constLabels prometheus.Labels) *Collector {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("tcpmux_"+name, help, labels, constLabels)
	}
	return &Collector{
		source:           source,
		accepted:         desc("connections_accepted_total", "TCP connections returned by the listener's Accept."),
		rejected:         desc("connections_rejected_total", "Connections closed before admission, or evicted, by reason.", "reason"),
		unclaimedExpired: desc("unclaimed_packet_conns_expired_total", "PacketConns closed because no agent claimed them: expiry, or their last connection went."),
		fallback:         desc("fallback_connections_total", "Connections handed to the fallback listener (port sharing)."),
		active:           desc("connections_active", "Connections attached to a PacketConn."),
		pending:          desc("connections_pending", "Connections whose first frame has not arrived yet."),
		packetConns:      desc("packet_conns", "Open PacketConns, claimed or not."),
		multipath:        desc("multipath_connections", "Attached connections that use Multipath TCP."),
		packetsReceived:  desc("received_packets_total", "Packets queued for or read by ReadFrom, first frames included."),
		bytesReceived:    desc("received_bytes_total", "Payload bytes of the received packets."),
		packetsSent:      desc("sent_packets_total", "Packets WriteTo accepted: written, or queued in buffered mode."),
		bytesSent:        desc("sent_bytes_total", "Payload bytes of the sent packets."),
		writeDrops:       desc("write_drops_total", "Frames buffered mode dropped because the connection's write buffer was full."),
	}
}

// Describe sends the descriptors of every metric.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.accepted, c.rejected, c.unclaimedExpired, c.fallback,
		c.active, c.pending, c.packetConns, c.multipath,
		c.packetsReceived, c.bytesReceived, c.packetsSent, c.bytesSent, c.writeDrops,
	} {
		ch <- d
	}
}

// Collect takes one Stats snapshot and sends every metric from it.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.source.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter(c.accepted, s.ConnsAccepted)
	for _, r := range rejections(s.Rejected) {
		counter(c.rejected, r.count, r.reason)
	}
	counter(c.unclaimedExpired, s.UnclaimedExpired)
	counter(c.fallback, s.FallbackConns)
	gauge(c.active, s.ConnsActive)
	gauge(c.pending, s.ConnsPending)
	gauge(c.packetConns, s.PacketConns)
	gauge(c.multipath, s.MultipathConns)
	counter(c.packetsReceived, s.PacketsReceived)
	counter(c.bytesReceived, s.BytesReceived)
	counter(c.packetsSent, s.PacketsSent)
	counter(c.bytesSent, s.BytesSent)
	counter(c.writeDrops, s.WriteDrops)
}

type rejection struct {
	reason string
	count  uint64
}

// rejections lists the reasons of tcpmux.RejectedStats as label values,
// in snake case as Prometheus labels usually are.
func rejections(r tcpmux.RejectedStats) []rejection {
	return []rejection{
		{"timeout", r.Timeout},
		{"not_stun", r.NotSTUN},
		{"username", r.Username},
		{"too_large", r.TooLarge},
		{"limit", r.Limit},
		{"auth", r.Auth},
		{"evicted", r.Evicted},
		{"other", r.Other},
	}
}
