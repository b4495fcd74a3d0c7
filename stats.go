package tcpmux

import "sync/atomic"

// Stats is a snapshot of a mux's counters. ConnsActive, ConnsPending,
// PacketConns and MultipathConns are levels at the time of the snapshot;
// every other field is a counter that only grows.
//
// Every accepted connection is, at any moment, in exactly one of: pending,
// attached (ConnsActive), handed over (FallbackConns), rejected (exactly
// one Rejected reason; an evicted connection counts as Evicted only, even
// if it was attached), or gone after attaching on its own account (ended,
// failed, removed, or closed with its PacketConn), which no field counts.
type Stats struct {
	// ConnsAccepted counts connections returned by the listener's Accept.
	ConnsAccepted uint64
	// ConnsRejected counts connections closed before admission; it is the
	// sum of the Rejected fields.
	ConnsRejected uint64
	// Rejected breaks ConnsRejected down by reason.
	Rejected RejectedStats
	// ConnsActive is the number of connections attached to a PacketConn.
	ConnsActive int
	// ConnsPending is the number of connections whose first frame has not
	// arrived yet.
	ConnsPending int
	// PacketConns is the number of open PacketConns, claimed or not.
	PacketConns int
	// UnclaimedExpired counts PacketConns closed because nobody claimed
	// them: AliveDurationForConnFromStun ran out, or their last connection
	// went. RemoveConnByUfrag and Close do not count here.
	UnclaimedExpired uint64
	// FallbackConns counts connections handed to FallbackListener (counted
	// when queued, whatever the application does with them).
	FallbackConns uint64
	// PacketsReceived and BytesReceived count the packets (first frames
	// included) and payload bytes queued for ReadFrom.
	PacketsReceived, BytesReceived uint64
	// PacketsSent and BytesSent count the packets and payload bytes that
	// WriteTo accepted: written, or queued in buffered mode.
	PacketsSent, BytesSent uint64
	// WriteDrops counts frames that buffered mode dropped because the write
	// buffer was full.
	WriteDrops uint64
	// MultipathConns is the number of attached connections using MPTCP.
	MultipathConns int
}

// RejectedStats counts rejected connections by reason.
type RejectedStats struct {
	// Timeout: the first frame did not arrive within FirstStunBindTimeout.
	Timeout uint64
	// NotSTUN: the first frame is not one valid STUN Binding request. (A
	// stream that does not speak framed STUN at all, such as HTTP or TLS,
	// usually reads as a header announcing a large frame: TooLarge.)
	NotSTUN uint64
	// Username: USERNAME is missing, its ufrag is empty, or it is over 513
	// bytes.
	Username uint64
	// TooLarge: the first frame's header announces more than
	// MaxFirstFrameSize bytes.
	TooLarge uint64
	// Limit: a connection limit, or the fallback queue, was full and
	// nothing could be evicted (or MaxConnectionsPerIP refused the source).
	Limit uint64
	// Auth: PasswordLookup did not know the ufrag, or MESSAGE-INTEGRITY did
	// not verify.
	Auth uint64
	// Evicted: closed to make room for a newcomer when MaxPendingConnections
	// or MaxConnections was reached, pending or attached to an unclaimed
	// PacketConn.
	Evicted uint64
	// Other: a duplicate remote address, a peer that closed or failed
	// before its first frame, or a mux closing meanwhile.
	Other uint64
}

// counters are the live form of Stats. Levels (active, pending,
// packetConns, multipath) change under the mux's mu; the others are
// updated lock-free.
type counters struct {
	accepted      atomic.Uint64
	rejected      [rejectOther + 1]atomic.Uint64
	active        atomic.Int64
	pending       atomic.Int64
	packetConns   atomic.Int64
	unclaimedGone atomic.Uint64
	fallback      atomic.Uint64
	traffic       [trafficStripes]trafficStripe
	stripe        atomic.Uint32 // the next connection's stripe
	writeDrops    atomic.Uint64
	multipath     atomic.Int64
}

func (s *counters) reject(r rejectReason) { s.rejected[r].Add(1) }

// Packet and byte counters change with every packet, from every core: one
// pair for the whole mux would be a cache line that the cores pass back
// and forth (about 10% of ReadFrom's cost at 64 connections of 64-byte
// packets). So they are striped: each connection counts in the stripe it
// was given at accept, and Stats sums the stripes.
const trafficStripes = 16

