package tcpmux

import (
	"errors"
	"net"
	"time"

	"github.com/pion/logging"
)

// Defaults applied to zero-valued TCPMuxParams fields.
const (
	// DefaultReadBufferSize is the number of packets queued per PacketConn
	// before the TCP readers of that PacketConn stop reading.
	DefaultReadBufferSize = 64
	// DefaultFirstStunBindTimeout bounds the arrival of a connection's first
	// frame, counted from accept.
	DefaultFirstStunBindTimeout = 30 * time.Second
	// DefaultAliveDurationForConnFromStun is how long a PacketConn created by
	// an incoming connection waits for GetConnByUfrag to claim it.
	DefaultAliveDurationForConnFromStun = 30 * time.Second
	// DefaultFallbackQueueSize is how many non-ICE connections wait for
	// FallbackListener().Accept before further ones are closed.
	DefaultFallbackQueueSize = 128
)

// queueBytesPerPacket sizes a PacketConn's queue in bytes from its size in
// packets: readers also stop when the queued bytes reach ReadBufferSize times
// this, so a peer sending maximal frames cannot pin megabytes per ufrag. It
// never goes below one maximal frame, so any frame fits in an empty queue.
const queueBytesPerPacket = 2048

// TCPMuxParams configures a TCPMuxDefault. Only Listener is required; every
// other field documents what its zero value means.
type TCPMuxParams struct {
	// Listener accepts the ICE-TCP connections. Any listener works: plain
	// TCP, MPTCP, TLS or a wrapped one (e.g. PROXY protocol). The mux owns
	// it from now on: Close closes it.
	Listener net.Listener

	// Logger receives the mux's diagnostics; nothing is logged per packet
	// above Debug. Nil: a pion/logging default logger with scope "tcpmux".
	Logger logging.LeveledLogger

	// ReadBufferSize is the number of received packets queued per
	// PacketConn. When the queue is full, the TCP connections of that
	// PacketConn stop being read (TCP back-pressure): packets are never
	// dropped. A PacketConn with a single connection and a waiting
	// ReadFrom skips the queue: ReadFrom reads the socket itself (see the
	// README, "Reads"). 0: DefaultReadBufferSize.
	ReadBufferSize int

	// WriteBufferSize is the number of bytes, frame headers included, queued
	// per TCP connection for sending. 0: WriteTo writes synchronously and
	// blocks until the frame is written or the write deadline passes. Above
	// 0: WriteTo never blocks; a frame that does not fit in the free space is
	// dropped whole, WriteTo returns ErrWriteBufferFull, and the drop is
	// counted in Stats.WriteDrops.
	WriteBufferSize int

	// FirstStunBindTimeout bounds the arrival of a connection's whole first
	// frame, counted from accept. A connection that is silent, sends a
	// partial header, or trickles is closed at this deadline.
	// 0: DefaultFirstStunBindTimeout.
	FirstStunBindTimeout time.Duration

	// AliveDurationForConnFromStun is how long a PacketConn created by an
	// incoming connection for a ufrag nobody has asked for is kept, with
	// every packet queued, waiting for GetConnByUfrag. Unclaimed after that,
	// it is closed with its connections.
	// 0: DefaultAliveDurationForConnFromStun.
	AliveDurationForConnFromStun time.Duration

	// MaxConnections caps the TCP connections held at once, pending and
	// attached. Connections over it are closed at once and counted.
	// 0: no limit.
	MaxConnections int

	// MaxPendingConnections caps the connections whose first frame has not
	// arrived yet. Connections over it are closed at once and counted.
	// 0: no limit.
	MaxPendingConnections int

	// MaxConnectionsPerUfrag caps the attached connections per ufrag (all
	// families and local IPs together). Connections over it are closed and
	// counted. 0: no limit.
	MaxConnectionsPerUfrag int

	// PasswordLookup, when set, admits a first request only if it returns ok
	// for the request's ufrag and the request's MESSAGE-INTEGRITY verifies
	// with the returned password (ICE short-term credentials), so that
	// unauthenticated peers create no per-ufrag state. It is called from the
	// connection's goroutine and must be safe for concurrent use.
	// Nil: no authentication (any well-formed request is admitted).
	PasswordLookup func(ufrag string) (password string, ok bool)

	// Fallback, when true, hands connections whose first bytes are not a
	// framed STUN Binding request, with those bytes replayed, to
	// FallbackListener(): ICE-TCP can then share a port with, say, HTTPS.
	// False: such connections are closed and counted as NotSTUN.
	Fallback bool

	// FallbackQueueSize caps the non-ICE connections waiting for
	// FallbackListener().Accept; past it they are closed and counted as
	// Limit. 0: DefaultFallbackQueueSize.
	FallbackQueueSize int
}

// ErrNoListener is returned by Validate for params without a Listener.
var ErrNoListener = errors.New("tcpmux: TCPMuxParams.Listener is nil")

// Validate reports whether the params can build a mux: a Listener is set and
// no size, limit or duration is negative.
func (p *TCPMuxParams) Validate() error {
	if p.Listener == nil {
		return ErrNoListener
	}
	if p.ReadBufferSize < 0 || p.WriteBufferSize < 0 || p.FirstStunBindTimeout < 0 ||
		p.AliveDurationForConnFromStun < 0 || p.MaxConnections < 0 ||
		p.MaxPendingConnections < 0 || p.MaxConnectionsPerUfrag < 0 || p.FallbackQueueSize < 0 {
		return errors.New("tcpmux: TCPMuxParams has a negative size, limit or duration")
	}
	return nil
}

// populateDefaults returns a copy of p with every zero field set to its
// default.
func (p TCPMuxParams) populateDefaults() TCPMuxParams {
	if p.Logger == nil {
		p.Logger = logging.NewDefaultLoggerFactory().NewLogger("tcpmux")
	}
	if p.ReadBufferSize == 0 {
		p.ReadBufferSize = DefaultReadBufferSize
	}
	if p.FirstStunBindTimeout == 0 {
		p.FirstStunBindTimeout = DefaultFirstStunBindTimeout
	}
	if p.AliveDurationForConnFromStun == 0 {
		p.AliveDurationForConnFromStun = DefaultAliveDurationForConnFromStun
	}
	if p.FallbackQueueSize == 0 {
		p.FallbackQueueSize = DefaultFallbackQueueSize
	}
	return p
}

// queueBytes is the byte bound of a PacketConn's receive queue.
func (p *TCPMuxParams) queueBytes() int {
	return max(p.ReadBufferSize*queueBytesPerPacket, FrameHeaderSize+MaxFramePayload)
}
