package tcpmux

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// stunSniffSize is how many bytes decide whether a connection speaks framed
// STUN: the 2-byte frame length, then a STUN header up to its magic cookie.
const stunSniffSize = FrameHeaderSize + 8

// looksLikeBindingRequest reports whether a stream starts like a framed STUN
// Binding request. Such a stream is judged by the first-frame rules and is
// never handed to the fallback listener.
func looksLikeBindingRequest(head []byte) bool {
	return len(head) >= stunSniffSize &&
		binary.BigEndian.Uint16(head[2:4]) == stunBindingRequest &&
		binary.BigEndian.Uint32(head[6:10]) == stunMagicCookie
}

// handOver gives a non-STUN connection, with the bytes read so far, to the
// fallback listener. The connection leaves the mux's limits and levels
// before the application can Accept it, so that the application's next
// dial does not find it still counted.
func (m *TCPMuxDefault) handOver(c *streamConn, fr *FrameReader) rejectReason {
	// As after a first frame: a broken conn fails its next Read anyway.
	_ = c.conn.SetReadDeadline(time.Time{})
	m.mu.Lock()
	if m.closed.Load() { // Close is closing it with the pending ones
		m.mu.Unlock()
		return rejectOther
	}
	if !m.table.drop(c) {
		m.mu.Unlock()
		return handedOver // evicted meanwhile: closed and counted already
	}
	// Counted under mu with the drop, so a Stats snapshot sees it in one
	// state. The offer never blocks.
	result := m.fallback.offer(&replayConn{Conn: c.conn, replay: fr.buffered()}, &m.stats.fallback)
	switch result {
	case offerFull:
		m.stats.reject(rejectLimit)
	case offerClosed:
		m.stats.reject(rejectNotSTUN)
	}
	m.mu.Unlock()
	if result != offerQueued {
		c.close()
	}
	return handedOver
}

// replayConn replays the bytes the mux read before handing a connection
// over, then reads from the connection. It has net.Conn's methods only;
// Unwrap gives the original connection (e.g. a *net.TCPConn for
// CloseWrite or SetKeepAlive) once the replayed bytes are consumed.
type replayConn struct {
	net.Conn
	replay []byte
}

// Unwrap returns the connection the mux accepted.
func (c *replayConn) Unwrap() net.Conn { return c.Conn }

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.replay) == 0 {
		return c.Conn.Read(b)
	}
	n := copy(b, c.replay)
	c.replay = c.replay[n:]
	return n, nil
}

type offerResult int

const (
	offerQueued offerResult = iota
	offerFull
	offerClosed
)

// fallbackListener is the net.Listener of FallbackListener: a bounded queue
// of handed-over connections.
type fallbackListener struct {
	addr    net.Addr
	enabled bool
	queue   chan net.Conn

	mu     sync.Mutex
	closed bool
	done   chan struct{}
}

func newFallbackListener(m *TCPMuxDefault) *fallbackListener {
	l := &fallbackListener{addr: m.LocalAddr(), enabled: m.params.Fallback, done: make(chan struct{})}
	if l.enabled {
		l.queue = make(chan net.Conn, m.params.FallbackQueueSize)
	}
	return l
}

// offer queues c and counts it in queued, or reports why not. Only offer
// adds to the queue, under mu, so a queue found not full takes c at once.
func (l *fallbackListener) offer(c net.Conn, queued *atomic.Uint64) offerResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed || !l.enabled:
		return offerClosed
	case len(l.queue) == cap(l.queue):
		return offerFull
	}
	queued.Add(1) // before the application can Accept it
	l.queue <- c
	return offerQueued
}

// Accept returns the next connection that did not speak framed STUN.
func (l *fallbackListener) Accept() (net.Conn, error) {
	if !l.enabled {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: ErrFallbackDisabled}
	}
	select {
	case c := <-l.queue:
		return c, nil
	case <-l.done:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
	}
}

// Close stops the hand-over and closes the connections still queued.
func (l *fallbackListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	close(l.done)
	for {
		select {
		case c := <-l.queue:
			closeNow(c)
		default:
			return nil
		}
	}
}

// Addr is the mux's listening address.
func (l *fallbackListener) Addr() net.Addr { return l.addr }
