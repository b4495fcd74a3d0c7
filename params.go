package tcpmux

import (
	"errors"
	"fmt"
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
	// DefaultMaxPendingConnections bounds the connections whose first frame
	// has not arrived yet. Past it the mux evicts, it does not refuse (see
	// TCPMuxParams.MaxPendingConnections).
	DefaultMaxPendingConnections = 1024
	// DefaultMaxFirstFrameSize bounds a connection's first frame. A legal
	// ICE Binding request with a 256-character ufrag is about 600 bytes; a
	// request carrying a DTLS handshake inside STUN is larger.
	DefaultMaxFirstFrameSize = 2048
	// MinMaxFirstFrameSize and MaxMaxFirstFrameSize are the valid range of
	// TCPMuxParams.MaxFirstFrameSize.
	MinMaxFirstFrameSize = 1280
	MaxMaxFirstFrameSize = MaxFramePayload
	// UnclaimedQueueBytes bounds the packet payload queued for a PacketConn
	// that no GetConnByUfrag has claimed yet (one packet of any size always
	// fits in an empty queue). Past it the connections are not read: TCP
	// flow control holds the rest at the peer.
	UnclaimedQueueBytes = 16 << 10
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
	// attached. When it is reached, a newcomer evicts the oldest connection
	// of the source holding the most evictable ones: connections still
	// pending or attached to a PacketConn nobody has claimed. A connection
	// of a claimed PacketConn is never evicted; with none evictable, the
	// newcomer is closed and counted as Limit. 0: no limit.
	MaxConnections int

	// MaxPendingConnections caps the connections whose first frame has not
	// arrived yet. When it is reached, a newcomer is admitted and the
	// pending connection that has waited longest, among those of the source
	// holding the most pending ones, is closed and counted as Evicted: a
	// flood from one source cannot lock other peers out.
	// 0: DefaultMaxPendingConnections. Negative: no limit.
	MaxPendingConnections int

	// MaxConnectionsPerUfrag caps the attached connections per ufrag (all
	// families and local IPs together). Connections over it are closed and
	// counted. 0: no limit.
	MaxConnectionsPerUfrag int

	// MaxConnectionsPerIP caps the connections held at once (pending and
	// attached) from one source: one IPv4 address or one IPv6 /64. A
	// newcomer over it is closed and counted as Limit, and evicts nobody.
	// Behind a PROXY-protocol listener the source is the real client's,
	// known once the header is read on the connection's own goroutine.
	// 0: no limit.
	MaxConnectionsPerIP int

	// MaxFirstFrameSize bounds a connection's first frame in bytes; a
	// header announcing more is rejected (TooLarge) before any payload is
	// read. Valid values are MinMaxFirstFrameSize to MaxMaxFirstFrameSize.
	// 0: DefaultMaxFirstFrameSize.
	MaxFirstFrameSize int

	// PasswordLookup, when set, admits a first request only if it returns ok
	// for the request's ufrag and the request's MESSAGE-INTEGRITY verifies
	// with the returned password (ICE short-term credentials), so that
	// unauthenticated peers create no per-ufrag state. It is called from the
	// connection's goroutine and must be safe for concurrent use. It may
	// call Close, of the mux or of a MultiTCPMuxDefault holding it: Close
	// does not wait for a lookup in progress, and once the mux is closed
	// the lookup's answer is ignored (the connection is closed and counted
	// as Other, like any pending connection Close closes).
	// Nil: no authentication (any well-formed request is admitted).
	PasswordLookup func(ufrag string) (password string, ok bool)

	// Fallback, when true, hands connections whose first bytes are not a
	// framed STUN Binding request, with those bytes replayed, to
	// FallbackListener(): ICE-TCP can then share a port with, say, HTTPS.
	// False: such connections are judged by the first-frame rules, closed
	// and counted: most non-STUN streams (HTTP, TLS) read as a frame header
	// announcing more than MaxFirstFrameSize (TooLarge), others as NotSTUN.
	Fallback bool

	// FallbackQueueSize caps the non-ICE connections waiting for
	// FallbackListener().Accept; past it they are closed and counted as
	// Limit. 0: DefaultFallbackQueueSize.
	FallbackQueueSize int
}

var (
	// ErrNoListener is returned by Validate for params without a Listener.
	ErrNoListener = errors.New("tcpmux: TCPMuxParams.Listener is nil")
	// ErrInvalidParams matches, under errors.Is, every ParamError.
	ErrInvalidParams = errors.New("tcpmux: invalid TCPMuxParams")
)

// ParamError is Validate's error for a TCPMuxParams field out of its
// range. It is comparable, so errors.Is matches it with an equal
// ParamError (a mux built from invalid params returns Validate's error),
// and it matches ErrInvalidParams.
type ParamError struct {
	Field string // the TCPMuxParams field
	Value int64  // its value (nanoseconds for durations)
	Want  string // the valid range
}

// Error names the field, its value and the valid range.
func (e ParamError) Error() string {
	return fmt.Sprintf("tcpmux: invalid TCPMuxParams.%s %d: want %s", e.Field, e.Value, e.Want)
}

// Is reports whether target is ErrInvalidParams.
func (e ParamError) Is(target error) bool { return target == ErrInvalidParams }

// Validate reports whether the params can build a mux: a Listener is set,
// no size, limit or duration is negative (MaxPendingConnections excepted:
// negative means no limit), and MaxFirstFrameSize is 0 or within
// MinMaxFirstFrameSize..MaxMaxFirstFrameSize. It returns ErrNoListener or
// a ParamError.
func (p *TCPMuxParams) Validate() error {
	if p.Listener == nil {
		return ErrNoListener
	}
	nonNegative := []struct {
		name  string
		value int64
	}{
		{"ReadBufferSize", int64(p.ReadBufferSize)},
		{"WriteBufferSize", int64(p.WriteBufferSize)},
		{"FirstStunBindTimeout", int64(p.FirstStunBindTimeout)},
		{"AliveDurationForConnFromStun", int64(p.AliveDurationForConnFromStun)},
		{"MaxConnections", int64(p.MaxConnections)},
		{"MaxConnectionsPerUfrag", int64(p.MaxConnectionsPerUfrag)},
		{"MaxConnectionsPerIP", int64(p.MaxConnectionsPerIP)},
		{"FallbackQueueSize", int64(p.FallbackQueueSize)},
	}
	for _, f := range nonNegative {
		if f.value < 0 {
			return ParamError{Field: f.name, Value: f.value, Want: ">= 0"}
		}
	}
	if n := p.MaxFirstFrameSize; n != 0 && (n < MinMaxFirstFrameSize || n > MaxMaxFirstFrameSize) {
		return ParamError{Field: "MaxFirstFrameSize", Value: int64(n), Want: fmt.Sprintf("0 or %d..%d", MinMaxFirstFrameSize, MaxMaxFirstFrameSize)}
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
	if p.MaxPendingConnections == 0 {
		p.MaxPendingConnections = DefaultMaxPendingConnections
	}
	if p.MaxFirstFrameSize == 0 {
		p.MaxFirstFrameSize = DefaultMaxFirstFrameSize
	}
	return p
}

// queueBytes is the byte bound of a PacketConn's receive queue.
func (p *TCPMuxParams) queueBytes() int {
	return max(p.ReadBufferSize*queueBytesPerPacket, FrameHeaderSize+MaxFramePayload)
}
