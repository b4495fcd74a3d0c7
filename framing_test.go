package tcpmux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// frameSizes are the payload sizes every round-trip test covers.
var frameSizes = []int{0, 1, 1200, MaxFramePayload}

// pattern returns n bytes that differ from frame to frame (seed) and from
// byte to byte, so that a misplaced or reordered byte shows.
func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7) + seed
	}
	return p
}

// frameStream frames every payload back to back.
func frameStream(t testing.TB, payloads ...[]byte) []byte {
	t.Helper()
	var stream []byte
	for _, p := range payloads {
		var err error
		stream, err = AppendFrame(stream, p)
		require.NoError(t, err)
	}
	return stream
}

// readAll calls Next until it fails and returns copies of the frames and the
// final error. It fails the test if Next returns more frames than limit.
func readAll(t testing.TB, fr *FrameReader, limit int) ([][]byte, error) {
	t.Helper()
	var frames [][]byte
	for {
		p, err := fr.Next()
		if err != nil {
			return frames, err
		}
		require.LessOrEqual(t, len(fr.buf), maxReadBuffer)
		frames = append(frames, append([]byte{}, p...))
		require.LessOrEqual(t, len(frames), limit, "Next returned more frames than the stream holds")
	}
}

// countingReader counts the Read calls and bytes served by r.
type countingReader struct {
	r     io.Reader
	reads int
	bytes int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads++
	n, err := c.r.Read(p)
	c.bytes += n
	return n, err
}

// randomChunkReader serves data in chunks of random size (1 to max bytes,
// never more than asked), sometimes together with io.EOF on the last one.
type randomChunkReader struct {
	data []byte
	rng  *rand.Rand
	max  int
}

