package tcpmux

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The direct read path.
//
// Through the queue, every packet costs a hand-off between two goroutines:
// the connection's, which reads the socket, and the application's, parked
// in ReadFrom. When a claimed PacketConn has a single connection (the
// common case: one ICE agent, one TCP candidate pair) and a reader waits,
// the connection's goroutine instead parks and lends its socket, with its
// FrameReader, to the PacketConn's readers: a ReadFrom that finds the
// queue empty reads the next frame straight from the socket into its own
// buffer, as a plain framed-TCP server would.
//
// The loan ends, and the connection's goroutine reads again, when a second
// connection joins, when the connection leaves, or when no reader has used
// the socket for a whole leaseSweepPeriod: an application that stops
// reading must still see back-pressure fill the queue, packets counted in
// Stats and the connection's end noticed, exactly as without the loan.

// lending is the part of a packetQueue that runs the loan. Fields without
// a comment are guarded by the queue's mu.
type lending struct {
	direct    atomic.Pointer[streamConn] // the connection allowed to lend, if any
	lease     *streamConn                // the connection lending now
	holder    *tcpPacketConn             // the handle reading its socket now
	requested bool                       // direct was asked to lend

	// For the sweeper, which reads them without the lock.
	state atomic.Uint32 // leaseNone, leaseFree or leaseHeld
	takes atomic.Uint64 // readers that took the lease so far
	loans atomic.Uint64 // offers so far

	// The sweeper's own, guarded by leaseSweeper.mu.
	watched    bool
	sweptFree  bool
	sweptTakes uint64
	sweptLoans uint64
}

const (
	leaseNone = iota
	leaseFree // on offer, no reader
	leaseHeld // a reader is in the socket
)

// offer puts c's socket on loan if c may lend and a reader waits for it.
// Otherwise it reports false and c's goroutine reads on.
func (q *packetQueue) offer(c *streamConn) bool {
	q.mu.Lock()
	c.lendAnswered()
	if q.closed || q.direct.Load() != c {
		q.mu.Unlock()
		return false
	}
	c.idleLender = false // it has data
	if q.waiting == 0 {
		q.mu.Unlock()
		return false // requested stays: readers that come still wait for data
	}
	q.requested = false
	q.lease = c
	q.state.Store(leaseFree)
	q.loans.Add(1)
	q.mu.Unlock()
	wake(q.readable)
	return true
}

// leaseOnOfferLocked reports whether a reader could take the lease now.
func (q *packetQueue) leaseOnOfferLocked() bool {
	return q.lease != nil && q.holder == nil
}

// takeLeaseLocked lends h the socket on offer, if any.
func (q *packetQueue) takeLeaseLocked(h *tcpPacketConn) *streamConn {
	if q.lease == nil || q.holder != nil {
		return nil
	}
	q.holder = h
	q.state.Store(leaseHeld)
	q.takes.Add(1)
	return q.lease
}

// requestLeaseLocked asks the connection that may lend, blocked in a Read
// of its own, to offer its socket to the reader that is about to wait: the
// interrupted Read returns to the loop that lends. Once per request, so a
// reader waiting in vain costs one wake-up.
func (q *packetQueue) requestLeaseLocked() {
	if c := q.direct.Load(); c != nil && q.lease == nil && !q.requested && !c.idleLender {
		q.requested = true
		c.askToLend()
	}
}

// returnLease ends a reader's loan of c's socket. The socket stays on offer
// for the next reader unless c lost the right to lend meanwhile, in which
// case c's goroutine resumes reading it.
func (q *packetQueue) returnLease(c *streamConn) {
	q.mu.Lock()
	q.holder = nil
	if q.lease != c { // closed meanwhile, or another connection lends now
		passOn := q.waiting > 0 && q.leaseOnOfferLocked()
		q.mu.Unlock()
		if passOn {
			wake(q.readable)
		}
		return
	}
	if q.direct.Load() != c { // a closed queue has no lease: handled above
		q.dropLeaseLocked()
		q.mu.Unlock()
		return
	}
	q.state.Store(leaseFree)
	passOn := q.waiting > 0
	q.mu.Unlock()
	if passOn {
		wake(q.readable)
	}
}

// returnIdleLease gives c's socket back to c's goroutine because the
// connection went idle: it waits for data in a read of a few bytes, with
// no buffer, and lends again when data comes. Until then readers wait on
// the queue without asking for the socket, so an idle session costs what
// it would without the loan.
func (q *packetQueue) returnIdleLease(c *streamConn) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.holder = nil
	if q.lease != c {
		return
	}
	c.idleLender = true
	q.dropLeaseLocked()
}

