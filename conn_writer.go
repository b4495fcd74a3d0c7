package tcpmux

import (
	"encoding/binary"
	"net"
	"os"
	"time"
)

// writeFrame sends p as one frame, synchronously or through the write
// buffer, honouring the caller's write deadline.
func (c *streamConn) writeFrame(p []byte, h *packetConnHandle) (int, error) {
	if c.bw != nil { // WriteBufferSize > 0
		return c.writeBuffered(p)
	}
	return c.writeSync(p, h)
}

// writeSync writes p's frame on the caller's goroutine, once no other
// write is using the connection. The deadline's channel is made only if the
// write has to wait.
func (c *streamConn) writeSync(p []byte, h *packetConnHandle) (int, error) {
	if !c.wsem.tryAcquire() {
		if err := c.wsem.acquire(c.done, h.writeDeadline.wait()); err != nil {
			return 0, err
		}
	}
	n, err := c.writeLocked(p, h)
	c.wsem.release()
	return n, err
}

// own makes h the writer whose deadline the socket carries, and returns
// that deadline. A write with no deadline, on a socket that carries none,
// takes no lock. That is safe because each side stores before it loads
// what the other stores (sequentially consistent atomics): if h's deadline
// is being set meanwhile, the setter sees h as owner and applies it
// (moveWriteDeadline); if another handle's is being applied, this writer
// sees wdlSet and waits for dlmu, then puts its own back.
func (c *streamConn) own(h *packetConnHandle) (time.Time, error) {
	c.owner.Store(h)
	if !h.writeDeadline.armed.Load() && !c.wdlSet.Load() {
		return time.Time{}, nil
	}
	c.dlmu.Lock()
	defer c.dlmu.Unlock()
	deadline := h.writeDeadline.time()
	if deadline.Equal(c.wdl) {
		return deadline, nil
	}
	c.wdlSet.Store(true) // before the socket may carry it: see own
	err := c.conn.SetWriteDeadline(deadline)
	c.wdl = deadline
	c.wdlSet.Store(!deadline.IsZero())
	return deadline, err
}

func (c *streamConn) disown() { c.owner.Store(nil) }

// moveWriteDeadline applies h's new write deadline to the write h has in
// progress on this connection, if any.
func (c *streamConn) moveWriteDeadline(h *packetConnHandle, t time.Time) {
	c.dlmu.Lock()
	defer c.dlmu.Unlock()
	c.wdlSet.Store(true) // before looking at the owner: see own
	if c.owner.Load() == h {
		_ = c.conn.SetWriteDeadline(t)
		c.wdl = t
	}
	c.wdlSet.Store(!c.wdl.IsZero())
}

// writeLocked writes one frame while holding wsem. A timeout before any
// byte left keeps the connection; anything else that fails mid-frame tears
// the stream, so the connection is removed.
func (c *streamConn) writeLocked(p []byte, h *packetConnHandle) (int, error) {
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
	if c.wsem.tryAcquire() {
		c.wbuf = nil
		c.wsem.release()
	}
}