func (r *randomChunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	n := 1 + r.rng.IntN(r.max)
	n = min(n, len(p), len(r.data))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	if len(r.data) == 0 && r.rng.IntN(2) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// chunkReader returns one queued chunk per Read (a part of it if p is
// smaller), then io.EOF.
type chunkReader struct {
	chunks [][]byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	if n == len(r.chunks[0]) {
		r.chunks = r.chunks[1:]
	} else {
		r.chunks[0] = r.chunks[0][n:]
	}
	return n, nil
}

func TestAppendFrameRoundTrip(t *testing.T) {
	for _, size := range frameSizes {
		payload := pattern(size, byte(size))
		prefix := []byte("prefix")
		dst, err := AppendFrame(append([]byte{}, prefix...), payload)
		require.NoError(t, err, "size %d", size)
		require.Len(t, dst, len(prefix)+FrameHeaderSize+size)
		assert.Equal(t, prefix, dst[:len(prefix)], "AppendFrame must keep dst")
		assert.Equal(t, uint16(size), binary.BigEndian.Uint16(dst[len(prefix):]), "big-endian length header")

		fr := NewFrameReader(bytes.NewReader(dst[len(prefix):]), 0)
		got, err := fr.Next()
		require.NoError(t, err, "size %d", size)
		assert.True(t, bytes.Equal(payload, got), "size %d: payload differs", size)
		_, err = fr.Next()
		assert.ErrorIs(t, err, io.EOF, "size %d", size)
	}
}

func TestFrameTooLargeToFrame(t *testing.T) {
	payload := make([]byte, MaxFramePayload+1)

	dst := []byte("keep")
	got, err := AppendFrame(dst, payload)
	require.ErrorIs(t, err, ErrFrameTooLarge)
	assert.Equal(t, []byte("keep"), got, "AppendFrame must return dst untouched")
	assert.Len(t, got, len(dst))
}

func TestFrameReaderBatchesSmallFrames(t *testing.T) {
	const count = 200
	payloads := make([][]byte, count)
	for i := range payloads {
		payloads[i] = pattern(i%64, byte(i))
	}
	cr := &countingReader{r: bytes.NewReader(frameStream(t, payloads...))}
	fr := NewFrameReader(cr, 0)

	frames, err := readAll(t, fr, count)
	require.ErrorIs(t, err, io.EOF)
	require.Len(t, frames, count)
	for i := range payloads {
		assert.Equal(t, payloads[i], frames[i], "frame %d", i)
	}
	// About 7 KB in total: a handful of Reads, not one or two per frame.
	assert.LessOrEqual(t, cr.reads, 10, "small frames must be batched")
}

func TestFrameReaderSplitReads(t *testing.T) {
	sizes := []int{0, 1, 2, 3, 100, 1200, 0, 5000, MaxFramePayload, 7, MaxFramePayload, 0, 1}
	payloads := make([][]byte, len(sizes))
	for i, n := range sizes {
		payloads[i] = pattern(n, byte(i))
	}
	stream := frameStream(t, payloads...)

	readers := map[string]func() io.Reader{
		"one byte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(stream)) },
		"half":     func() io.Reader { return iotest.HalfReader(bytes.NewReader(stream)) },
		"data+EOF": func() io.Reader { return iotest.DataErrReader(bytes.NewReader(stream)) },
	}
	for seed := range uint64(8) {
		maxChunk := []int{1, 3, 17, 1000, 70000}[seed%5]
		readers["random chunks "+string(rune('0'+seed))] = func() io.Reader {
			return &randomChunkReader{data: stream, rng: rand.New(rand.NewPCG(seed, 42)), max: maxChunk}
		}
	}
	for name, newReader := range readers {
		t.Run(name, func(t *testing.T) {
			fr := NewFrameReader(newReader(), 0)
			frames, err := readAll(t, fr, len(payloads))
			require.ErrorIs(t, err, io.EOF)
			require.Len(t, frames, len(payloads))
			for i := range payloads {
				require.True(t, bytes.Equal(payloads[i], frames[i]), "frame %d differs", i)
			}
		})
	}
}

func TestFrameReaderEOF(t *testing.T) {
	full := frameStream(t, []byte("hello"), []byte("world!"))
	tests := []struct {
		name   string
		input  []byte
		frames int
		err    error
	}{
		{"empty stream", nil, 0, io.EOF},
		{"at a boundary", full, 2, io.EOF},
		{"after an empty frame", []byte{0, 0}, 1, io.EOF},
		{"mid header", full[:len(full)-7], 1, io.ErrUnexpectedEOF},
		{"mid header, first frame", []byte{0}, 0, io.ErrUnexpectedEOF},
		{"header only", full[:7+FrameHeaderSize], 1, io.ErrUnexpectedEOF},
		{"mid payload", full[:len(full)-1], 1, io.ErrUnexpectedEOF},
		{"mid payload, first frame", full[:3], 0, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, wrap := range []func(io.Reader) io.Reader{
				func(r io.Reader) io.Reader { return r },
				iotest.OneByteReader,
				iotest.DataErrReader,
			} {
				fr := NewFrameReader(wrap(bytes.NewReader(tt.input)), 0)
				frames, err := readAll(t, fr, 2)
				assert.Len(t, frames, tt.frames)
				require.ErrorIs(t, err, tt.err)
				if tt.err == io.ErrUnexpectedEOF {
					assert.NotErrorIs(t, err, io.EOF, "a torn frame is not a clean EOF")
				}
				// The error is sticky: a second call does not hang or succeed.
				_, err2 := fr.Next()
				assert.ErrorIs(t, err2, tt.err)
			}
		})
	}
}

func TestFrameReaderPassesReadErrors(t *testing.T) {
	boom := errors.New("boom")
	r := io.MultiReader(bytes.NewReader(frameStream(t, []byte("ok"))), iotest.ErrReader(boom))
	fr := NewFrameReader(r, 0)
	p, err := fr.Next()
	require.NoError(t, err)
	assert.Equal(t, []byte("ok"), p)
	_, err = fr.Next()
	assert.ErrorIs(t, err, boom)
}

// headerOnlyReader serves its bytes one Read at a time and fails the test if
// it is read once more: the reader under test read further than it had to.
type headerOnlyReader struct {
	t      *testing.T
	chunks [][]byte
}

