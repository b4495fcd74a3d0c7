package tcpmux

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// tcpPacketConn is the PacketConn shared by every handle of one (ufrag,
// family, local IP): it gathers the TCP connections of that key and
// presents them as one packet-oriented connection. Applications hold it
// through reference-counted handles (packetConnHandle); it closes with its
// last handle, on RemoveConnByUfrag, on mux Close, or, if nobody ever
// claimed it, when AliveDurationForConnFromStun runs out or its last
// connection goes.
//
// Packets reach readers two ways: through queue, which the connections'
// goroutines fill, or, while loan lets them, straight from the socket of
// the only connection (socket_loan.go).
type tcpPacketConn struct {
	mux       *TCPMuxDefault
	ufrag     string
	key       pcKey
	localAddr *net.TCPAddr
	queue     *packetQueue
	loan      socketLoan
	closing   atomic.Bool // set when the PacketConn begins to close

	// sole is the PacketConn's connection while it has exactly one (the
	// common case: one ICE candidate pair), so that WriteTo finds it
	// without taking mu. Written under mu.
	sole atomic.Pointer[streamConn]

	// readable carries one wake-up token for readers blocked in ReadFrom:
	// a packet was queued into an empty queue, or the socket was offered.
	// A reader that waited passes it on when it leaves (passReadable), so
	// one token serves any number of readers without a thundering herd.
	readable chan struct{}

	// mu guards what follows (lock order: see Locks in tcpmux.go).
	mu      sync.Mutex
	dead    bool    // closing has begun; no handle or connection may join
	conns   connSet // one per remote address
	refs    int
	claimed bool
	expiry  *time.Timer // unclaimed PacketConns only
}

// pcKey identifies a PacketConn within a ufrag.
type pcKey struct {
	ipv6  bool
	local netip.Addr
}

func newTCPPacketConn(m *TCPMuxDefault, ufrag string, key pcKey) *tcpPacketConn {
	pc := &tcpPacketConn{
		mux:       m,
		ufrag:     ufrag,
		key:       key,
		localAddr: &net.TCPAddr{IP: key.local.AsSlice(), Port: m.port, Zone: key.local.Zone()},
		queue:     newPacketQueue(m.params.ReadBufferSize, UnclaimedQueueBytes), // until claimed (acquire)
		readable:  make(chan struct{}, 1),
	}
	pc.loan.readable, pc.loan.queue = pc.readable, pc.queue
	return pc
}

// acquire adds a handle. It fails if the PacketConn is already closing.
// The first one claims it: its connections can no longer be evicted, and
// its queue gets the claimed bound. Called with the mux's mu held, which
// guards table.
func (pc *tcpPacketConn) acquire(table *admissionTable) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.dead {
		return false
	}
	pc.refs++
	if !pc.claimed {
		pc.claimed = true
		for _, c := range pc.conns.list {
			table.claimed(c)
		}
		pc.queue.setMaxBytes(pc.mux.params.queueBytes())
	}
	if pc.expiry != nil {
		pc.expiry.Stop()
		pc.expiry = nil
	}
	pc.connsChangedLocked()
	return true
}

// connsChangedLocked updates what follows from the connections and the
// handles: sole, and the loan's lender. A connection may lend its socket
// to readers while it is the only one and the PacketConn is claimed (an
// unclaimed one must queue what arrives). Called with pc.mu held.
func (pc *tcpPacketConn) connsChangedLocked() {
	var sole *streamConn
	if pc.conns.len() == 1 {
		sole = pc.conns.list[0]
	}
	pc.sole.Store(sole)
	if pc.refs == 0 {
		sole = nil
	}
	pc.loan.setMayLend(sole)
}

