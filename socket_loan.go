package tcpmux

import (
	"os"
	"sync"
	"time"
)

// The direct read path.
//
// Through the queue, every packet costs a hand-off between two goroutines:
// the connection's, which reads the socket, and the application's, parked
// in ReadFrom. When a claimed PacketConn has a single connection (the
// common case: one ICE agent, one TCP candidate pair) and a reader waits,
// the connection's goroutine (the lender) instead parks and lends its
// socket, with its FrameReader, to the PacketConn's readers: a ReadFrom
// that finds the queue empty reads the next frame straight from the socket
// into its own buffer, as a plain framed-TCP server would.
//
// The lender offers the socket only when it has no whole frame buffered
// and a reader waits; readers never interrupt it to ask. The loan ends,
// and the lender reads again, when a second connection joins, when the
// connection breaks or goes idle, or when no reader has touched the socket
// for a whole loanSweepPeriod: an application that stops reading must still
// see back-pressure fill the queue, packets counted in Stats and the
// connection's end noticed, exactly as without the loan.

// loanState says who may read the socket of a PacketConn's lending
// connection.
type loanState uint8

const (
	lenderReads loanState = iota // the connection's goroutine reads and queues
	offered                      // the lender is parked; a reader may take the socket
	held                         // holder reads the socket in its ReadFrom
)

// socketLoan passes the right to read one connection's socket between that
// connection's goroutine and the readers of its PacketConn.
//
//	lenderReads -> offered      offer: the lender may lend and a reader waits
//	offered     -> held         take: a reader found the queue empty
//	held        -> offered      giveBack: the reader is done (a frame, a
//	                            short buffer, its deadline or Close)
//	held        -> lenderReads  giveBack: the socket broke or went idle, or
//	                            the connection may no longer lend
//	offered     -> lenderReads  revoke: untouched for a sweep period, or the
//	                            connection may no longer lend
//
// Every move to lenderReads sends the lender one token on its resume
// channel (one per loan: nothing passes it on); every move to offered
// wakes a waiting reader.
type socketLoan struct {
	readable chan struct{} // the PacketConn's readers' wake-up (tcpPacketConn.readable)
	queue    *packetQueue  // the PacketConn's: a reader takes the socket only when it is empty

	// mu guards the fields below (lock order: see Locks in tcpmux.go).
	mu      sync.Mutex
	mayLend *streamConn // may lend: the PacketConn's only connection, once claimed
	state   loanState
	lent    *streamConn       // whose socket is offered or held; nil when lenderReads
	holder  *packetConnHandle // the reader in the socket when held
	waiting int               // readers blocked in ReadFrom: the lender offers to them only
	uses    uint64            // offers, takes and returns: the sweeper's evidence of use

	// The sweeper's, guarded by loanSweeper.mu.
	watched   bool
	sweptUses uint64
}

// offer lends c's socket if c may lend, no socket is on loan (a reader may
// still hold the socket of the connection that lent before c), and a
// reader waits. The caller then parks until its resume token (or its end).
func (l *socketLoan) offer(c *streamConn) bool {
	l.mu.Lock()
	if l.mayLend != c || l.state != lenderReads || l.waiting == 0 {
		l.mu.Unlock()
		return false
	}
	if c.resume == nil { // made at the first loan: a quiet connection never lends
		c.resume = make(chan struct{}, 1)
	}
	l.state, l.lent = offered, c
	l.uses++
	l.mu.Unlock()
	signal(l.readable)
	return true
}

// takeOrWait gives h the socket on offer, if any. Otherwise it counts h as
// waiting, so that the lender offers the socket when it next could, and
// returns nil: h then waits on readable and calls stopWaiting. It reports
// retry, doing neither, if packets are queued: the lender may have queued
// them before it offered, and they come first (SPEC 4: in order per
// connection). The caller pops them.
func (l *socketLoan) takeOrWait(h *packetConnHandle) (c *streamConn, retry bool) {
	l.mu.Lock()
	switch {
	case l.queue.len() > 0:
		l.mu.Unlock()
		return nil, true
	case l.state != offered:
		l.waiting++
		l.mu.Unlock()
		return nil, false
	}
	l.state, l.holder = held, h
	l.uses++
	c = l.lent
	l.mu.Unlock() // not deferred: this is once per packet
	return c, false
}

func (l *socketLoan) stopWaiting() {
	l.mu.Lock()
	l.waiting--
	l.mu.Unlock()
}

// giveBack ends the holder's turn in c's socket. The socket stays on offer
// for the next reader unless resume is set (it broke or went idle) or c
// may no longer lend: then c's goroutine reads it again. Only the holder
// gives back, and while it holds c's socket no other is lent (offer), so
// c is still the lent one.
func (l *socketLoan) giveBack(c *streamConn, resume bool) {
	l.mu.Lock()
	l.holder = nil
	if resume || l.mayLend != c {
		l.endLocked()
		l.mu.Unlock()
		return
	}
	l.state = offered
	l.uses++
	others := l.waiting > 0
	l.mu.Unlock()
	if others {
		signal(l.readable)
	}
}

