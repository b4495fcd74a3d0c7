package tcpmux

// Framing (RFC 4571). Only what a client or a test of ICE-TCP needs to
// frame and deframe packets is exported: FrameHeaderSize, MaxFramePayload,
// ErrFrameTooLarge, AppendFrame, and FrameReader with NewFrameReader and
// Next. How the mux sniffs a stream, raises its limit after the first
// frame or replays the bytes it read is the mux's own business, so those
// methods stay unexported and can change without breaking callers.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// RFC 4571 frames every packet on a stream with a 2-byte big-endian length.
const (
	// FrameHeaderSize is the size of the RFC 4571 length prefix.
	FrameHeaderSize = 2
	// MaxFramePayload is the largest packet an RFC 4571 frame can carry.
	MaxFramePayload = 1<<16 - 1
)

// ErrFrameTooLarge reports a packet that cannot be framed (over
// MaxFramePayload bytes) or a frame header announcing more bytes than the
// reader accepts. Match it with errors.Is.
var ErrFrameTooLarge = errors.New("tcpmux: frame too large")

// AppendFrame appends p to dst as one RFC 4571 frame (length, then p) and
// returns the extended slice. It fails with ErrFrameTooLarge, leaving dst
// untouched, if p is over MaxFramePayload bytes. To send a frame, append it
// to a buffer kept across calls and write that in one Write: header and
// payload then never interleave with another writer's, and nothing is
// allocated per frame.
func AppendFrame(dst, p []byte) ([]byte, error) {
	if len(p) > MaxFramePayload {
		return dst, frameTooLarge(len(p), MaxFramePayload)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(p)))
	return append(dst, p...), nil
}

func frameTooLarge(n, limit int) error {
	return fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, limit)
}

// Buffer sizes of FrameReader. A reader starts small, so that idle
// connections cost little, grows to fit large frames or to batch many small
// ones per Read, and shrinks back when traffic stays light.
const (
	minReadBuffer   = 2 << 10
	batchReadBuffer = 64 << 10
	maxReadBuffer   = FrameHeaderSize + MaxFramePayload + batchReadBuffer
	// shrinkAfterReads is how many consecutive light reads (using under a
	// quarter of the buffer) make the reader halve an oversized buffer.
	// Each time a shrink is undone by growth, the reader waits twice as
	// long before the next one, up to maxShrinkAfterReads, so bursty
	// traffic settles on a size instead of reallocating forever.
	shrinkAfterReads    = 256
	maxShrinkAfterReads = 1 << 16
)

// FrameReader reads RFC 4571 frames from a stream. It reads as many bytes as
// the stream has ready, so a burst of small frames costs one Read, and never
// holds more than one maximal frame plus a batch (about 128 KiB) however the
// peer behaves. Its memory follows the bytes that arrived, not the lengths
// headers announce: it allocates nothing until the first bytes come, and
// grows at most to twice what it holds, so a header announcing 65535 bytes
// followed by silence costs a small buffer. It is not safe for concurrent
// use.
type FrameReader struct {
	r          io.Reader
	maxPayload int
	buf        []byte
	start, end int // unread bytes are buf[start:end]
	lightReads int
	shrinkWait int    // light reads before a shrink; 0: shrinkAfterReads
	shrunk     bool   // the last resize was a shrink
	reads      uint64 // Reads that returned data, for idleness checks
	// parked: the reader holds no buffer, only the unread bytes of a
	// partial frame, if any; its next Read takes a few bytes into probe
	// and only then allocates. A new reader starts parked.
	parked bool
	probe  [8]byte
}

// NewFrameReader returns a FrameReader on r that rejects frames whose header
// announces more than maxPayload bytes. maxPayload <= 0 or over
// MaxFramePayload means MaxFramePayload.
func NewFrameReader(r io.Reader, maxPayload int) *FrameReader {
	fr := &FrameReader{r: r, parked: true}
	fr.setMaxPayload(maxPayload)
	return fr
}

// setMaxPayload changes the largest payload Next accepts, as in
// NewFrameReader. The mux uses it to read a small first frame, then anything.
func (fr *FrameReader) setMaxPayload(maxPayload int) {
	if maxPayload <= 0 || maxPayload > MaxFramePayload {
		maxPayload = MaxFramePayload
	}
	fr.maxPayload = maxPayload
}