// release drops a handle and closes the PacketConn with its last one.
func (pc *tcpPacketConn) release() {
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
func (pc *tcpPacketConn) startExpiry() {
	pc.mu.Lock()
	pc.expiry = time.AfterFunc(pc.mux.params.AliveDurationForConnFromStun, pc.expireUnclaimed)
	pc.mu.Unlock()
}

// expireUnclaimed closes a PacketConn that an incoming connection created
// if no GetConnByUfrag claimed it in time.
func (pc *tcpPacketConn) expireUnclaimed() {
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
func (pc *tcpPacketConn) close() {
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
func (pc *tcpPacketConn) dieLocked() []*streamConn {
	pc.dead = true
	if pc.expiry != nil {
		pc.expiry.Stop()
		pc.expiry = nil
	}
	// The loan ends as teardown closes them: a parked lender returns on its
	// end, a holder's read fails.
	pc.sole.Store(nil) // handles outlive a dead PacketConn: they pin no connection
	return pc.conns.take()
}

func (pc *tcpPacketConn) teardown(conns []*streamConn) {
	pc.mux.forget(pc, conns)
	pc.queue.close()
	pc.closing.Store(true)
	signal(pc.readable) // each reader woken passes it on (passReadable)
	for _, c := range conns {
		c.close()
	}
}

// addConn attaches c. It fails if the PacketConn is closing or already has
// a live connection from the same remote address, and reports whether the
// PacketConn is claimed. Called with the mux's mu held.
func (pc *tcpPacketConn) addConn(c *streamConn) (dead, duplicate, claimed bool) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.dead {
		return true, false, false
	}
	if pc.conns.find(c.remoteAP) >= 0 {
		return false, true, false
	}
	pc.conns.add(c)
	c.pc = pc
	pc.connsChangedLocked()
	return false, false, pc.claimed
}

// removeConn detaches c after its stream ended or broke, or it was
// evicted. An unclaimed PacketConn closes with its last connection: nobody
// could answer its packets.
func (pc *tcpPacketConn) removeConn(c *streamConn) {
	pc.mu.Lock()
	i := pc.conns.find(c.remoteAP)
	if i < 0 || pc.conns.list[i] != c {
		pc.mu.Unlock()
		return
	}
	pc.conns.remove(i)
	if pc.conns.len() > 0 || pc.claimed || pc.dead {
		pc.connsChangedLocked()
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

func (pc *tcpPacketConn) connCount() int {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.conns.len()
}

// lookup finds the connection from addr, for WriteTo.
func (pc *tcpPacketConn) lookup(addr netip.AddrPort) *streamConn {
	if c := pc.sole.Load(); c != nil && c.remoteAP == addr {
		return c
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if i := pc.conns.find(addr); i >= 0 {
		return pc.conns.list[i]
	}
	return nil
}

// deliver queues a packet from c, waiting while the queue is full. It
// returns false when c or the PacketConn has closed.
func (pc *tcpPacketConn) deliver(c *streamConn, p []byte) bool {
	retry := false
	for {
		ok, wasEmpty, wait, err := pc.queue.push(c.remote, p, &c.traffic.rx, retry)
		if err != nil {
			return false
		}
		if ok {
			if wasEmpty {
				signal(pc.readable)
			}
			return true
		}
		select { // the PacketConn's closing closes c too
		case <-wait:
			retry = true
		case <-c.done:
			pc.queue.cancelWait()
			return false
		}
	}
}

// passReadable passes the readers' wake-up token on if something is left
// for them (packets, the socket on offer, or the PacketConn's end): a
// reader that waited may have taken it.
func (pc *tcpPacketConn) passReadable() {
	if pc.queue.len() > 0 || pc.isClosing() || pc.loan.onOffer() {
		signal(pc.readable)
	}
}

// isClosing reports whether the PacketConn has begun closing, without its
// lock.
func (pc *tcpPacketConn) isClosing() bool { return pc.closing.Load() }

// moveWriteDeadline reaches a write of h blocked on any connection.
func (pc *tcpPacketConn) moveWriteDeadline(h *packetConnHandle, t time.Time) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for _, c := range pc.conns.list {
		c.moveWriteDeadline(h, t)
	}
}

func (pc *tcpPacketConn) isDead() bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.dead
}
