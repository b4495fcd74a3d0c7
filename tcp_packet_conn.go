package tcpmux

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// packetConn gathers the TCP connections of one (ufrag, family, local IP)
// and presents them as one packet-oriented connection. Applications hold it
// through reference-counted handles (*tcpPacketConn); it closes with its
// last handle, on RemoveConnByUfrag, on mux Close, or, if nobody ever
// claimed it, when AliveDurationForConnFromStun runs out.
type packetConn struct {
	mux       *TCPMuxDefault
	ufrag     string
	key       pcKey
	localAddr *net.TCPAddr
	queue     *packetQueue
	done      chan struct{} // closed when the PacketConn closes

	mu      sync.Mutex
	dead    bool // closing has begun; no handle or connection may join
	conns   map[netip.AddrPort]*streamConn
	refs    int
	claimed bool
	expiry  *time.Timer // unclaimed PacketConns only
}

// pcKey identifies a PacketConn within a ufrag.
type pcKey struct {
	ipv6  bool
	local netip.Addr
}

func newPacketConn(m *TCPMuxDefault, ufrag string, key pcKey) *packetConn {
	return &packetConn{
		mux:       m,
		ufrag:     ufrag,
		key:       key,
		localAddr: &net.TCPAddr{IP: key.local.AsSlice(), Port: m.port, Zone: key.local.Zone()},
		queue:     newPacketQueue(m.params.ReadBufferSize, UnclaimedQueueBytes), // until claimed (acquire)
		done:      make(chan struct{}),
		conns:     make(map[netip.AddrPort]*streamConn),
	}
}

// acquire adds a handle. It fails if the PacketConn is already closing.
// The first one claims it: its connections can no longer be evicted, and
// its queue gets the claimed bound. Called with the mux's mu held, which
// guards table.
func (pc *packetConn) acquire(table *admissionTable) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.dead {
		return false
	}
	pc.refs++
	if !pc.claimed {
		pc.claimed = true
		for _, c := range pc.conns {
			table.claimed(c)
		}
		pc.queue.setMaxBytes(pc.mux.params.queueBytes())
	}
	if pc.expiry != nil {
		pc.expiry.Stop()
		pc.expiry = nil
	}
	pc.updateDirectLocked()
	return true
}

// updateDirectLocked lets the PacketConn's connection be read directly by
// its readers while it is the only one and the PacketConn is claimed (an
// unclaimed one must queue what arrives). Called with pc.mu held.
func (pc *packetConn) updateDirectLocked() {
	var sole *streamConn
	if pc.refs > 0 && len(pc.conns) == 1 {
		for _, c := range pc.conns {
			sole = c
		}
	}
	if pc.queue.direct.Load() != sole {
		pc.queue.setDirect(sole)
	}
}

// release drops a handle and closes the PacketConn with its last one.
func (pc *packetConn) release() {
	pc.mu.Lock()
	pc.refs--
	if pc.refs > 0 || pc.dead {
		pc.mu.Unlock()
		return
	}
	conns := pc.dieLocked()
	pc.mu.Unlock()
	pc.teardown(conns)
}

// startExpiry arms the timer that closes an unclaimed PacketConn.
func (pc *packetConn) startExpiry() {
	pc.mu.Lock()
	pc.expiry = time.AfterFunc(pc.mux.params.AliveDurationForConnFromStun, pc.expireUnclaimed)
	pc.mu.Unlock()
}

// expireUnclaimed closes a PacketConn that an incoming connection created
// if no GetConnByUfrag claimed it in time.
func (pc *packetConn) expireUnclaimed() {
	if !pc.mux.enterCallback() {
		return
	}
	defer pc.mux.wg.Done()
	pc.mu.Lock()
	if pc.claimed || pc.dead {
		pc.mu.Unlock()
		return
	}
	conns := pc.dieLocked()
	pc.mu.Unlock()
	pc.mux.log.Debugf("closing unclaimed ufrag %q after %v", pc.ufrag, pc.mux.params.AliveDurationForConnFromStun)
	pc.mux.stats.unclaimedGone.Add(1)
	pc.teardown(conns)
}

// close closes the PacketConn and its connections. Idempotent.
func (pc *packetConn) close() {
	pc.mu.Lock()
	if pc.dead {
		pc.mu.Unlock()
		return
	}
	conns := pc.dieLocked()
	pc.mu.Unlock()
	pc.teardown(conns)
}

// dieLocked marks the PacketConn dead and takes its connections, so that
// exactly one caller tears it down.
func (pc *packetConn) dieLocked() map[netip.AddrPort]*streamConn {
	pc.dead = true
	if pc.expiry != nil {
		pc.expiry.Stop()
		pc.expiry = nil
	}
	conns := pc.conns
	pc.conns = nil
	return conns
}

func (pc *packetConn) teardown(conns map[netip.AddrPort]*streamConn) {
	pc.mux.forget(pc, conns)
	close(pc.done)
	pc.queue.close()
	for _, c := range conns {
		c.close()
	}
}