func (r *headerOnlyReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		r.t.Error("read beyond the oversized header")
		return 0, errors.New("read beyond the oversized header")
	}
	n := copy(p, r.chunks[0])
	if r.chunks[0] = r.chunks[0][n:]; len(r.chunks[0]) == 0 {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

func TestFrameReaderRejectsOversizedHeader(t *testing.T) {
	const limit = 100
	t.Run("header alone", func(t *testing.T) {
		r := &headerOnlyReader{t: t, chunks: [][]byte{{0, limit + 1}}}
		fr := NewFrameReader(r, limit)
		_, err := fr.Next()
		require.ErrorIs(t, err, ErrFrameTooLarge)
		// Sticky, and still without reading.
		_, err = fr.Next()
		require.ErrorIs(t, err, ErrFrameTooLarge)
	})
	t.Run("after a good frame, header split", func(t *testing.T) {
		good := frameStream(t, pattern(limit, 1))
		r := &headerOnlyReader{t: t, chunks: [][]byte{good, {0xff}, {0xff}}}
		fr := NewFrameReader(r, limit)
		p, err := fr.Next()
		require.NoError(t, err)
		assert.Equal(t, pattern(limit, 1), p)
		_, err = fr.Next()
		require.ErrorIs(t, err, ErrFrameTooLarge)
	})
	t.Run("payload not consumed", func(t *testing.T) {
		stream := frameStream(t, []byte("x"), pattern(limit+1, 2))
		cr := &countingReader{r: iotest.OneByteReader(bytes.NewReader(stream))}
		fr := NewFrameReader(cr, limit)
		_, err := fr.Next()
		require.NoError(t, err)
		_, err = fr.Next()
		require.ErrorIs(t, err, ErrFrameTooLarge)
		assert.Equal(t, FrameHeaderSize+1+FrameHeaderSize, cr.bytes, "only the headers and the first frame are read")
		assert.Equal(t, []byte{0, limit + 1}, fr.buffered(), "the oversized header stays buffered")
	})
	t.Run("limit is inclusive", func(t *testing.T) {
		fr := NewFrameReader(bytes.NewReader(frameStream(t, pattern(limit, 3))), limit)
		p, err := fr.Next()
		require.NoError(t, err)
		assert.Len(t, p, limit)
	})
}

func TestFrameReaderSetMaxPayload(t *testing.T) {
	for _, maxPayload := range []int{0, -1, MaxFramePayload, MaxFramePayload + 1, 1 << 30} {
		fr := NewFrameReader(bytes.NewReader(frameStream(t, pattern(MaxFramePayload, 0))), maxPayload)
		assert.Equal(t, MaxFramePayload, fr.maxPayload, "maxPayload %d", maxPayload)
		p, err := fr.Next()
		require.NoError(t, err, "maxPayload %d", maxPayload)
		assert.Len(t, p, MaxFramePayload)
	}

	// The mux's pattern: a small limit for the first frame, then anything.
	stream := frameStream(t, pattern(10, 1), pattern(11, 2), pattern(3000, 3))
	fr := NewFrameReader(bytes.NewReader(stream), 10)
	p, err := fr.Next()
	require.NoError(t, err)
	assert.Equal(t, pattern(10, 1), p)
	_, err = fr.Next()
	require.ErrorIs(t, err, ErrFrameTooLarge)

	fr.setMaxPayload(11)
	p, err = fr.Next()
	require.NoError(t, err, "a raised limit applies to the header already buffered")
	assert.Equal(t, pattern(11, 2), p)

	fr.setMaxPayload(2999)
	_, err = fr.Next()
	require.ErrorIs(t, err, ErrFrameTooLarge)

	fr.setMaxPayload(0)
	p, err = fr.Next()
	require.NoError(t, err)
	assert.Equal(t, pattern(3000, 3), p)
	_, err = fr.Next()
	assert.ErrorIs(t, err, io.EOF)
}

func TestFrameReaderPeek(t *testing.T) {
	payloads := [][]byte{pattern(3, 1), pattern(0, 2), pattern(1500, 3), pattern(4, 4)}
	stream := frameStream(t, payloads...)
	for _, n := range []int{1, 2, 10, 1508, len(stream)} {
		for name, r := range map[string]io.Reader{
			"whole":    bytes.NewReader(stream),
			"one byte": iotest.OneByteReader(bytes.NewReader(stream)),
		} {
			cr := &countingReader{r: r}
			fr := NewFrameReader(cr, 0)
			peeked, err := fr.peek(n)
			require.NoError(t, err, "%s: peek(%d)", name, n)
			require.GreaterOrEqual(t, len(peeked), n, "%s: peek(%d)", name, n)
			assert.Equal(t, stream[:len(peeked)], peeked, "%s: peek(%d)", name, n)
			assert.Equal(t, peeked, fr.buffered(), "%s: peek consumes nothing", name)

			again, err := fr.peek(n)
			require.NoError(t, err)
			assert.Equal(t, peeked, again, "%s: a second peek returns the same bytes", name)

			frames, err := readAll(t, fr, len(payloads))
			require.ErrorIs(t, err, io.EOF)
			require.Equal(t, payloads, frames, "%s: Next after peek(%d)", name, n)
		}
	}

	t.Run("short stream", func(t *testing.T) {
		fr := NewFrameReader(iotest.OneByteReader(bytes.NewReader([]byte{0, 5, 'a'})), 0)
		peeked, err := fr.peek(10)
		require.ErrorIs(t, err, io.ErrUnexpectedEOF)
		assert.Equal(t, []byte{0, 5, 'a'}, peeked, "peek returns what it has")

		fr = NewFrameReader(bytes.NewReader(nil), 0)
		peeked, err = fr.peek(10)
		require.ErrorIs(t, err, io.EOF)
		assert.Empty(t, peeked)
	})
}

func TestFrameReaderBuffered(t *testing.T) {
	stream := frameStream(t, []byte("abc"), []byte("de"), nil)
	fr := NewFrameReader(bytes.NewReader(stream), 0)
	assert.Empty(t, fr.buffered(), "nothing read yet")

	p, err := fr.Next()
	require.NoError(t, err)
	assert.Equal(t, []byte("abc"), p)
	// A new reader reads a few bytes (its probe) before it allocates.
	assert.Equal(t, stream[5:len(fr.probe)], fr.buffered())

	_, err = fr.Next()
	require.NoError(t, err)
	assert.Equal(t, []byte{0, 0}, fr.buffered())

	p, err = fr.Next()
	require.NoError(t, err)
	assert.Empty(t, p)
	assert.Empty(t, fr.buffered())
}

// noProgressReader returns (0, nil) up to limit times, then an error, so a
// reader that spins on it fails the test instead of hanging it.
type noProgressReader struct {
	calls, limit int
}

var errSpun = errors.New("FrameReader kept reading a stream that makes no progress")

func (r *noProgressReader) Read([]byte) (int, error) {
	r.calls++
	if r.calls > r.limit {
		return 0, errSpun
	}
	return 0, nil
}

func TestFrameReaderNoProgress(t *testing.T) {
	r := &noProgressReader{limit: 1000}
	fr := NewFrameReader(r, 0)
	_, err := fr.Next()
	require.ErrorIs(t, err, io.ErrNoProgress)
	assert.LessOrEqual(t, r.calls, 100)

	r = &noProgressReader{limit: 1000}
	fr = NewFrameReader(io.MultiReader(bytes.NewReader([]byte{0, 9, 1}), r), 0)
	_, err = fr.Next()
	require.ErrorIs(t, err, io.ErrNoProgress, "mid-frame")
	_, err = fr.peek(20)
	require.ErrorIs(t, err, io.ErrNoProgress, "peek")
	assert.LessOrEqual(t, r.calls, 200)
}

func TestFrameReaderBufferBounded(t *testing.T) {
	// Maximal frames back to back, served as fast as the reader asks, with
	// small ones in between to misalign them.
	var payloads [][]byte
	for i := range 12 {
		payloads = append(payloads, pattern(MaxFramePayload, byte(i)), pattern(i*1000, byte(i)))
	}
	stream := frameStream(t, payloads...)
	for _, r := range []io.Reader{
		bytes.NewReader(stream),
		&randomChunkReader{data: stream, rng: rand.New(rand.NewPCG(1, 2)), max: 100000},
	} {
		fr := NewFrameReader(r, 0)
		peak := 0
		for range payloads {
			_, err := fr.Next()
			require.NoError(t, err)
			peak = max(peak, len(fr.buf))
			require.LessOrEqual(t, len(fr.buf), maxReadBuffer)
			require.LessOrEqual(t, fr.end, len(fr.buf))
		}
		_, err := fr.Next()
		require.ErrorIs(t, err, io.EOF)
		assert.GreaterOrEqual(t, peak, FrameHeaderSize+MaxFramePayload, "a maximal frame must fit")
	}
}

func TestFrameReaderGrowsAndShrinks(t *testing.T) {
	small := frameStream(t, pattern(100, 9))

	// A burst: the stream has far more than the buffer holds.
	var burst []byte
	for range 1000 {
		burst = append(burst, small...)
	}
	r := &chunkReader{chunks: [][]byte{burst}}
	fr := NewFrameReader(r, 0)
	p, err := fr.Next()
	require.NoError(t, err)
	assert.Equal(t, pattern(100, 9), p)
	assert.Equal(t, minReadBuffer, len(fr.buf)/2, "a full first read doubles the buffer")
	for range 999 {
		_, err = fr.Next()
		require.NoError(t, err)
	}
	require.Equal(t, batchReadBuffer, len(fr.buf), "the buffer grows to batch a burst")

	// Light traffic: one small frame per Read.
	lightRead := func(reads int) {
		t.Helper()
		for range reads {
			r.chunks = append(r.chunks, small)
			_, err := fr.Next()
			require.NoError(t, err)
		}
	}
	// One light read may be left over from the end of the burst.
	lightRead(shrinkAfterReads - 2)
	require.Equal(t, batchReadBuffer, len(fr.buf), "no shrink before shrinkAfterReads light reads")
	lightRead(2)
	require.Equal(t, batchReadBuffer/2, len(fr.buf), "shrinks after shrinkAfterReads light reads")
	lightRead(shrinkAfterReads)
	require.Equal(t, batchReadBuffer/4, len(fr.buf))
	lightRead(10 * shrinkAfterReads)
	require.Equal(t, minReadBuffer, len(fr.buf), "never below minReadBuffer")

	// A heavy read resets the count of light reads.
	fr = NewFrameReader(r, 0)
	r.chunks = append(r.chunks, burst)
	for range 1000 {
		_, err = fr.Next()
		require.NoError(t, err)
	}
	require.Equal(t, batchReadBuffer, len(fr.buf))
	lightRead(shrinkAfterReads - 10)
	heavy := (batchReadBuffer/4/len(small) + 2) * len(small) // one Read of over a quarter of the buffer
	r.chunks = append(r.chunks, burst[:heavy])
	for range heavy / len(small) {
		_, err = fr.Next()
		require.NoError(t, err)
	}
	lightRead(shrinkAfterReads - 10)
	require.Equal(t, batchReadBuffer, len(fr.buf), "a heavy read restarts the count")
}

// Traffic that alternates bursts with light stretches must not make the
// reader shrink and regrow for ever: each undone shrink doubles the wait
// before the next one.
func TestFrameReaderDampsResizeChurn(t *testing.T) {
	small := frameStream(t, pattern(100, 3))
	var burst []byte
	for range 1000 {
		burst = append(burst, small...)
	}
	r := &chunkReader{}
	fr := NewFrameReader(r, 0)
	resizes, last := 0, 0
	next := func() {
		t.Helper()
		_, err := fr.Next()
		require.NoError(t, err)
		if len(fr.buf) != last {
			resizes, last = resizes+1, len(fr.buf)
		}
	}
	const cycles = 40
	for range cycles {
		r.chunks = append(r.chunks, burst)
		for range 1000 {
			next()
		}
		for range 2 * shrinkAfterReads { // light: one small frame per Read
			r.chunks = append(r.chunks, small)
			next()
		}
	}
	t.Logf("%d resizes in %d cycles", resizes, cycles)
	require.Less(t, resizes, 20, "without damping every cycle shrinks and regrows")
}

func TestFrameReaderShrinksAfterLargeFrame(t *testing.T) {
	small := frameStream(t, pattern(10, 1))
	r := &chunkReader{chunks: [][]byte{frameStream(t, pattern(MaxFramePayload, 2))}}
	fr := NewFrameReader(r, 0)
	p, err := fr.Next()
	require.NoError(t, err)
	require.Len(t, p, MaxFramePayload)
	require.GreaterOrEqual(t, len(fr.buf), FrameHeaderSize+MaxFramePayload)
	require.LessOrEqual(t, len(fr.buf), maxReadBuffer)

	for range 20 * shrinkAfterReads {
		r.chunks = append(r.chunks, small)
		p, err = fr.Next()
		require.NoError(t, err)
		require.Equal(t, pattern(10, 1), p)
	}
	assert.Equal(t, minReadBuffer, len(fr.buf), "back to minReadBuffer after a large frame")
}

// replayReader serves an endless repetition of one frame, filling every Read
// up to chunk bytes (0: no limit), as a TCP socket does under load.
type replayReader struct {
	frame []byte
	off   int
	chunk int
	reads int
}

func (r *replayReader) Read(p []byte) (int, error) {
	r.reads++
	if r.chunk > 0 && len(p) > r.chunk {
		p = p[:r.chunk]
	}
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.frame[r.off:])
		n += c
		r.off = (r.off + c) % len(r.frame)
	}
	return n, nil
}