// Next returns the payload of the next frame. The slice aliases the reader's
// buffer and is valid only until the next call. At a frame boundary a closed
// stream gives io.EOF; inside a frame it gives io.ErrUnexpectedEOF. A header
// over the limit gives ErrFrameTooLarge as soon as the header is read,
// without reading the payload. Other errors come from the underlying reader.
func (fr *FrameReader) Next() ([]byte, error) {
	for {
		avail := fr.end - fr.start
		need := FrameHeaderSize
		if avail >= FrameHeaderSize {
			n := int(binary.BigEndian.Uint16(fr.buf[fr.start:]))
			if n > fr.maxPayload {
				return nil, frameTooLarge(n, fr.maxPayload)
			}
			need += n
			if avail >= need {
				payload := fr.buf[fr.start+FrameHeaderSize : fr.start+need]
				fr.start += need
				return payload, nil
			}
		}
		if err := fr.fill(need); err != nil {
			if errors.Is(err, io.EOF) && fr.end > fr.start {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// peek returns at least n unread bytes (n <= MaxFramePayload) without
// consuming them, reading as needed. The mux judges a stream by its first
// bytes with it (Fallback).
func (fr *FrameReader) peek(n int) ([]byte, error) {
	for fr.end-fr.start < n {
		if err := fr.fill(n); err != nil {
			if errors.Is(err, io.EOF) && fr.end > fr.start {
				err = io.ErrUnexpectedEOF
			}
			return fr.buf[fr.start:fr.end], err
		}
	}
	return fr.buf[fr.start:fr.end], nil
}

// hasFrame reports whether a whole frame is buffered, so that Next will
// not read.
func (fr *FrameReader) hasFrame() bool {
	avail := fr.end - fr.start
	return avail >= FrameHeaderSize &&
		avail >= FrameHeaderSize+int(binary.BigEndian.Uint16(fr.buf[fr.start:]))
}

// buffered returns the bytes read from the stream but not yet returned by
// Next, which the mux replays to a fallback connection. They alias the
// reader's buffer.
func (fr *FrameReader) buffered() []byte {
	return fr.buf[fr.start:fr.end]
}

// fill makes room for need unread bytes and does one Read.
func (fr *FrameReader) fill(need int) error {
	if fr.parked {
		return fr.fillParked()
	}
	fr.makeRoom(need)
	space := len(fr.buf) - fr.end
	n, err := fr.r.Read(fr.buf[fr.end:])
	fr.end += n
	if n > 0 {
		fr.reads++
	}
	fr.adapt(n, space, need)
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// fillParked reads a few bytes without a buffer, then takes a buffer for
// them: a reader waiting for data costs nothing until data comes.
func (fr *FrameReader) fillParked() error {
	n, err := fr.r.Read(fr.probe[:])
	if n > 0 {
		fr.reads++
		fr.parked = false
		fr.makeRoom(fr.end - fr.start + n)
		fr.end += copy(fr.buf[fr.end:], fr.probe[:n])
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// makeRoom ensures buf[start:] can hold need bytes, compacting or growing.
// It grows toward need at most to twice the bytes held (and at least to
// minReadBuffer): a peer must send bytes to make the buffer grow.
func (fr *FrameReader) makeRoom(need int) {
	if fr.start == fr.end {
		fr.start, fr.end = 0, 0
	}
	if fr.start+need <= len(fr.buf) && fr.end < len(fr.buf) {
		return
	}
	earned := max(minReadBuffer, 2*(fr.end-fr.start))
	size := max(len(fr.buf), minReadBuffer)
	for size < need && size < earned {
		size *= 2
	}
	size = min(size, maxReadBuffer)
	if size != len(fr.buf) {
		fr.resize(size)
		return
	}
	fr.end = copy(fr.buf, fr.buf[fr.start:fr.end])
	fr.start = 0
}

// adapt grows the buffer when a Read filled it (more is probably waiting)
// and halves it after a long run of light reads, so memory follows traffic.
// A Read counts as filling the buffer only if it was offered at least half
// of it: filling the small tail left before a compaction says nothing about
// the traffic. A Read counts as light only if the frame being read is small
// too, so a stream of large frames arriving in small pieces keeps the room
// it needs instead of shrinking and regrowing it.
func (fr *FrameReader) adapt(n, space, need int) {
	switch {
	case n == space && 2*space >= len(fr.buf) && len(fr.buf) < batchReadBuffer:
		fr.resize(2 * len(fr.buf))
		fr.lightReads = 0
	case max(n, need) < len(fr.buf)/4 && len(fr.buf) > minReadBuffer:
		fr.lightReads++
		if fr.lightReads >= max(fr.shrinkWait, shrinkAfterReads) && fr.end-fr.start <= len(fr.buf)/2 {
			fr.resize(max(len(fr.buf)/2, minReadBuffer))
			fr.lightReads = 0
		}
	default:
		fr.lightReads = 0
	}
}

// park gives the buffer up, keeping only the unread bytes (a partial
// frame) in a slice of their size, until data comes (see parked).
func (fr *FrameReader) park() {
	if fr.parked {
		return
	}
	var unread []byte
	if fr.end > fr.start {
		unread = append([]byte(nil), fr.buf[fr.start:fr.end]...)
	}
	fr.buf, fr.start, fr.end, fr.lightReads = unread, 0, len(unread), 0
	fr.shrinkWait, fr.shrunk, fr.parked = 0, false, true
}

func (fr *FrameReader) resize(size int) {
	if size > len(fr.buf) && fr.shrunk {
		fr.shrinkWait = min(2*max(fr.shrinkWait, shrinkAfterReads), maxShrinkAfterReads)
	}
	fr.shrunk = size < len(fr.buf)
	buf := make([]byte, size)
	fr.end = copy(buf, fr.buf[fr.start:fr.end])
	fr.buf, fr.start = buf, 0
}