// addConn attaches c. It fails if the PacketConn is closing or already has
// a live connection from the same remote address, and reports whether the
// PacketConn is claimed. Called with the mux's mu held.
func (pc *packetConn) addConn(c *streamConn) (dead, duplicate, claimed bool) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.dead {
		return true, false, false
	}
	if _, ok := pc.conns[c.remoteAP]; ok {
		return false, true, false
	}
	pc.conns[c.remoteAP] = c
	c.pc = pc
	pc.updateDirectLocked()
	return false, false, pc.claimed
}

// removeConn detaches c after its stream ended or broke, or it was
// evicted. An unclaimed PacketConn closes with its last connection: nobody
// could answer its packets.
func (pc *packetConn) removeConn(c *streamConn) {
	pc.mu.Lock()
	if pc.conns[c.remoteAP] != c {
		pc.mu.Unlock()
		return
	}
	delete(pc.conns, c.remoteAP)
	if len(pc.conns) > 0 || pc.claimed || pc.dead {
		pc.updateDirectLocked()
		pc.mu.Unlock()
		pc.mux.forgetConn(c)
		return
	}
	conns := pc.dieLocked()
	pc.mu.Unlock()
	pc.mux.forgetConn(c)
	pc.mux.stats.unclaimedGone.Add(1)
	pc.teardown(conns)
}

func (pc *packetConn) connCount() int {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return len(pc.conns)
}

func (pc *packetConn) lookup(addr netip.AddrPort) *streamConn {
	pc.mu.Lock()
	c := pc.conns[addr]
	pc.mu.Unlock()
	return c
}

// deliver queues a packet from c, waiting while the queue is full. It
// returns false when c or the PacketConn has closed.
func (pc *packetConn) deliver(c *streamConn, p []byte) bool {
	// Counted before the push, so that a Stats snapshot taken after
	// ReadFrom returned the packet includes it.
	stats := &pc.mux.stats
	stats.packetsReceived.Add(1)
	stats.bytesReceived.Add(uint64(len(p)))
	if pc.push(c, p) {
		return true
	}
	stats.packetsReceived.Add(^uint64(0))
	stats.bytesReceived.Add(^uint64(len(p) - 1))
	return false
}

func (pc *packetConn) push(c *streamConn, p []byte) bool {
	retry := false
	for {
		ok, err := pc.queue.push(c.remote, p, retry)
		if err != nil {
			return false
		}
		if ok {
			return true
		}
		select {
		case <-pc.queue.writable:
			retry = true
		case <-pc.done:
			pc.queue.cancelWait()
			return false
		case <-c.done:
			pc.queue.cancelWait()
			return false
		}
	}
}

// tcpPacketConn is the net.PacketConn that GetConnByUfrag returns: one
// reference to a shared packetConn, with deadlines of its own.
type tcpPacketConn struct {
	pc            *packetConn
	closed        atomic.Bool
	done          chan struct{}
	readDeadline  deadline
	writeDeadline deadline
}

func newTCPPacketConn(pc *packetConn) *tcpPacketConn {
	return &tcpPacketConn{
		pc:   pc,
		done: make(chan struct{}),
	}
}

// ReadFrom reads the next packet from any connection of the PacketConn.
// When the PacketConn has a single connection and nothing is queued, it
// reads the frame from that connection's socket itself (direct_read.go).
func (h *tcpPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := h.read(b)
	if from == nil {
		return n, nil, err
	}
	return n, from, err
}

// ReadFromAddrPort is ReadFrom returning a netip.AddrPort, for pion/ice's
// allocation-free path.
func (h *tcpPacketConn) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	n, from, err := h.read(b)
	return n, from.AddrPort(), err
}

func (h *tcpPacketConn) read(b []byte) (int, *net.TCPAddr, error) {
	q := h.pc.queue
	waiting := false
	for {
		if h.closed.Load() || h.readDeadline.exceeded() {
			if waiting {
				q.cancelRead()
			}
			if h.closed.Load() {
				return 0, nil, h.opError("read", nil, ErrConnClosed)
			}
			return 0, nil, h.opError("read", nil, os.ErrDeadlineExceeded)
		}
		n, from, c, res, err := q.pop(b, waiting, h)
		waiting = false
		switch res {
		case popLease:
			n, err = c.readDirect(h, b)
			if err == errLeaseIdle {
				q.returnIdleLease(c)
				continue
			}
			q.returnLease(c)
			switch err {
			case nil:
				return n, c.remote, nil
			case errLeaseEnded:
				continue
			case io.ErrShortBuffer:
				return 0, c.remote, h.opError("read", c.remote, err)
			}
			return 0, nil, h.opError("read", nil, err)
		case popPacket:
			if err != nil {
				err = h.opError("read", from, err)
			}
			return n, from, err
		}
		waiting = true
		select {
		case <-q.readable:
		case <-h.done:
		case <-h.pc.done:
		case <-h.readDeadline.wait():
		}
	}
}