func TestFrameReaderNextAllocs(t *testing.T) {
	for _, size := range []int{0, 1, 100, 1200, 9000, MaxFramePayload} {
		frame := frameStream(t, pattern(size, 5))
		for name, chunk := range map[string]int{
			"one frame per Read": len(frame),
			"filling reads":      0,
			"16 KB reads":        16 << 10,
			"1448 B reads":       1448,
		} {
			r := &replayReader{frame: frame, chunk: chunk}
			fr := NewFrameReader(r, 0)
			next := func() {
				p, err := fr.Next()
				if err != nil || len(p) != size {
					t.Fatalf("Next: %d bytes, %v", len(p), err)
				}
			}
			// Warm up: let the buffer settle to its steady-state size.
			for i := 0; i < 8*shrinkAfterReads || r.reads < 32; i++ {
				next()
			}
			allocs := testing.AllocsPerRun(1000, next)
			assert.Zero(t, allocs, "size %d, %s: Next allocates in steady state", size, name)
			// AllocsPerRun rounds down: also count every allocation over
			// enough calls for the buffer to shrink and regrow.
			assert.Zero(t, totalMallocs(8*shrinkAfterReads, next),
				"size %d, %s: Next allocates now and then in steady state", size, name)
		}
	}
}

// totalMallocs counts the heap allocations of runs calls of f.
func totalMallocs(runs int, f func()) uint64 {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return after.Mallocs - before.Mallocs
}

