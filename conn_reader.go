package tcpmux

import (
	"errors"
	"io"
	"time"
)

// Reading an attached connection. Its goroutine runs readLoop: it reads
// frames and queues them for the PacketConn, or, while the PacketConn may
// read it directly, lends its socket to a waiting reader and parks
// (socket_loan.go); the reader then runs readDirect. Whoever reads the
// socket also runs the idle check: a connection that read nothing for
// idleBufferLinger gives its buffer up and waits for data without one.

// idleBufferLinger is how long a connection that receives nothing keeps
// its read buffer. Checking costs one deadline per period, nothing per
// packet.
const idleBufferLinger = 2 * time.Second

// readLoop delivers every frame of an attached connection to its
// PacketConn until the stream ends or the PacketConn closes.
func (c *streamConn) readLoop() {
	if !c.activate() {
		return
	}
	for {
		if !c.fr.hasFrame() && c.pc.loan.offer(c) {
			if !c.awaitLoanEnd() {
				return
			}
			continue
		}
		p, err := c.fr.Next()
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

// awaitLoanEnd parks the goroutine while its socket is on loan, then takes
// it back. It reports false if the connection closed meanwhile.
func (c *streamConn) awaitLoanEnd() bool {
	c.mux.watchLoan(&c.pc.loan)
	select {
	case <-c.resume:
		return c.resumeReading()
	case <-c.done:
		return false
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

// pastIdleCheck handles the goroutine's read deadline, the idle check: a
// connection that read nothing for a whole period gives its buffer up until
// data comes. A timeout before the check is due is a wrapper's own; it
// waits for data afresh too, which catches a wrapper whose timeout stuck
// (awaitData). It reports false if the stream ended.
func (c *streamConn) pastIdleCheck() bool {
	if time.Now().Before(c.idleAt) || c.readNothingSinceCheck() {
		if !c.awaitData() {
			return false
		}
	}
	c.armIdleCheck(time.Now())
	return true
}

// awaitData parks the reader (its buffer is released, a partial frame
// kept), drops the write buffer and an empty queue's, and blocks in a Read
// of a few bytes with no deadline, so an idle connection costs a parked
// goroutine and little else. It reports false, having removed the
// connection, if the stream ended.
//
// With no deadline set, only a wrapper can time the Read out, and that is
// no reason to drop the stream, unless the timeout came at once: then the
// wrapper's error has stuck (crypto/tls keeps a timeout that is not
// Temporary, and fails every later Read with it), and reading on would
// spin.
func (c *streamConn) awaitData() bool {
	c.fr.park()
	c.dropIdleWriteBuffer()
	c.pc.queue.releaseIfEmpty()
	c.setReadDeadline(time.Time{})
	start := time.Now()
	err := c.fr.fill(FrameHeaderSize)
	if err == nil || isTimeout(err) && time.Since(start) >= stuckTimeoutBound {
		return true
	}
	c.fail(err)
	return false
}

// stuckTimeoutBound is how soon a Read with no deadline must time out for
// its wrapper's timeout to count as stuck (awaitData).
const stuckTimeoutBound = time.Millisecond

// setReadDeadline sets the socket's read deadline unless it is set
// already: the socket reader moves it once per idle check, not per packet.
func (c *streamConn) setReadDeadline(t time.Time) {
	if !t.Equal(c.rdl) {
		_ = c.conn.SetReadDeadline(t)
		c.rdl = t
	}
}

// interruptReadLocked makes a Read blocked on the socket return a timeout
// now. Called by the loan, with its mu held, on the holder's socket.
func (c *streamConn) interruptReadLocked() {
	c.setReadDeadline(time.Unix(1, 0))
}

// errLoanEnded tells a reader holding c's socket that c may no longer be
// read directly; errLoanIdle that c went idle. Either way it read nothing
// and gives the socket back to c's goroutine.
var (
	errLoanEnded = errors.New("tcpmux: direct read ended")
	errLoanIdle  = errors.New("tcpmux: direct read idle")
)

// readDirect reads the next frame from c's socket into b for h, which
// holds it on loan. Besides a frame, io.ErrShortBuffer, or why h may not
// read (closed, deadline), it returns errLoanEnded or errLoanIdle: then h
// gives the socket back and waits like any reader.
func (c *streamConn) readDirect(h *packetConnHandle, b []byte) (int, error) {
	timedOut := false
	for {
		if !c.fr.hasFrame() {
			if c.fr.parked {
				return 0, errLoanIdle
			}
			if err := c.pc.loan.armRead(c, h, timedOut); err != nil {
				return 0, err
			}
		}
		p, err := c.fr.Next()
		if err == nil {
			c.traffic.rx.add(len(p))
			if len(p) > len(b) {
				return 0, io.ErrShortBuffer
			}
			return copy(b, p), nil
		}
		if !isTimeout(err) {
			c.fail(err)
			return 0, errLoanEnded
		}
		c.directIdleCheck()
		timedOut = true
	}
}

// directIdleCheck is pastIdleCheck for a reader holding the socket, whose
// read may also have timed out for its own deadline or an interruption:
// armRead handles those.
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