// WriteTo sends b as one frame on the connection whose remote address is
// addr.
func (h *tcpPacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ap := addrPortOf(addr)
	if !ap.IsValid() {
		return 0, &net.OpError{Op: "write", Net: "tcp", Source: h.pc.localAddr, Addr: addr, Err: fmt.Errorf("%w: %v", ErrNoConnForAddr, addr)}
	}
	return h.WriteToAddrPort(b, ap)
}

// WriteToAddrPort is WriteTo with a netip.AddrPort, for pion/ice's
// allocation-free path.
func (h *tcpPacketConn) WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	if h.closed.Load() {
		return 0, ErrConnClosed
	}
	if len(b) > MaxFramePayload {
		return 0, frameTooLarge(len(b), MaxFramePayload)
	}
	if h.writeDeadline.exceeded() {
		return 0, os.ErrDeadlineExceeded
	}
	c := h.pc.lookup(unmapAddrPort(addr))
	if c == nil {
		if h.pc.isDead() {
			return 0, ErrConnClosed
		}
		return 0, fmt.Errorf("%w: %v", ErrNoConnForAddr, addr)
	}
	n, err := c.writeFrame(b, h)
	if err == nil {
		h.pc.mux.stats.packetsSent.Add(1)
		h.pc.mux.stats.bytesSent.Add(uint64(n))
	}
	return n, err
}

// moveWriteDeadline reaches a write of h blocked on any connection.
func (pc *packetConn) moveWriteDeadline(h *tcpPacketConn, t time.Time) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for _, c := range pc.conns {
		c.moveWriteDeadline(h, t)
	}
}

func (pc *packetConn) isDead() bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.dead
}

// opError keeps errors.Is working (net.ErrClosed, os.ErrDeadlineExceeded,
// io.ErrShortBuffer) while telling which side failed. Errors are rare, so
// the allocation is off the hot path.
func (h *tcpPacketConn) opError(op string, remote *net.TCPAddr, err error) error {
	var addr net.Addr
	if remote != nil {
		addr = remote
	}
	return &net.OpError{Op: op, Net: "tcp", Source: h.pc.localAddr, Addr: addr, Err: err}
}

// Close releases this handle: its pending ReadFrom returns, and with the
// last handle the PacketConn and its TCP connections close. A second Close
// returns an error and releases nothing.
func (h *tcpPacketConn) Close() error {
	if !h.closed.CompareAndSwap(false, true) {
		return ErrConnClosed
	}
	close(h.done)
	h.pc.queue.interrupt(h)
	h.readDeadline.stop()
	h.writeDeadline.stop()
	h.pc.release()
	return nil
}

// LocalAddr is the listener's port with the local IP asked for.
func (h *tcpPacketConn) LocalAddr() net.Addr { return h.pc.localAddr }

// SetDeadline sets both deadlines of this handle.
func (h *tcpPacketConn) SetDeadline(t time.Time) error {
	_ = h.SetReadDeadline(t)
	return h.SetWriteDeadline(t)
}

// SetReadDeadline bounds ReadFrom, including one already blocked.
func (h *tcpPacketConn) SetReadDeadline(t time.Time) error {
	h.readDeadline.set(t)
	h.pc.queue.interrupt(h)
	return nil
}

// SetWriteDeadline bounds WriteTo, including one blocked in a write.
func (h *tcpPacketConn) SetWriteDeadline(t time.Time) error {
	h.writeDeadline.set(t)
	h.pc.moveWriteDeadline(h, t)
	return nil
}

// deadline is a net.Conn-style deadline: a channel closed when the time
// passes, re-armed by set. Waiters take the channel once per wait, so
// moving the deadline while they wait takes effect at once. The channel
// is made on the first wait, so a handle nobody waits on costs none.
type deadline struct {
	mu      sync.Mutex
	at      time.Time
	timer   *time.Timer
	ch      chan struct{} // nil until a wait; closed once expired
	expired atomic.Bool
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.at = t
	if d.timer != nil {
		d.timer.Stop()
	}
	if d.expired.Load() {
		d.ch = nil // closed: the next wait makes a fresh one
		d.expired.Store(false)
	}
	if t.IsZero() {
		return
	}
	d.armLocked()
}

// armLocked expires the deadline if it has passed, or starts the timer.
func (d *deadline) armLocked() {
	wait := time.Until(d.at)
	if wait <= 0 {
		d.expired.Store(true)
		if d.ch != nil {
			close(d.ch)
		}
		return
	}
	if d.timer == nil {
		d.timer = time.AfterFunc(wait, d.fire)
	} else {
		d.timer.Reset(wait)
	}
}

func (d *deadline) fire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at.IsZero() || d.expired.Load() {
		return
	}
	d.armLocked() // re-arms if the timer was stale or the clock disagrees
}

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
		if d.expired.Load() {
			close(d.ch)
		}
	}
	return d.ch
}

func (d *deadline) exceeded() bool { return d.expired.Load() }

func (d *deadline) time() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.at
}

func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
	}
}