// onOffer reports whether a reader could take the socket now.
func (l *socketLoan) onOffer() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state == offered
}

// endLocked gives the socket back to its lender.
func (l *socketLoan) endLocked() {
	if l.lent != nil {
		signal(l.lent.resume)
	}
	l.state, l.lent, l.holder = lenderReads, nil, nil
}

// setMayLend names the connection that may lend (nil: none) and takes the
// socket back from one that lost the right: at once if it is on offer, or
// by interrupting the holder's read, after which the holder gives it back.
func (l *socketLoan) setMayLend(c *streamConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mayLend = c
	if l.lent == nil || l.lent == c {
		return
	}
	if l.state == held {
		l.lent.interruptReadLocked()
		return
	}
	l.endLocked()
}

// interrupt wakes h's read of the lent socket, if h is in it, so that it
// sees a new deadline or its handle closing.
func (l *socketLoan) interrupt(h *packetConnHandle) {
	l.mu.Lock()
	if l.state == held && l.holder == h {
		l.lent.interruptReadLocked()
	}
	l.mu.Unlock()
}

// armRead sets c's socket deadline for h's next blocking read: the earlier
// of h's read deadline and c's idle check. It fails if h may not read: its
// handle closed, its deadline passed, or c may no longer lend. Under mu, so
// that an interruption either comes after it or finds what it reacts to
// already visible.
//
// After a read that timed out, a deadline still ahead means that neither
// it nor an interruption (which moves it into the past) was the cause: the
// timeout was a wrapper's own, perhaps one that stuck and fails every Read
// at once. The reader then parks c's buffer and gives the socket back
// (errLoanIdle), and c's goroutine, waiting for data afresh, tells the two
// apart (awaitData).
func (l *socketLoan) armRead(c *streamConn, h *packetConnHandle, afterTimeout bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := h.readErr(); err != nil {
		return err
	}
	if l.mayLend != c {
		return errLoanEnded
	}
	if afterTimeout && time.Now().Before(c.rdl) {
		c.fr.park()
		return errLoanIdle
	}
	at := c.idleAt
	if d := h.readDeadline.time(); !d.IsZero() {
		if !time.Now().Before(d) { // passed, its timer not yet fired
			return os.ErrDeadlineExceeded
		}
		at = earliest(at, d)
	}
	c.setReadDeadline(at)
	return nil
}

// loanSweepPeriod is how long a socket may stay on offer with no reader
// before its connection takes it back.
const loanSweepPeriod = 10 * time.Millisecond

// sweeperLinger is how many empty periods the sweeper waits before it
// exits, so that loans coming and going do not restart it each time.
const sweeperLinger = 100

// loanSweeper takes back sockets that stayed on offer, untouched, for a
// whole period. One goroutine per mux, alive while loans are out (and
// sweeperLinger periods after), looks at each loan once a period, so
// readers pay nothing for it.
type loanSweeper struct {
	mu      sync.Mutex
	loans   []*socketLoan
	running bool
	empty   int // consecutive sweeps that found no loan
}

// watchLoan puts l, just offered, under the sweeper's watch, starting the
// sweeper if needed.
func (m *TCPMuxDefault) watchLoan(l *socketLoan) {
	s := &m.sweeper
	s.mu.Lock()
	defer s.mu.Unlock()
	if l.watched {
		return
	}
	l.watched = true
	s.loans = append(s.loans, l)
	if !s.running && m.enterCallback() {
		s.running = true
		go m.sweepLoans()
	}
}

func (m *TCPMuxDefault) sweepLoans() {
	defer m.wg.Done()
	tick := time.NewTicker(loanSweepPeriod)
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

// sweep looks at every watched loan once. It reports false, having retired
// the sweeper, when no loan has been out for sweeperLinger periods.
func (m *TCPMuxDefault) sweep() bool {
	s := &m.sweeper
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.loans[:0]
	for _, l := range s.loans {
		if l.sweep() {
			kept = append(kept, l)
		} else {
			l.watched = false
		}
	}
	clear(s.loans[len(kept):])
	s.loans = kept
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

// sweep takes the socket back if it stayed on offer, untouched, since the
// last sweep. It reports whether the loan is still out. Called with the
// sweeper's mu held.
func (l *socketLoan) sweep() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.state == lenderReads:
		return false
	case l.state == offered && l.uses == l.sweptUses:
		l.endLocked()
		return false
	}
	l.sweptUses = l.uses
	return true
}