// trafficStripe is one stripe's received and sent counters, each pair on a
// cache line of its own: a connection's reader and its writers run on
// different goroutines.
type trafficStripe struct {
	rx trafficCount
	_  [cacheLine - 16]byte
	tx trafficCount
	_  [cacheLine - 16]byte
}

const cacheLine = 64

// trafficCount is packets and their payload bytes.
type trafficCount struct {
	packets atomic.Uint64
	bytes   atomic.Uint64
}

func (t *trafficCount) add(n int) {
	t.packets.Add(1)
	t.bytes.Add(uint64(n))
}

// nextStripe gives connections the stripes in turn.
func (s *counters) nextStripe() *trafficStripe {
	return &s.traffic[s.stripe.Add(1)%trafficStripes]
}

type trafficTotal struct{ packets, bytes uint64 }

func (s *counters) trafficTotals() (rx, tx trafficTotal) {
	for i := range s.traffic {
		st := &s.traffic[i]
		rx.packets += st.rx.packets.Load()
		rx.bytes += st.rx.bytes.Load()
		tx.packets += st.tx.packets.Load()
		tx.bytes += st.tx.bytes.Load()
	}
	return rx, tx
}

// snapshot reads the counters. The caller holds the mux's mu, under which
// every level (and every rejection of a held connection) changes, so the
// levels are consistent with each other; ConnsAccepted is read last, and
// a connection is counted accepted before it enters any state, so it is
// never below the sum of the states.
func (s *counters) snapshot() Stats {
	var r RejectedStats
	r.Timeout = s.rejected[rejectTimeout].Load()
	r.NotSTUN = s.rejected[rejectNotSTUN].Load()
	r.Username = s.rejected[rejectUsername].Load()
	r.TooLarge = s.rejected[rejectTooLarge].Load()
	r.Limit = s.rejected[rejectLimit].Load()
	r.Auth = s.rejected[rejectAuth].Load()
	r.Evicted = s.rejected[rejectEvicted].Load()
	r.Other = s.rejected[rejectOther].Load()
	fallback := s.fallback.Load()
	active := s.active.Load()
	pending := s.pending.Load()
	accepted := s.accepted.Load()
	rx, tx := s.trafficTotals()
	return Stats{
		ConnsAccepted:    accepted,
		ConnsRejected:    r.total(),
		Rejected:         r,
		ConnsActive:      int(active),
		ConnsPending:     int(pending),
		PacketConns:      int(s.packetConns.Load()),
		UnclaimedExpired: s.unclaimedGone.Load(),
		FallbackConns:    fallback,
		PacketsReceived:  rx.packets,
		BytesReceived:    rx.bytes,
		PacketsSent:      tx.packets,
		BytesSent:        tx.bytes,
		WriteDrops:       s.writeDrops.Load(),
		MultipathConns:   int(s.multipath.Load()),
	}
}

func (r RejectedStats) total() uint64 {
	return r.Timeout + r.NotSTUN + r.Username + r.TooLarge + r.Limit + r.Auth + r.Evicted + r.Other
}

// add sums two snapshots, for MultiTCPMuxDefault.
func (s Stats) add(o Stats) Stats {
	r, q := s.Rejected, o.Rejected
	return Stats{
		ConnsAccepted: s.ConnsAccepted + o.ConnsAccepted,
		ConnsRejected: s.ConnsRejected + o.ConnsRejected,
		Rejected: RejectedStats{
			Timeout:  r.Timeout + q.Timeout,
			NotSTUN:  r.NotSTUN + q.NotSTUN,
			Username: r.Username + q.Username,
			TooLarge: r.TooLarge + q.TooLarge,
			Limit:    r.Limit + q.Limit,
			Auth:     r.Auth + q.Auth,
			Evicted:  r.Evicted + q.Evicted,
			Other:    r.Other + q.Other,
		},
		ConnsActive:      s.ConnsActive + o.ConnsActive,
		ConnsPending:     s.ConnsPending + o.ConnsPending,
		PacketConns:      s.PacketConns + o.PacketConns,
		UnclaimedExpired: s.UnclaimedExpired + o.UnclaimedExpired,
		FallbackConns:    s.FallbackConns + o.FallbackConns,
		PacketsReceived:  s.PacketsReceived + o.PacketsReceived,
		BytesReceived:    s.BytesReceived + o.BytesReceived,
		PacketsSent:      s.PacketsSent + o.PacketsSent,
		BytesSent:        s.BytesSent + o.BytesSent,
		WriteDrops:       s.WriteDrops + o.WriteDrops,
		MultipathConns:   s.MultipathConns + o.MultipathConns,
	}
}
