package tcpmux

import (
	"encoding/binary"
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
	local     netip.Addr  // unmapped
	pc        *packetConn // set once, when the connection is attached
	multipath bool
	entry     tableEntry // guarded by mux.mu (admission.go)
	// inLookup: the goroutine is out of mux.wg, running PasswordLookup,
	// so Close accounts for the connection itself. Guarded by mux.mu.
	inLookup bool

	// Reading. fr belongs to the connection's goroutine, or to the reader
	// holding the lease (see packetQueue.direct). idleAt and lastReads
	// drive the idle check of whoever reads the socket; rdl is the read
	// deadline set on it, guarded by rmu so that an interruption is never
	// overwritten by a reader re-arming its deadline.
	fr        *FrameReader
	resume    chan struct{} // one token: the lease came back
	idleAt    time.Time
	lastReads uint64
	rmu       sync.Mutex
	rdl       time.Time
	wantLend  bool // a reader waits for the socket (askToLend)
	// idleLender: the goroutine waits for data without a buffer, so
	// readers must not ask for the socket. Guarded by pc.queue.mu.
	idleLender bool

	closed    atomic.Bool
	done      chan struct{}
	closeOnce sync.Once

	// Synchronous writes: wsem serialises whole frames and guards what
	// follows. A frame is copied with its header into wbuf, so that it is
	// one Write, except a large one on a TCP socket, written from the
	// caller's buffer with writev (iov): a plain connection never keeps a
	// large buffer. An idle connection drops wbuf (awaitData).
	wsem chan struct{}
	wbuf []byte
	hdr  [FrameHeaderSize]byte
	iov  [2][]byte
	vec  net.Buffers
	// The socket's write deadline is the deadline of the handle writing
	// now (owner), so that handles keep deadlines of their own.
	dlmu  sync.Mutex
	owner *tcpPacketConn
	wdl   time.Time // the write deadline last set on conn

	// Buffered writes (WriteBufferSize > 0): frames are appended to queued
	// and a flusher goroutine, alive only while frames are queued (and a
	// linger after), writes them from there in as few Writes as possible.
	bmu      sync.Mutex
	queued   writeRing
	flushing bool
	idle     bool          // the flusher waits for frames on wake
	wake     chan struct{} // one token: frames were queued for an idle flusher
	writers  sync.WaitGroup
}

