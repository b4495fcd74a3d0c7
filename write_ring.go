package tcpmux

import "encoding/binary"

// writeRing is a connection's send buffer in buffered mode: frames wait in
// one circular byte buffer and the flusher writes them from it in place.
// The bytes being written stay in the ring until written, so they count
// toward the same bound as the bytes waiting.
//
// The ring grows fourfold from minWriteBuffer while the socket lags, and
// is released when the flusher retires. A grow during a write leaves the
// old array pinned by that write (a stalled peer may never let it return),
// so the new array and the one being written from together stay within the
// bound: a stalled peer pins at most WriteBufferSize however the flusher
// and WriteTo interleave. Guarded by bufferedWriter.mu; the flusher writes
// from front() without the lock while writers append behind it.
type writeRing struct {
	buf     []byte
	head    int    // first unsent byte
	used    int    // unsent bytes, those being written included
	writing []byte // the array the flusher is writing from, if any
}

// minWriteBuffer is the first size of a write ring.
const minWriteBuffer = 2 << 10

// push appends p as one frame if it fits within limit bytes in all.
func (r *writeRing) push(p []byte, limit int) bool {
	need := r.used + FrameHeaderSize + len(p)
	if need > limit {
		return false
	}
	if need > len(r.buf) && !r.grow(need, limit) {
		return false
	}
	var hdr [FrameHeaderSize]byte
	binary.BigEndian.PutUint16(hdr[:], uint16(len(p)))
	r.put(hdr[:])
	r.put(p)
	return true
}

// put copies b at the tail, wrapping around the end.
func (r *writeRing) put(b []byte) {
	tail := (r.head + r.used) % len(r.buf)
	n := copy(r.buf[tail:], b)
	copy(r.buf, b[n:])
	r.used += len(b)
}

// grow moves the unsent bytes, in order, to a larger buffer, if the bound
// leaves room for it beside the array a write is in flight from. That
// write carries on: what it writes is also at the start of the new array,
// and consume advances past it there.
func (r *writeRing) grow(need, limit int) bool {
	room := limit - cap(r.writing)
	if need > room {
		return false
	}
	size := min(max(4*len(r.buf), need, minWriteBuffer), room)
	buf := make([]byte, size)
	if r.used > 0 {
		n := copy(buf, r.buf[r.head:min(r.head+r.used, len(r.buf))])
		copy(buf[n:r.used], r.buf)
	}
	r.buf, r.head = buf, 0
	return true
}

// front returns the unsent bytes up to the end of the buffer, for the
// flusher to write; consume ends the write.
func (r *writeRing) front() []byte {
	r.writing = r.buf
	return r.buf[r.head:min(r.head+r.used, len(r.buf))]
}

// consume drops n written bytes from the front.
func (r *writeRing) consume(n int) {
	r.writing = nil
	r.used -= n
	r.head = (r.head + n) % len(r.buf)
	if r.used == 0 {
		r.head = 0 // keeps the next batch contiguous
	}
}

// release drops the buffer and anything unsent.
func (r *writeRing) release() {
	*r = writeRing{}
}
