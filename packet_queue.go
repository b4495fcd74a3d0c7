package tcpmux

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
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
//
// The queue knows nothing of its readers: a push reports when the queue
// stops being empty, and the PacketConn wakes them (tcpPacketConn.readable).
type packetQueue struct {
	mu       sync.Mutex
	data     []byte // circular; packets in FIFO order starting at head
	head     int
	used     int
	maxBytes int
	entries  []queuedPacket // circular, one per queued packet
	first    int
	count    atomic.Int64 // written under mu; pop reads it without mu to skip an empty queue
	maxCount int
	blocked  int // pushers waiting on writable
	closed   bool
	// idle: the connections went quiet (releaseIfEmpty) while packets
	// were queued; the pop that empties the queue drops its tables.
	idle bool

	// writable carries one wake-up token for blocked pushers; one that
	// pushes and leaves room passes it on, so one token serves them all.
	// Made for the first pusher that waits: most queues never fill.
	writable chan struct{}
}

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
	}
}

// setMaxBytes changes the byte bound (claiming a PacketConn lifts it) and
// lets blocked pushers retry.
func (q *packetQueue) setMaxBytes(n int) {
	q.mu.Lock()
	q.maxBytes = n
	blocked := q.writableIfBlockedLocked()
	q.mu.Unlock()
	if blocked != nil {
		signal(blocked)
	}
}

// push queues a copy of p from the peer at from, counting it in received
// before any reader can see it, and reports whether the queue was empty.
// It returns ok false if the queue is full: the caller then waits on wait
// and calls push again with retry set, or calls cancelWait if it gives up.
func (q *packetQueue) push(from *net.TCPAddr, p []byte, received *trafficCount, retry bool) (ok, wasEmpty bool, wait <-chan struct{}, err error) {
	q.mu.Lock()
	if retry {
		q.blocked--
	}
	if q.closed {
		q.mu.Unlock()
		return false, false, nil, ErrConnClosed
	}
	if !q.reserveEntry() || !q.reserve(len(p)) {
		q.blocked++
		if q.writable == nil {
			q.writable = make(chan struct{}, 1)
		}
		wait = q.writable
		q.mu.Unlock()
		return false, false, wait, nil
	}
	if len(p) > 0 {
		tail := (q.head + q.used) % len(q.data)
		if n := copy(q.data[tail:], p); n < len(p) {
			copy(q.data, p[n:])
		}
	}
	n := int(q.count.Add(1))
	q.entries[(q.first+n-1)%len(q.entries)] = queuedPacket{size: len(p), from: from}
	q.used += len(p)
	q.idle = false // traffic again
	received.add(len(p))
	wasEmpty = n == 1
	var passBaton chan struct{}
	if n < q.maxCount {
		passBaton = q.writableIfBlockedLocked()
	}
	q.mu.Unlock()
	if passBaton != nil {
		signal(passBaton)
	}
	return true, wasEmpty, nil, nil
}

// writableIfBlockedLocked is the channel to wake blocked pushers on, if
// any pusher is blocked.
func (q *packetQueue) writableIfBlockedLocked() chan struct{} {
	if q.blocked > 0 {
		return q.writable
	}
	return nil
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
	n := int(q.count.Load())
	if n >= q.maxCount {
		return false
	}
	if n < len(q.entries) {
		return true
	}
	grown := make([]queuedPacket, min(max(2*len(q.entries), minQueueEntries), q.maxCount))
	for i := range n {
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

// pop moves the oldest packet into b; ok is false if the queue is empty.
// A packet larger than b is dropped and reported as io.ErrShortBuffer.
func (q *packetQueue) pop(b []byte) (n int, from *net.TCPAddr, ok bool, err error) {
	if q.count.Load() == 0 {
		return 0, nil, false, nil // a push racing this load comes after it
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return 0, nil, true, ErrConnClosed
	}
	if q.count.Load() == 0 {
		q.mu.Unlock()
		return 0, nil, false, nil
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
	left := q.count.Add(-1)
	q.used -= pkt.size
	q.head = (q.head + pkt.size) % max(len(q.data), 1)
	if left == 0 {
		q.head = 0 // keeps the next payloads contiguous
		if q.idle {
			q.releaseLocked()
		}
	}
	pushers := q.writableIfBlockedLocked()
	q.mu.Unlock()
	if pushers != nil {
		signal(pushers)
	}
	return n, pkt.from, true, err
}

// len is the number of packets queued.
func (q *packetQueue) len() int {
	return int(q.count.Load())
}

// releaseIfEmpty drops the tables of an empty queue, or of this one once it
// empties: its connection went quiet. A session whose peer sent only its
// first request holds no queue.
func (q *packetQueue) releaseIfEmpty() {
	q.mu.Lock()
	if q.count.Load() == 0 {
		q.releaseLocked()
	} else {
		q.idle = true
	}
	q.mu.Unlock()
}

func (q *packetQueue) releaseLocked() {
	q.data, q.head = nil, 0
	q.entries, q.first = nil, 0
	q.idle = false
}

// close drops every queued packet and refuses further pushes and pops.
func (q *packetQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.data, q.entries = nil, nil
	q.count.Store(0)
	q.used = 0
	q.mu.Unlock()
}
