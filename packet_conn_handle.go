package tcpmux

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"
)

// packetConnHandle is the net.PacketConn that GetConnByUfrag returns: one
// reference to a shared tcpPacketConn, with deadlines of its own. Every
// error its methods return is a *net.OpError wrapping one of the package's
// errors, os.ErrDeadlineExceeded or io.ErrShortBuffer, as package net does.
type packetConnHandle struct {
	pc            *tcpPacketConn
	closed        atomic.Bool
	readDeadline  deadline
	writeDeadline deadline
}

func newPacketConnHandle(pc *tcpPacketConn) *packetConnHandle {
	return &packetConnHandle{pc: pc}
}

// ReadFrom reads the next packet from any connection of the PacketConn.
// When the PacketConn has a single connection and nothing is queued, it
// reads the frame from that connection's socket itself (socket_loan.go).
func (h *packetConnHandle) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, _, err := h.read(b)
	if from == nil {
		return n, nil, err // not a typed nil in the interface
	}
	return n, from, err
}

// ReadFromAddrPort is ReadFrom returning a netip.AddrPort, for pion/ice's
// allocation-free path.
func (h *packetConnHandle) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	n, from, sender, err := h.read(b)
	if sender != nil {
		return n, sender.remoteAP, err // no conversion on the direct path
	}
	return n, from.AddrPort(), err
}

// read returns the next packet and its sender's address, and the sender
// itself when it read the packet from the sender's socket.
func (h *packetConnHandle) read(b []byte) (int, *net.TCPAddr, *streamConn, error) {
	n, from, sender, err, waited := h.readOrWait(b)
	if waited {
		h.pc.passReadable()
	}
	if err != nil {
		err = h.opError("read", from, err)
	}
	return n, from, sender, err
}

// readOrWait takes the next packet: from the queue, else from the lent
// socket, else it waits for either. It reports whether it waited, and so
// may have taken the readers' wake-up token.
func (h *packetConnHandle) readOrWait(b []byte) (n int, from *net.TCPAddr, sender *streamConn, err error, waited bool) {
	pc := h.pc
	for {
		if err := h.readErr(); err != nil {
			return 0, nil, nil, err, waited
		}
		if n, from, ok, err := pc.queue.pop(b); ok {
			return n, from, nil, err, waited
		}
		c, retry := pc.loan.takeOrWait(h)
		if retry {
			continue
		}
		if c != nil {
			n, err := c.readDirect(h, b)
			pc.loan.giveBack(c, err == errLoanIdle || err == errLoanEnded)
			switch err {
			case errLoanIdle, errLoanEnded:
				continue
			case nil, io.ErrShortBuffer:
				return n, c.remote, c, err, waited
			}
			return 0, nil, nil, err, waited
		}
		select { // each case holds a sudog while parked: two
		case <-pc.readable: // also signalled when the PacketConn closes
		case <-h.readDeadline.wait(): // also closed by Close
		}
		pc.loan.stopWaiting()
		waited = true
	}
}

// readErr is why h may not read now, if anything.
func (h *packetConnHandle) readErr() error {
	switch {
	case h.closed.Load():
		return ErrConnClosed
	case h.readDeadline.exceeded():
		return os.ErrDeadlineExceeded
	}
	if h.pc.isClosing() {
		return ErrConnClosed
	}
	return nil
}

// WriteTo sends b as one frame on the connection whose remote address is
// addr.
func (h *packetConnHandle) WriteTo(b []byte, addr net.Addr) (int, error) {
	ap := addrPortOf(addr)
	if !ap.IsValid() {
		return 0, h.opError("write", addr, fmt.Errorf("%w: %v", ErrNoConnForAddr, addr))
	}
	n, err := h.write(b, ap)
	if err != nil {
		return n, h.opError("write", addr, err)
	}
	return n, nil
}

// WriteToAddrPort is WriteTo with a netip.AddrPort, for pion/ice's
// allocation-free path.
func (h *packetConnHandle) WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	n, err := h.write(b, addr)
	if err != nil {
		if _, ok := err.(*net.OpError); ok { // a dropped frame's is made once
			return n, err
		}
		return n, h.opError("write", net.TCPAddrFromAddrPort(addr), err)
	}
	return n, nil
}

func (h *packetConnHandle) write(b []byte, addr netip.AddrPort) (int, error) {
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
		c.traffic.tx.add(n)
	}
	return n, err
}

// opError keeps errors.Is working (net.ErrClosed, os.ErrDeadlineExceeded,
// io.ErrShortBuffer...) while telling which side failed, as package net
// does. An error that already is a *net.OpError (a failed write) is
// returned as it is. Errors are rare, so the allocation is off the hot
// path.
func (h *packetConnHandle) opError(op string, remote net.Addr, err error) error {
	if _, ok := err.(*net.OpError); ok {
		return err
	}
	if tcp, ok := remote.(*net.TCPAddr); ok && tcp == nil {
		remote = nil // not a typed nil in the interface
	}
	return &net.OpError{Op: op, Net: "tcp", Source: h.pc.localAddr, Addr: remote, Err: err}
}

// Close releases this handle: its pending ReadFrom returns, and with the
// last handle the PacketConn and its TCP connections close. A second Close
// returns an error and releases nothing.
func (h *packetConnHandle) Close() error {
	if !h.closed.CompareAndSwap(false, true) {
		return h.opError("close", nil, ErrConnClosed)
	}
	h.readDeadline.shut() // wakes its ReadFroms
	h.pc.loan.interrupt(h)
	h.writeDeadline.stop()
	h.pc.release()
	return nil
}

// LocalAddr is the listener's port with the local IP asked for.
func (h *packetConnHandle) LocalAddr() net.Addr { return h.pc.localAddr }

// SetDeadline sets both deadlines of this handle.
func (h *packetConnHandle) SetDeadline(t time.Time) error {
	_ = h.SetReadDeadline(t)
	return h.SetWriteDeadline(t)
}

// SetReadDeadline bounds ReadFrom, including one already blocked.
func (h *packetConnHandle) SetReadDeadline(t time.Time) error {
	h.readDeadline.set(t)
	h.pc.loan.interrupt(h)
	return nil
}

// SetWriteDeadline bounds WriteTo, including one blocked in a write.
func (h *packetConnHandle) SetWriteDeadline(t time.Time) error {
	h.writeDeadline.set(t)
	h.pc.moveWriteDeadline(h, t)
	return nil
}
