package tcpmux

import "encoding/binary"

// writeRing is a connection's send buffer in buffered mode: frames wait in
// one circular byte buffer and the flusher writes them from it in place.
// The bytes being written stay in the ring until written, so they count
// toward the same bound as the bytes waiting, and a stalled peer pins at
// most WriteBufferSize however the flusher and WriteTo interleave.
//
// The ring grows fourfold from minWriteBuffer while the socket lags, never
// past the bound, and is released when the flusher retires. Guarded by
// streamConn.bmu; the flusher reads front() without the lock while
// writers append behind it.
type writeRing struct {
	buf  []byte
	head int // first unsent byte
	used int // unsent bytes, those being written included
}

// minWriteBuffer is the first size of a write ring.
const minWriteBuffer = 2 << 10

// push appends p as one frame if it fits within limit bytes in all.
func (r *writeRing) push(p []byte, limit int) bool {
	need := r.used + FrameHeaderSize + len(p)
	if need > limit {
		return false
	}
	if need > len(r.buf) {
		r.grow(need, limit)
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

// grow moves the unsent bytes, in order, to a larger buffer. A flusher
// writing from the old one carries on: what it writes is also at the
// start of the new one, and consume advances past it there.
func (r *writeRing) grow(need, limit int) {
	size := min(max(4*len(r.buf), need, minWriteBuffer), limit)
	buf := make([]byte, size)
	if r.used > 0 {
		n := copy(buf, r.buf[r.head:min(r.head+r.used, len(r.buf))])
		copy(buf[n:r.used], r.buf)
	}
	r.buf, r.head = buf, 0
}

// front returns the unsent bytes up to the end of the buffer: what the
// flusher writes next.
func (r *writeRing) front() []byte {
	return r.buf[r.head:min(r.head+r.used, len(r.buf))]
}

// consume drops n written bytes from the front.
func (r *writeRing) consume(n int) {
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