// lenderIdle tells readers not to ask c for its socket while c waits for
// data without a buffer (see returnIdleLease). An empty queue gives its
// buffer up too: the session is idle.
func (q *packetQueue) lenderIdle(c *streamConn) {
	q.mu.Lock()
	c.idleLender = true
	if q.direct.Load() == c && q.count == 0 {
		q.data, q.head = nil, 0
	}
	q.mu.Unlock()
}

// dropLeaseLocked ends the loan and wakes the lender. Only for a lease
// that no reader holds.
func (q *packetQueue) dropLeaseLocked() {
	if lent := q.lease; lent != nil {
		q.lease = nil
		q.state.Store(leaseNone)
		wake(lent.resume)
	}
}

// setDirect names the connection allowed to lend its socket (nil: none)
// and takes the lease back from one that lost the right: at once if no
// reader holds it, else by interrupting the holder's read, after which the
// holder returns it.
func (q *packetQueue) setDirect(c *streamConn) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if old := q.direct.Load(); old != nil && old != c {
		old.lendAnswered() // a request to it, if any, is void: it reads on
	}
	q.direct.Store(c)
	q.requested = false
	lent := q.lease
	switch {
	case lent == nil || lent == c:
	case q.holder != nil:
		lent.interruptRead()
	default:
		q.dropLeaseLocked()
	}
}

// interrupt wakes h's read of a lent socket, if h is reading one, so that
// it sees a new deadline or its handle closing.
func (q *packetQueue) interrupt(h *tcpPacketConn) {
	// h's new state is stored before this load, and a reader stores
	// leaseHeld before it reads that state (armDirectRead), so skipping the
	// lock when nobody is in the socket misses no one. It spares the lock
	// to applications that set a deadline before every read.
	if q.state.Load() != leaseHeld {
		return
	}
	q.mu.Lock()
	if q.holder == h && q.lease != nil {
		q.lease.interruptRead()
	}
	q.mu.Unlock()
}

// lendResult is how a connection's offer to lend its socket ended.
type lendResult uint8

const (
	lendRefused  lendResult = iota // not lent: read on
	lendReturned                   // lent, and back
	lendClosed                     // the connection closed while lent
)

// lend offers the socket to the PacketConn's readers and, if one waits,
// parks until the lease comes back.
func (c *streamConn) lend() lendResult {
	q := c.pc.queue
	if !q.offer(c) {
		return lendRefused
	}
	c.mux.watchLease(q)
	select {
	case <-c.resume:
		return lendReturned
	case <-c.done:
		return lendClosed
	}
}

// errLeaseEnded tells a reader holding c's lease that c may no longer be
// read directly; errLeaseIdle that c went idle (see returnIdleLease).
var (
	errLeaseEnded = errors.New("tcpmux: direct read ended")
	errLeaseIdle  = errors.New("tcpmux: direct read idle")
)

// readDirect reads the next frame from c's socket for h, which holds the
// lease, into b. It returns errLeaseEnded or errLeaseIdle, having read
// nothing, if the connection stopped being the PacketConn's only one,
// broke, or went idle; h then waits on the queue like any reader.
func (c *streamConn) readDirect(h *tcpPacketConn, b []byte) (int, error) {
	for {
		if !c.fr.hasFrame() {
			if c.fr.parked {
				return 0, errLeaseIdle
			}
			if err := c.armDirectRead(h); err != nil {
				return 0, err
			}
		}
		p, err := c.fr.Next()
		if err == nil {
			stats := &c.mux.stats
			stats.packetsReceived.Add(1)
			stats.bytesReceived.Add(uint64(len(p)))
			if len(p) > len(b) {
				return 0, io.ErrShortBuffer
			}
			return copy(b, p), nil
		}
		if !isTimeout(err) {
			c.fail(err)
			return 0, errLeaseEnded
		}
		c.directIdleCheck()
	}
}

// armDirectRead checks, before a Read that may block, that h may still
// read, and sets the socket's deadline to the earlier of h's read deadline
// and the idle check. rmu orders it with interruptRead: an interruption
// either comes after, or finds the state it reacts to already visible.
func (c *streamConn) armDirectRead(h *tcpPacketConn) error {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if h.closed.Load() {
		return ErrConnClosed
	}
	if c.pc.queue.direct.Load() != c {
		return errLeaseEnded
	}
	want := c.idleAt
	if hd := h.readDeadline.time(); !hd.IsZero() {
		if !time.Now().Before(hd) {
			return os.ErrDeadlineExceeded
		}
		want = earliest(want, hd)
	}
	c.setReadDeadlineLocked(want)
	return nil
}

