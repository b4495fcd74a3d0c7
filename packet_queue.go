package tcpmux

import (
	"io"
	"net"
	"sync"
)

// packetQueue holds the packets received for one PacketConn until ReadFrom
// takes them. Payloads live back to back in one circular byte buffer that
// grows on demand up to a byte bound, so queueing a packet allocates nothing
// once the buffer has grown, and a queue of small packets stays small.
//
// It is bounded twice, by packets and by bytes, and an empty queue takes
// one packet whatever its size, so a large frame never deadlocks. A full
// queue refuses a push; the TCP reader then waits on writable, so a slow
// application slows its peers down through TCP instead of losing packets.
// Both tables grow on demand: a queue costs what it holds.
type packetQueue struct {
	mu       sync.Mutex
	data     []byte // circular; packets in FIFO order starting at head
	head     int
	used     int
	maxBytes int
	entries  []queuedPacket // circular, one per queued packet
	first    int
	count    int
	maxCount int
	blocked  int // pushers waiting on writable
	waiting  int // readers waiting on readable
	closed   bool

	// readable and writable carry one wake-up token each. A woken waiter
	// that leaves work behind passes the token on, so one token serves any
	// number of waiters without a thundering herd.
	readable chan struct{}
	writable chan struct{}

	lending // the direct read path (direct_read.go)
}

// popResult tells a reader what pop gave it.
type popResult uint8

const (
	popEmpty  popResult = iota // nothing: wait on readable and retry
	popPacket                  // a packet, or an error
	popLease                   // the lent socket: read it, then returnLease
)

// queuedPacket keeps only the sender's address, not its connection: a
// packet outliving its connection must not keep the connection's buffers
// alive.
type queuedPacket struct {
	size int
	from *net.TCPAddr
}

// minQueueBytes is the smallest byte buffer of a queue. Buffers grow by
// doubling from the first packet's size, so a PacketConn that only ever saw
// STUN checks stays a few hundred bytes.
const minQueueBytes = 256

// minQueueEntries is the first size of a queue's packet table.
const minQueueEntries = 4

func newPacketQueue(maxPackets, maxBytes int) *packetQueue {
	return &packetQueue{
		maxBytes: maxBytes,
		maxCount: maxPackets,
		readable: make(chan struct{}, 1),
		writable: make(chan struct{}, 1),
	}
}

// setMaxBytes changes the byte bound (claiming a PacketConn lifts it) and
// lets blocked pushers retry.
func (q *packetQueue) setMaxBytes(n int) {
	q.mu.Lock()
	q.maxBytes = n
	blocked := q.blocked > 0
	q.mu.Unlock()
	if blocked {
		wake(q.writable)
	}
}

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// push queues a copy of p from the peer at from. It returns false if the queue is full;
// the caller then waits on q.writable and calls push again with retry set,
// or calls cancelWait if it gives up.
func (q *packetQueue) push(from *net.TCPAddr, p []byte, retry bool) (ok bool, err error) {
	q.mu.Lock()
	if retry {
		q.blocked--
	}
	if q.closed {
		q.mu.Unlock()
		return false, ErrConnClosed
	}
	if !q.reserveEntry() || !q.reserve(len(p)) {
		q.blocked++
		q.mu.Unlock()
		return false, nil
	}
	if len(p) > 0 {
		tail := (q.head + q.used) % len(q.data)
		if n := copy(q.data[tail:], p); n < len(p) {
			copy(q.data, p[n:])
		}
	}
	q.entries[(q.first+q.count)%len(q.entries)] = queuedPacket{size: len(p), from: from}
	q.count++
	q.used += len(p)
	// Readers only wait on an empty queue, and pass the token on while
	// packets remain, so only the first packet needs to wake one.
	wakeReader := q.count == 1 && q.waiting > 0
	passBaton := q.blocked > 0 && q.count < q.maxCount
	q.mu.Unlock()
	if wakeReader {
		wake(q.readable)
	}
	if passBaton {
		wake(q.writable)
	}
	return true, nil
}

// cancelWait undoes the blocked count of a push that will not be retried.
func (q *packetQueue) cancelWait() {
	q.mu.Lock()
	q.blocked--
	q.mu.Unlock()
}

