package tcpmux

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// streamConn is one accepted TCP connection: its framed reader, run by the
// connection's goroutine, and its framed writer, used by WriteTo.
type streamConn struct {
	mux       *TCPMuxDefault
	conn      net.Conn
	remote    *net.TCPAddr // unmapped; handed out by ReadFrom without allocating
	remoteAP  netip.AddrPort
	local     netip.Addr     // unmapped
	pc        *tcpPacketConn // set once, when the connection is attached
	multipath bool
	entry     tableEntry     // guarded by mux.mu (admission.go)
	traffic   *trafficStripe // where its packets count (stats.go)
	// inLookup: the goroutine is out of mux.wg, running PasswordLookup,
	// so Close accounts for the connection itself. Guarded by mux.mu.
	inLookup bool

	// Reading (conn_reader.go). fr, idleAt, lastReads and rdl belong to
	// whoever reads the socket: the connection's goroutine, or the reader
	// holding it on loan (socket_loan.go); the loan also moves rdl, under
	// its mu, to interrupt that reader. idleAt and lastReads drive the idle
	// check; rdl is the read deadline last set on conn.
	fr        *FrameReader
	resume    chan struct{} // one token per loan, sent under the loan's mu: read again; made by the first offer
	idleAt    time.Time
	lastReads uint64
	rdl       time.Time

	closed    atomic.Bool
	done      chan struct{}
	closeOnce sync.Once

	// Synchronous writes (conn_writer.go): wsem serialises whole frames
	// and guards the four fields after it. A frame is copied with its
	// header into wbuf, so that it is one Write, except a large one on a
	// TCP socket, written from the caller's buffer with writev (iov): a
	// plain connection never keeps a large buffer. An idle connection
	// drops wbuf (awaitData).
	wsem writeSem
	wbuf []byte
	hdr  [FrameHeaderSize]byte
	iov  [2][]byte
	vec  net.Buffers
	// The socket's write deadline is the deadline of the handle writing
	// now (owner), so that handles keep deadlines of their own. dlmu
	// guards wdl; a write with no deadline takes it only if wdlSet (see
	// own in conn_writer.go).
	owner  atomic.Pointer[packetConnHandle] // the handle writing now; stored by the writer, holding wsem
	dlmu   sync.Mutex
	wdl    time.Time   // the write deadline last set on conn
	wdlSet atomic.Bool // wdl may not be zero; stored under dlmu

	bw *bufferedWriter // WriteBufferSize > 0 only (conn_buffered_writer.go)
}

// newStreamConn wraps an accepted connection. It does not ask the
// connection its addresses, which may wait on the peer: see learnAddrs.
func newStreamConn(m *TCPMuxDefault, conn net.Conn) *streamConn {
	c := &streamConn{
		mux:     m,
		conn:    conn,
		traffic: m.stats.nextStripe(),
		done:    make(chan struct{}),
	}
	if m.params.WriteBufferSize > 0 {
		c.bw = &bufferedWriter{queuedWake: make(chan struct{}, 1)}
	}
	return c
}

// learnAddrs asks the connection its addresses, on its own goroutine and
// under the first-frame deadline: a PROXY-protocol conn reads its header
// to answer.
func (c *streamConn) learnAddrs() {
	c.remoteAP = unmapAddrPort(addrPortOf(c.conn.RemoteAddr()))
	c.remote = net.TCPAddrFromAddrPort(c.remoteAP)
	// Agents ask for a local IP without a zone, so the key drops it.
	c.local = unmapAddrPort(addrPortOf(c.conn.LocalAddr())).Addr().WithZone("")
}

// close closes the TCP connection; it does not detach it from its
// PacketConn (see tcpPacketConn.removeConn). Idempotent.
func (c *streamConn) close() {
	c.closeOnce.Do(func() {
		if bw := c.bw; bw != nil {
			bw.mu.Lock()
			c.closed.Store(true) // under mu: no frame is queued after release
			bw.queued.release()
			bw.mu.Unlock()
		} else {
			c.closed.Store(true)
		}
		close(c.done)
		closeNow(c.conn)
	})
}

// closeNow closes conn without waiting on its peer. A TLS connection's
// Close sends close_notify first, under a deadline of its own (5 s in
// crypto/tls), which a peer that stopped reading makes it wait out: so the
// connections underneath are closed first, innermost first, and the alert
// fails at once.
func closeNow(conn net.Conn) {
	var inner net.Conn
	switch wrapped := conn.(type) {
	case interface{ NetConn() net.Conn }: // crypto/tls
		inner = wrapped.NetConn()
	case interface{ Unwrap() net.Conn }: // replayConn, and wrappers like it
		inner = wrapped.Unwrap()
	}
	if inner != nil {
		closeNow(inner)
	}
	_ = conn.Close()
}

// fail removes a connection whose stream broke, quietly: the PacketConn
// carries on with its other connections.
func (c *streamConn) fail(err error) {
	if c.closed.Load() {
		return
	}
	c.mux.log.Debugf("connection %s ended: %v", c.remoteAP, err)
	if c.pc != nil {
		c.pc.removeConn(c)
	}
	c.close()
}

// isTimeout reports a timeout without allocating in the common cases (an
// interrupted Read is routine on the direct read path).
func isTimeout(err error) bool {
	if netErr, ok := err.(net.Error); ok {
		return netErr.Timeout()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// isMultipath reports whether the connection negotiated MPTCP.
func isMultipath(conn net.Conn) bool {
	mp, ok := conn.(interface{ MultipathTCP() (bool, error) })
	if !ok {
		return false
	}
	on, err := mp.MultipathTCP()
	return err == nil && on
}

// addrPortOf converts the address types a net.Conn or an ICE agent uses,
// without allocating for TCP and UDP addresses.
func addrPortOf(addr net.Addr) netip.AddrPort {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	case nil:
		return netip.AddrPort{}
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return ap
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