// directIdleCheck is pastIdleCheck for a lease holder, whose read may also
// have timed out for its own deadline or an interruption: those are
// handled by armDirectRead.
func (c *streamConn) directIdleCheck() {
	now := time.Now()
	switch {
	case now.Before(c.idleAt):
	case c.readNothingSinceCheck():
		c.fr.park()
	default:
		c.scheduleIdleCheck(now)
	}
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// interruptRead makes a Read blocked on the socket return a timeout now.
func (c *streamConn) interruptRead() {
	c.rmu.Lock()
	c.forceReadDeadlineLocked(time.Unix(1, 0))
	c.rmu.Unlock()
}

// askToLend interrupts the Read of c's own goroutine so that it offers its
// socket. Until it answers (offer), its deadline stays passed, so a Read
// it starts meanwhile also returns at once instead of swallowing the
// request.
func (c *streamConn) askToLend() {
	c.rmu.Lock()
	c.wantLend = true
	c.forceReadDeadlineLocked(time.Unix(1, 0))
	c.rmu.Unlock()
}

func (c *streamConn) lendAnswered() {
	c.rmu.Lock()
	c.wantLend = false
	c.rmu.Unlock()
}

// leaseSweepPeriod is how long a lease may stay on offer with no reader
// before its connection takes the socket back.
const leaseSweepPeriod = 10 * time.Millisecond

// sweeperLinger is how many empty periods the sweeper waits before it
// exits, so that loans coming and going do not restart it each time.
const sweeperLinger = 100

// leaseSweeper takes back leases that no reader used for a whole period.
// One goroutine per mux, alive while leases are out (and sweeperLinger
// periods after), checks every lease with two atomic loads per period, so
// readers pay nothing for it.
type leaseSweeper struct {
	mu      sync.Mutex
	queues  []*packetQueue
	running bool
	empty   int // consecutive sweeps that found no lease
}

// watchLease puts q, whose connection has just lent its socket, under the
// sweeper's watch, starting the sweeper if needed.
func (m *TCPMuxDefault) watchLease(q *packetQueue) {
	s := &m.sweeper
	s.mu.Lock()
	defer s.mu.Unlock()
	q.sweptFree = false // a new loan gets a whole period
	if q.watched {
		return
	}
	q.watched = true
	s.queues = append(s.queues, q)
	if !s.running && m.enterCallback() {
		s.running = true
		go m.sweepLeases()
	}
}

func (m *TCPMuxDefault) sweepLeases() {
	defer m.wg.Done()
	tick := time.NewTicker(leaseSweepPeriod)
	defer tick.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-tick.C:
		}
		if !m.sweep() {
			return
		}
	}
}

// sweep checks every watched lease once. It reports false, having retired
// the sweeper, when no lease has been out for sweeperLinger periods.
func (m *TCPMuxDefault) sweep() bool {
	s := &m.sweeper
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.queues[:0]
	for _, q := range s.queues {
		if q.sweepLease() {
			kept = append(kept, q)
		} else {
			q.watched = false
		}
	}
	clear(s.queues[len(kept):])
	s.queues = kept
	if len(kept) > 0 {
		s.empty = 0
		return true
	}
	s.empty++
	if s.empty < sweeperLinger {
		return true
	}
	s.running, s.empty = false, 0
	return false
}

// sweepLease takes the lease back if it was on offer, untouched, for a
// whole period. It reports whether the lease is still out.
func (q *packetQueue) sweepLease() bool {
	takes, loans := q.takes.Load(), q.loans.Load()
	switch q.state.Load() {
	case leaseNone:
		return false
	case leaseHeld:
		q.sweptFree, q.sweptTakes, q.sweptLoans = false, takes, loans
		return true
	}
	if !q.sweptFree || takes != q.sweptTakes || loans != q.sweptLoans {
		q.sweptFree, q.sweptTakes, q.sweptLoans = true, takes, loans
		return true
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.lease == nil {
		return false // revoked since the loads
	}
	if q.holder != nil || q.takes.Load() != takes || q.loans.Load() != loans {
		return true // taken or lent anew since the loads: next period decides
	}
	// Readers that come back wait for the connection to offer again, with
	// its next data, rather than interrupt its Read: an interrupted Read
	// allocates its timeout error.
	q.requested = true
	q.dropLeaseLocked()
	return false
}
