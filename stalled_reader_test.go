package tcpmux

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// SPEC 2, 4 and 5: a peer that stops reading, with synchronous and with
// buffered writes: write deadlines, drops, and Close with writes blocked.

// SPEC 2 and 4: a peer that stops reading, with synchronous writes: a
// WriteTo with a write deadline times out once the socket buffers are
// full, and Close returns promptly with another WriteTo blocked.
func TestStalledReaderSyncWrites(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	pc := getConn(t, m, "srv")
	dialUfrag(t, m, "srv") // a: never reads
	_, aAddr := readPacket(t, pc)
	dialUfrag(t, m, "srv") // b: never reads
	_, bAddr := readPacket(t, pc)

	big := make([]byte, MaxFramePayload)
	require.NoError(t, pc.SetWriteDeadline(time.Now().Add(500*time.Millisecond)))
	var err error
	writes := 0
	filled := make(chan struct{})
	go func() {
		defer close(filled)
		for ; writes < 10000 && err == nil; writes++ {
			_, err = pc.WriteTo(big, aAddr)
		}
	}()
	select {
	case <-filled:
	case <-time.After(10 * time.Second):
		_ = m.Close()
		t.Fatal("WriteTo ignores its write deadline")
	}
	require.Error(t, err, "%d frames of 64 KiB written to a peer that does not read", writes)
	var netErr net.Error
	require.ErrorAs(t, err, &netErr)
	require.True(t, netErr.Timeout(), "a timeout: %v", err)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	t.Logf("timed out after %d frames", writes)

	require.NoError(t, pc.SetWriteDeadline(time.Time{}))
	var progress atomic.Int64
	blocked := make(chan error, 1)
	go func() {
		for {
			if _, err := pc.WriteTo(big, bAddr); err != nil {
				blocked <- err
				return
			}
			progress.Add(1)
		}
	}()
	waitStalled(t, &progress, 200*time.Millisecond)

	closeWithin(t, m, time.Second) // with a blocked writer
	select {
	case err := <-blocked:
		require.ErrorIs(t, err, net.ErrClosed)
	case <-time.After(time.Second):
		t.Fatal("WriteTo still blocked after Close")
	}
}

// SPEC 2: a peer that stops reading, with buffered writes: WriteTo never
// blocks; whole frames are dropped, reported and counted, and the frames
// reported as sent all arrive, intact and in order. Close returns promptly
// with a flusher blocked.
func TestStalledReaderBufferedWrites(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{WriteBufferSize: 64 << 10})
	pc := getConn(t, m, "srv")
	a := dialUfrag(t, m, "srv")
	_, aAddr := readPacket(t, pc)
	dialUfrag(t, m, "srv") // b: never reads
	_, bAddr := readPacket(t, pc)

	type result struct {
		sent    []uint32
		drops   uint64
		slowest time.Duration
		err     error
	}
	// fill writes 1000-byte frames to addr until WriteTo has only dropped
	// for quiet: the kernel's buffers and the write buffer are then full
	// and the flusher is blocked. After a drop it retries once a
	// millisecond.
	fill := func(addr net.Addr, quiet time.Duration) result {
		done := make(chan result, 1)
		go func() {
			var r result
			p := make([]byte, 1000)
			retry := time.NewTicker(time.Millisecond)
			defer retry.Stop()
			lastSent := time.Now()
			for seq := uint32(0); seq < 100_000 && time.Since(lastSent) < quiet; seq++ {
				binary.BigEndian.PutUint32(p, seq)
				start := time.Now()
				_, err := pc.WriteTo(p, addr)
				r.slowest = max(r.slowest, time.Since(start))
				switch {
				case err == nil:
					r.sent = append(r.sent, seq)
					lastSent = time.Now()
				case errors.Is(err, ErrWriteBufferFull):
					r.drops++
					<-retry.C
				default:
					r.err = err
					done <- r
					return
				}
			}
			done <- r
		}()
		select {
		case r := <-done:
			return r
		case <-time.After(20 * time.Second):
			_ = m.Close()
			t.Fatal("WriteTo blocked in buffered mode")
			return result{}
		}
	}

	r := fill(aAddr, 200*time.Millisecond)
	require.NoError(t, r.err)
	require.Positive(t, r.drops)
	s := m.Stats()
	require.Equal(t, r.drops, s.WriteDrops)
	require.Equal(t, uint64(len(r.sent)), s.PacketsSent, "drops are not counted as sent")
	require.Equal(t, uint64(len(r.sent))*1000, s.BytesSent)
	t.Logf("%d frames accepted, %d dropped, slowest WriteTo %v", len(r.sent), r.drops, r.slowest)

	for _, seq := range r.sent {
		got := readFrame(t, a)
		require.Len(t, got, 1000)
		require.Equal(t, seq, binary.BigEndian.Uint32(got), "every frame reported as sent arrives, in order, whole")
	}
	require.Eventually(t, func() bool {
		_, err := pc.WriteTo([]byte("end"), aAddr)
		return err == nil
	}, 5*time.Second, time.Millisecond, "the buffer drains once the peer reads")
	require.Equal(t, "end", string(readFrame(t, a)), "no dropped frame was sent after all")

	r = fill(bAddr, 200*time.Millisecond) // b's flusher is now blocked in a write
	require.NoError(t, r.err)
	closeWithin(t, m, time.Second) // with a blocked flusher
}