// referenceFrames parses stream the obvious way: a 2-byte length, then that
// many bytes, until the stream ends or a header is over maxPayload.
func referenceFrames(stream []byte, maxPayload int) ([][]byte, error) {
	var frames [][]byte
	for {
		switch {
		case len(stream) == 0:
			return frames, io.EOF
		case len(stream) < FrameHeaderSize:
			return frames, io.ErrUnexpectedEOF
		}
		n := int(binary.BigEndian.Uint16(stream))
		if n > maxPayload {
			return frames, ErrFrameTooLarge
		}
		if len(stream)-FrameHeaderSize < n {
			return frames, io.ErrUnexpectedEOF
		}
		frames = append(frames, stream[FrameHeaderSize:FrameHeaderSize+n])
		stream = stream[FrameHeaderSize+n:]
	}
}

func FuzzFrameReader(f *testing.F) {
	f.Add([]byte{}, 0, uint64(0), uint16(0))
	f.Add([]byte{0, 0}, 0, uint64(1), uint16(2))
	f.Add([]byte{0, 3, 'a', 'b', 'c', 0, 1, 'd'}, 3, uint64(2), uint16(1))
	f.Add([]byte{0, 3, 'a', 'b', 'c', 0, 1, 'd'}, 2, uint64(3), uint16(0))
	f.Add([]byte{0, 5, 'a'}, 0, uint64(4), uint16(10))
	f.Add([]byte{0xff, 0xff, 1, 2, 3}, 100, uint64(5), uint16(0))
	f.Add(append([]byte{0x04, 0x00}, make([]byte, 1024)...), 1024, uint64(6), uint16(2048))
	f.Add(frameStream(f, pattern(300, 1), nil, pattern(2100, 2), pattern(5, 3)), 0, uint64(7), uint16(3))

	f.Fuzz(func(t *testing.T, stream []byte, maxPayload int, seed uint64, peek uint16) {
		limit := maxPayload
		if limit <= 0 || limit > MaxFramePayload {
			limit = MaxFramePayload
		}
		want, wantErr := referenceFrames(stream, limit)

		// The fuzzer's seed picks the read sizes: 1 byte to whole stream.
		rng := rand.New(rand.NewPCG(seed, seed>>32))
		maxChunk := 1 + int(seed%uint64(len(stream)+1))
		fr := NewFrameReader(&randomChunkReader{data: stream, rng: rng, max: maxChunk}, maxPayload)

		if n := int(peek % 2049); n > 0 {
			peeked, err := fr.peek(n)
			require.LessOrEqual(t, len(peeked), len(stream))
			require.Equal(t, stream[:len(peeked)], peeked, "peek returns the first bytes")
			if n <= len(stream) {
				require.NoError(t, err)
				require.GreaterOrEqual(t, len(peeked), n)
			} else {
				require.Error(t, err)
			}
		}

		got, err := readAll(t, fr, len(stream)/FrameHeaderSize)
		require.ErrorIs(t, err, wantErr)
		require.Len(t, got, len(want))
		for i := range want {
			require.True(t, bytes.Equal(want[i], got[i]), "frame %d differs", i)
		}
		require.LessOrEqual(t, len(fr.buf), maxReadBuffer)
	})
}