// reserveEntry makes room in the packet table for one more packet,
// growing it if the packet bound allows. Called with q.mu held.
func (q *packetQueue) reserveEntry() bool {
	if q.count >= q.maxCount {
		return false
	}
	if q.count < len(q.entries) {
		return true
	}
	grown := make([]queuedPacket, min(max(2*len(q.entries), minQueueEntries), q.maxCount))
	for i := range q.count {
		grown[i] = q.entries[(q.first+i)%len(q.entries)]
	}
	q.entries, q.first = grown, 0
	return true
}

// reserve makes room for n more bytes, growing the buffer if the byte bound
// allows; an empty queue always takes the packet. Called with q.mu held.
func (q *packetQueue) reserve(n int) bool {
	if q.used > 0 && q.used+n > q.maxBytes {
		return false
	}
	if q.used+n <= len(q.data) {
		return true
	}
	size := max(len(q.data), minQueueBytes)
	for size < q.used+n {
		size *= 2
	}
	size = max(min(size, q.maxBytes), q.used+n)
	data := make([]byte, size)
	if q.used > 0 {
		if n := copy(data, q.data[q.head:min(q.head+q.used, len(q.data))]); n < q.used {
			copy(data[n:], q.data[:q.used-n])
		}
	}
	q.data, q.head = data, 0
	return true
}

// pop moves the oldest packet into b. If the queue is empty it lends h the
// socket of the PacketConn's only connection when that is on offer, and
// otherwise counts h as waiting: the caller then waits on q.readable and
// calls pop again with retry set, or calls cancelRead if it gives up. A
// packet larger than b is dropped and reported as io.ErrShortBuffer.
func (q *packetQueue) pop(b []byte, retry bool, h *tcpPacketConn) (n int, from *net.TCPAddr, lent *streamConn, res popResult, err error) {
	q.mu.Lock()
	if retry {
		q.waiting--
	}
	if q.closed {
		q.mu.Unlock()
		return 0, nil, nil, popPacket, ErrConnClosed
	}
	if q.count == 0 {
		if lent := q.takeLeaseLocked(h); lent != nil {
			q.mu.Unlock()
			return 0, nil, lent, popLease, nil
		}
		q.waiting++
		q.requestLeaseLocked()
		q.mu.Unlock()
		return 0, nil, nil, popEmpty, nil
	}
	pkt := q.entries[q.first]
	q.entries[q.first] = queuedPacket{}
	if pkt.size <= len(b) {
		n = copy(b[:pkt.size], q.data[q.head:])
		if n < pkt.size {
			copy(b[n:pkt.size], q.data)
		}
		n = pkt.size
	} else {
		err = io.ErrShortBuffer
	}
	q.first = (q.first + 1) % len(q.entries)
	q.count--
	q.used -= pkt.size
	q.head = (q.head + pkt.size) % max(len(q.data), 1)
	if q.count == 0 {
		q.head = 0 // keeps the next payloads contiguous
	}
	// The token goes on while anything is left for the other waiters:
	// packets, or a lent socket whose offer's wake-up merged with push's.
	more := q.waiting > 0 && (q.count > 0 || q.leaseOnOfferLocked())
	pushers := q.blocked > 0
	q.mu.Unlock()
	if more {
		wake(q.readable)
	}
	if pushers {
		wake(q.writable)
	}
	return n, pkt.from, nil, popPacket, err
}

// cancelRead undoes the waiting count of a pop that will not be retried.
// The reader may have taken the wake-up token on its way out, so it passes
// the token on if packets, or a lent socket, wait for other readers.
func (q *packetQueue) cancelRead() {
	q.mu.Lock()
	q.waiting--
	passBaton := q.waiting > 0 && (q.count > 0 || q.leaseOnOfferLocked())
	q.mu.Unlock()
	if passBaton {
		wake(q.readable)
	}
}

// close drops every queued packet and refuses further pushes and pops.
func (q *packetQueue) close() {
	q.mu.Lock()
	q.closed = true
	if c := q.direct.Load(); c != nil {
		c.lendAnswered() // an ask to it is void: no passed deadline left behind
	}
	q.direct.Store(nil)
	// Not dropLeaseLocked: a reader may still be in the socket. The lender
	// leaves when its connection closes, which comes next and also ends
	// the holder's read.
	q.lease = nil
	q.state.Store(leaseNone)
	q.data, q.entries = nil, nil
	q.count, q.used = 0, 0
	q.mu.Unlock()
}