// newStreamConn wraps an accepted connection. It does not ask the
// connection its addresses, which may wait on the peer: see learnAddrs.
func newStreamConn(m *TCPMuxDefault, conn net.Conn) *streamConn {
	c := &streamConn{
		mux:    m,
		conn:   conn,
		done:   make(chan struct{}),
		wsem:   make(chan struct{}, 1),
		resume: make(chan struct{}, 1),
	}
	if m.params.WriteBufferSize > 0 {
		c.wake = make(chan struct{}, 1)
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
// PacketConn (see packetConn.removeConn). Idempotent.
func (c *streamConn) close() {
	c.closeOnce.Do(func() {
		c.bmu.Lock()
		c.closed.Store(true)
		c.queued.release()
		c.bmu.Unlock()
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

// readLoop delivers every frame of an attached connection to its
// PacketConn until the stream ends or the PacketConn closes. While the
// PacketConn may read this connection directly, the loop lends the socket
// to its readers instead and waits.
func (c *streamConn) readLoop() {
	fr := c.fr
	if !c.activate() {
		return
	}
	for {
		if !fr.hasFrame() && c.pc.queue.direct.Load() == c {
			switch c.lend() {
			case lendClosed:
				return
			case lendReturned:
				if !c.resumeReading() {
					return
				}
				continue
			}
		}
		p, err := fr.Next()
		if err == nil {
			if !c.pc.deliver(c, p) {
				return
			}
			continue
		}
		if !isTimeout(err) {
			c.fail(err)
			return
		}
		if !c.pastIdleCheck() {
			return
		}
	}
}

// resumeReading takes the socket back from readers. A connection they
// left idle (parked) waits for data; one taken back while busy keeps its
// buffer and its idle check, so a reader pausing between reads costs no
// reallocation.
func (c *streamConn) resumeReading() bool {
	if c.fr.parked {
		return c.activate()
	}
	if now := time.Now(); c.idleAt.After(now) {
		c.setReadDeadline(c.idleAt)
	} else {
		c.armIdleCheck(now)
	}
	return true
}

// activate gets the goroutine's reading going: a reader with nothing
// buffered, or parked, waits for data without a buffer, then the idle check
// is armed. It reports false if the stream ended.
func (c *streamConn) activate() bool {
	if (c.fr.parked || c.fr.start == c.fr.end) && !c.awaitData() {
		return false
	}
	c.armIdleCheck(time.Now())
	return true
}

// armIdleCheck schedules the next idle check one linger from now, with
// the socket's read deadline at that time.
func (c *streamConn) armIdleCheck(now time.Time) {
	c.scheduleIdleCheck(now)
	c.setReadDeadline(c.idleAt)
}

// scheduleIdleCheck notes when the next idle check is due and how many
// reads the reader has done so far; whoever reads the socket sets the
// deadline.
func (c *streamConn) scheduleIdleCheck(now time.Time) {
	c.idleAt, c.lastReads = now.Add(idleBufferLinger), c.fr.reads
}

// readNothingSinceCheck reports whether the socket gave no data since the
// idle check was scheduled: the connection is idle, even if a partial frame
// is buffered (a peer that announced a large frame and went silent holds
// no buffer either).
func (c *streamConn) readNothingSinceCheck() bool {
	return c.fr.reads == c.lastReads
}

// pastIdleCheck handles the goroutine's read deadline: a connection that
// read nothing for a whole period gives its buffer up until data comes. It
// reports false if the stream ended.
func (c *streamConn) pastIdleCheck() bool {
	now := time.Now()
	switch {
	case now.Before(c.idleAt): // an interruption: a reader asks for the socket
		c.setReadDeadline(c.idleAt)
		return true
	case c.readNothingSinceCheck():
		if !c.awaitData() {
			return false
		}
	}
	c.armIdleCheck(now)
	return true
}

// idleBufferLinger is how long a connection that receives nothing keeps
// its read buffer. Checking costs one deadline per period, nothing per
// packet.
const idleBufferLinger = 2 * time.Second

// awaitData parks the reader (its buffer is released, a partial frame
// kept), drops the write buffer, and blocks in a Read of a few bytes, so an idle connection costs a
// parked goroutine and little else. A timeout is a reader asking for the
// socket (requestLeaseLocked) and returns with no data. It reports false,
// having removed the connection, if the stream ended.
func (c *streamConn) awaitData() bool {
	c.fr.park()
	c.dropIdleWriteBuffer()
	c.pc.queue.lenderIdle(c)
	c.setReadDeadline(time.Time{})
	err := c.fr.fill(FrameHeaderSize)
	if err == nil || isTimeout(err) {
		return true
	}
	c.fail(err)
	return false
}

func (c *streamConn) setReadDeadline(t time.Time) {
	c.rmu.Lock()
	c.setReadDeadlineLocked(t)
	c.rmu.Unlock()
}

func (c *streamConn) setReadDeadlineLocked(t time.Time) {
	if !c.wantLend {
		c.forceReadDeadlineLocked(t)
	}
}

func (c *streamConn) forceReadDeadlineLocked(t time.Time) {
	if !t.Equal(c.rdl) {
		_ = c.conn.SetReadDeadline(t)
		c.rdl = t
	}
}

// writeFrame sends p as one frame, synchronously or through the write
// buffer, honouring the caller's write deadline.
func (c *streamConn) writeFrame(p []byte, h *tcpPacketConn) (int, error) {
	if c.mux.params.WriteBufferSize > 0 {
		return c.writeBuffered(p)
	}
	return c.writeSync(p, h)
}

func (c *streamConn) writeSync(p []byte, h *tcpPacketConn) (int, error) {
	dl := &h.writeDeadline
	select {
	case c.wsem <- struct{}{}:
	default:
		select {
		case c.wsem <- struct{}{}:
		case <-c.done:
			return 0, ErrConnClosed
		case <-dl.wait():
			return 0, os.ErrDeadlineExceeded
		}
	}
	n, err := c.writeLocked(p, h)
	<-c.wsem
	return n, err
}

// own makes h the writer whose deadline the socket carries.
func (c *streamConn) own(h *tcpPacketConn) (deadline time.Time, err error) {
	c.dlmu.Lock()
	defer c.dlmu.Unlock()
	c.owner = h
	deadline = h.writeDeadline.time()
	if !deadline.Equal(c.wdl) {
		err = c.conn.SetWriteDeadline(deadline)
		c.wdl = deadline
	}
	return deadline, err
}

func (c *streamConn) disown() {
	c.dlmu.Lock()
	c.owner = nil
	c.dlmu.Unlock()
}

// moveWriteDeadline applies h's new write deadline to the write h has in
// progress on this connection, if any.
func (c *streamConn) moveWriteDeadline(h *tcpPacketConn, t time.Time) {
	c.dlmu.Lock()
	defer c.dlmu.Unlock()
	if c.owner == h {
		_ = c.conn.SetWriteDeadline(t)
		c.wdl = t
	}
}

// writeLocked writes one frame while holding wsem. A timeout before any
// byte left keeps the connection; anything else that fails mid-frame tears
// the stream, so the connection is removed.
func (c *streamConn) writeLocked(p []byte, h *tcpPacketConn) (int, error) {
	if c.closed.Load() {
		return 0, ErrConnClosed
	}
	deadline, err := c.own(h)
	defer c.disown()
	if err != nil {
		c.fail(err)
		return 0, err
	}
	if !deadline.IsZero() && !time.Now().Before(deadline) {
		return 0, os.ErrDeadlineExceeded
	}
	n, err := c.writeOnce(p)
	if err == nil {
		return len(p), nil
	}
	timeout := isTimeout(err)
	// A plain socket that timed out before taking a byte is intact; a
	// wrapper such as TLS may have written part of a record while
	// reporting nothing, so only a *net.TCPConn is trusted with that.
	if _, plain := c.conn.(*net.TCPConn); timeout && n == 0 && plain {
		return 0, os.ErrDeadlineExceeded
	}
	closedUnderUs := c.closed.Load()
	c.fail(err)
	switch {
	case timeout:
		return 0, os.ErrDeadlineExceeded
	case closedUnderUs:
		return 0, ErrConnClosed
	}
	return 0, &net.OpError{Op: "write", Net: "tcp", Addr: c.remote, Err: err}
}

// copiedFrameLimit is the largest payload writeOnce copies: above it, a
// TCP socket gets header and payload in one writev instead.
const copiedFrameLimit = 2 << 10

// writeOnce writes p's frame with a single Write (or writev), so that a
// frame is never split between writers. Called with wsem held.
func (c *streamConn) writeOnce(p []byte) (int, error) {
	if tcp, ok := c.conn.(*net.TCPConn); ok && len(p) > copiedFrameLimit {
		binary.BigEndian.PutUint16(c.hdr[:], uint16(len(p)))
		c.iov = [2][]byte{c.hdr[:], p}
		c.vec = c.iov[:] // a field: a local would escape, allocating
		n, err := c.vec.WriteTo(tcp)
		c.iov = [2][]byte{} // keeps no reference to p
		return int(n), err
	}
	need := FrameHeaderSize + len(p)
	buf := c.wbuf
	switch {
	case need > FrameHeaderSize+copiedFrameLimit:
		// Another kind of conn (TLS, a wrapper) needs one Write: a large
		// frame gets a buffer of its own, so none is kept.
		buf = make([]byte, 0, need)
	case need > cap(c.wbuf):
		c.wbuf = make([]byte, 0, min(max(need, 2*cap(c.wbuf)), FrameHeaderSize+copiedFrameLimit)) // follows the frames sent
		buf = c.wbuf
	}
	buf = binary.BigEndian.AppendUint16(buf[:0], uint16(len(p)))
	buf = append(buf, p...)
	return c.conn.Write(buf)
}

// dropIdleWriteBuffer releases the synchronous write buffer of a
// connection that went idle, unless a write is in progress.
func (c *streamConn) dropIdleWriteBuffer() {
	select {
	case c.wsem <- struct{}{}:
		c.wbuf = nil
		<-c.wsem
	default:
	}
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

func (c *streamConn) writeBuffered(p []byte) (int, error) {
	c.bmu.Lock()
	if c.closed.Load() {
		c.bmu.Unlock()
		return 0, ErrConnClosed
	}
	if !c.queued.push(p, c.mux.params.WriteBufferSize) {
		c.bmu.Unlock()
		c.mux.stats.writeDrops.Add(1)
		return 0, ErrWriteBufferFull
	}
	start := !c.flushing
	if start {
		c.flushing = true
		c.writers.Add(1)
	}
	wakeIdle := c.idle
	c.idle = false
	c.bmu.Unlock()
	if start {
		go c.flush()
	} else if wakeIdle {
		wake(c.wake)
	}
	return len(p), nil
}

// flusherLinger is how long a flusher waits for more frames before it
// exits. Starting a goroutine allocates, so a connection with steady
// traffic keeps its flusher and one that falls idle gives it up.
const flusherLinger = 2 * time.Second

// flush writes queued frames, waits up to flusherLinger for more, then
// exits.
func (c *streamConn) flush() {
	defer c.writers.Done()
	linger := time.NewTimer(flusherLinger)
	defer linger.Stop()
	for {
		c.bmu.Lock()
		if c.closed.Load() {
			c.flushing, c.idle = false, false
			c.bmu.Unlock()
			return
		}
		if c.queued.used == 0 {
			c.idle = true
			c.bmu.Unlock()
			if !c.waitForFrames(linger) {
				return
			}
			continue
		}
		// Writers append behind these bytes meanwhile, never over them.
		front := c.queued.front()
		c.bmu.Unlock()
		n, err := c.conn.Write(front)
		c.bmu.Lock()
		if !c.closed.Load() {
			c.queued.consume(n)
		}
		c.bmu.Unlock()
		if err != nil {
			c.fail(err)
		}
	}
}

// waitForFrames waits until frames are queued, and reports false after
// having retired the flusher if none come within flusherLinger.
func (c *streamConn) waitForFrames(linger *time.Timer) bool {
	linger.Reset(flusherLinger)
	select {
	case <-c.wake:
		return true
	case <-c.done:
		return true // the loop sees closed
	case <-linger.C:
	}
	c.bmu.Lock()
	defer c.bmu.Unlock()
	if c.queued.used > 0 && !c.closed.Load() {
		c.idle = false
		return true
	}
	c.flushing, c.idle = false, false
	c.queued.release() // an idle connection keeps no write buffer
	return false
}

// waitWriters waits for a closed connection's flusher to exit.
func (c *streamConn) waitWriters() { c.writers.Wait() }

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