// SPEC 8: the buffer follows the bytes that arrived, not the length a
// header announces; a parked reader keeps only a partial frame's bytes.
func TestFrameReaderMemoryFollowsBytes(t *testing.T) {
	announced := []byte{0xff, 0xff, 'x'} // 65535 bytes announced, one sent
	fr := NewFrameReader(io.MultiReader(bytes.NewReader(announced), &blockingReader{}), 0)
	require.Nil(t, fr.buf, "nothing allocated before the first bytes")
	_, err := fr.Next()
	require.ErrorIs(t, err, errBlocked)
	require.LessOrEqual(t, cap(fr.buf), minReadBuffer, "grew on an announcement")

	fr.park()
	require.LessOrEqual(t, cap(fr.buf), 8, "a parked reader holds only the partial frame")
	require.Equal(t, announced, fr.buffered())

	// Bytes that do come make it grow, in steps, to the whole frame.
	payload := pattern(MaxFramePayload, 3)
	fr.r = io.MultiReader(bytes.NewReader(payload[1:]))
	p, err := fr.Next()
	require.NoError(t, err)
	require.Equal(t, append([]byte{'x'}, payload[1:]...), p)
}

var errBlocked = errors.New("would block")

// blockingReader stands for a peer that went silent.
type blockingReader struct{}

func (*blockingReader) Read([]byte) (int, error) { return 0, errBlocked }
