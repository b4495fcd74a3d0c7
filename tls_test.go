package tcpmux

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

// SPEC 5: Close and write deadlines never wait on a peer, over a TLS
// listener too. crypto/tls's Close sends close_notify under a 5 s write
// deadline of its own, which a peer that stopped reading makes it wait
// out; these tests put a TLS peer in that state and time the mux.

// newTLSMux starts a mux over a crypto/tls listener on 127.0.0.1.
func newTLSMux(t *testing.T, params TCPMuxParams) *TCPMuxDefault {
	t.Helper()
	inner, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	cert := selfSignedCert(t)
	params.Listener = tls.NewListener(inner, &tls.Config{Certificates: []tls.Certificate{cert}})
	return newTestMux(t, params)
}

// dialTLS connects to m with a small receive buffer and completes the TLS
// handshake. The client never reads unless a test says so.
func dialTLS(t *testing.T, m *TCPMuxDefault) *tls.Conn {
	t.Helper()
	raw, err := net.Dial("tcp4", m.LocalAddr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = raw.Close() })
	require.NoError(t, raw.(*net.TCPConn).SetReadBuffer(4096))
	client := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	t.Cleanup(func() { _ = client.Close() })
	require.NoError(t, client.SetDeadline(time.Now().Add(5*time.Second)))
	require.NoError(t, client.Handshake())
	require.NoError(t, client.SetDeadline(time.Time{}))
	return client
}

// stalledTLSPeer claims ufrag, connects a TLS client that sends its
// Binding request, reads that request on the PacketConn and returns the
// PacketConn and the client's address. The client never reads after the
// handshake.
func stalledTLSPeer(t *testing.T, m *TCPMuxDefault, ufrag string) (net.PacketConn, net.Addr) {
	t.Helper()
	pc := getConn(t, m, ufrag)
	client := dialTLS(t, m)
	req := bindingRequest(t, ufrag)
	_, err := client.Write(frame(req))
	require.NoError(t, err)
	p, from := readPacket(t, pc)
	require.Equal(t, req, p)
	require.Equal(t, client.LocalAddr().String(), from.String())
	return pc, from
}

// TestTLSWriteDeadlineStalledPeer: with synchronous writes, a WriteTo
// blocked on a TLS peer that stopped reading returns when its deadline
// passes, not when crypto/tls gives up on close_notify.
//
// Each round sets a deadline 20 ms ahead and writes 64 KiB frames until
// WriteTo fails. A round whose deadline passed between two writes fails
// without writing and leaves the connection up; the rounds go on until a
// deadline passes mid-write, once the socket buffers are full: the stream
// is then torn and the mux closes the tls.Conn, which is the path that
// used to wait 5 s for close_notify.
func TestTLSWriteDeadlineStalledPeer(t *testing.T) {
	m := newTLSMux(t, TCPMuxParams{})
	pc, addr := stalledTLSPeer(t, m, "tlsdl")

	type round struct {
		writes  int
		slowest time.Duration // the slowest WriteTo of the round
		late    time.Duration // from the deadline to the failing WriteTo's return
		err     error
		torn    bool
	}
	var rounds []round
	done := make(chan struct{})
	go func() {
		defer close(done)
		big := make([]byte, MaxFramePayload)
		for len(rounds) < 500 {
			var r round
			deadline := time.Now().Add(20 * time.Millisecond)
			if r.err = pc.SetWriteDeadline(deadline); r.err != nil {
				rounds = append(rounds, r)
				return
			}
			for ; r.err == nil; r.writes++ {
				start := time.Now()
				_, r.err = pc.WriteTo(big, addr)
				r.slowest = max(r.slowest, time.Since(start))
			}
			r.late = time.Since(deadline)
			r.torn = m.Stats().ConnsActive == 0
			rounds = append(rounds, r)
			if r.torn || !errors.Is(r.err, os.ErrDeadlineExceeded) {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		closeWithin(t, m, time.Second)
		<-done
		t.Fatal("WriteTo ignores its write deadline over TLS")
	}
	for i, r := range rounds {
		t.Logf("round %d: %d WriteTo of 64 KiB, slowest %v; failed %v after the deadline (torn: %v): %v",
			i, r.writes, r.slowest.Round(time.Microsecond), r.late.Round(time.Microsecond), r.torn, r.err)
		require.Error(t, r.err)
		var netErr net.Error
		require.ErrorAs(t, r.err, &netErr, "round %d", i)
		require.True(t, netErr.Timeout(), "round %d: a timeout: %v", i, r.err)
		require.ErrorIs(t, r.err, os.ErrDeadlineExceeded, "round %d", i)
		require.Less(t, r.slowest, time.Second, "round %d: a WriteTo took that long", i)
		require.Less(t, r.late, time.Second, "round %d: WriteTo returned that long after its deadline", i)
	}
	require.True(t, rounds[len(rounds)-1].torn, "no deadline passed mid-write in %d rounds", len(rounds))
	closeWithin(t, m, time.Second)
}

// TestTLSWriteDeadlineMovedOnBlockedWrite: a WriteTo already blocked on a
// stalled TLS peer, without deadline, returns within a second of a
// deadline set afterwards, with a timeout.
func TestTLSWriteDeadlineMovedOnBlockedWrite(t *testing.T) {
	m := newTLSMux(t, TCPMuxParams{})
	pc, addr := stalledTLSPeer(t, m, "tlsmove")

	var progress atomic.Int64
	type result struct {
		err error
		at  time.Time
	}
	blocked := make(chan result, 1)
	go func() {
		big := make([]byte, MaxFramePayload)
		for {
			if _, err := pc.WriteTo(big, addr); err != nil {
				blocked <- result{err, time.Now()}
				return
			}
			progress.Add(1)
		}
	}()
	waitStalled(t, &progress, 200*time.Millisecond)

	deadline := time.Now().Add(20 * time.Millisecond)
	require.NoError(t, pc.SetWriteDeadline(deadline))
	select {
	case r := <-blocked:
		late := r.at.Sub(deadline)
		t.Logf("blocked after %d frames of 64 KiB; WriteTo returned %v after the deadline: %v",
			progress.Load(), late.Round(time.Microsecond), r.err)
		var netErr net.Error
		require.ErrorAs(t, r.err, &netErr)
		require.True(t, netErr.Timeout(), "a timeout: %v", r.err)
		require.ErrorIs(t, r.err, os.ErrDeadlineExceeded)
		require.Less(t, late, time.Second)
	case <-time.After(10 * time.Second):
		closeWithin(t, m, time.Second)
		t.Fatal("a blocked WriteTo ignores a deadline set after it started")
	}
	closeWithin(t, m, time.Second)
}

// TestTLSCloseWithBlockedSyncWrite: Close returns promptly while a WriteTo
// without deadline is blocked on a stalled TLS peer, and that WriteTo
// returns an error.
func TestTLSCloseWithBlockedSyncWrite(t *testing.T) {
	m := newTLSMux(t, TCPMuxParams{})
	pc, addr := stalledTLSPeer(t, m, "tlssync")

	var progress atomic.Int64
	blocked := make(chan error, 1)
	go func() {
		big := make([]byte, MaxFramePayload)
		for {
			if _, err := pc.WriteTo(big, addr); err != nil {
				blocked <- err
				return
			}
			progress.Add(1)
		}
	}()
	waitStalled(t, &progress, 200*time.Millisecond)
	t.Logf("writer blocked after %d frames of 64 KiB", progress.Load())

	start := time.Now()
	closeWithin(t, m, time.Second)
	select {
	case err := <-blocked:
		t.Logf("blocked WriteTo returned %v after Close began: %v", time.Since(start).Round(time.Microsecond), err)
		require.Error(t, err)
		require.ErrorIs(t, err, net.ErrClosed)
	case <-time.After(time.Second):
		t.Fatal("WriteTo still blocked after Close")
	}
}

// TestTLSCloseWithBlockedFlusher: in buffered mode, Close returns promptly
// while the flusher is blocked on a stalled TLS peer with a full buffer;
// WriteTo then fails.
func TestTLSCloseWithBlockedFlusher(t *testing.T) {
	m := newTLSMux(t, TCPMuxParams{WriteBufferSize: 1 << 20})
	pc, addr := stalledTLSPeer(t, m, "tlsbuf")

	var (
		progress atomic.Int64
		drops    atomic.Int64
		slowest  atomic.Int64
	)
	stop := make(chan struct{})
	filled := make(chan error, 1)
	go func() {
		big := make([]byte, MaxFramePayload)
		for {
			select {
			case <-stop:
				filled <- nil
				return
			default:
			}
			start := time.Now()
			_, err := pc.WriteTo(big, addr)
			if d := int64(time.Since(start)); d > slowest.Load() {
				slowest.Store(d)
			}
			switch {
			case err == nil:
				progress.Add(1)
			case errors.Is(err, ErrWriteBufferFull):
				drops.Add(1)
				time.Sleep(time.Millisecond)
			default:
				filled <- err
				return
			}
		}
	}()
	waitStalled(t, &progress, 300*time.Millisecond) // buffer full, flusher blocked
	close(stop)
	require.NoError(t, <-filled)
	require.Positive(t, drops.Load(), "the buffer never filled")
	require.Less(t, time.Duration(slowest.Load()), 100*time.Millisecond, "WriteTo blocked in buffered mode")
	t.Logf("%d frames of 64 KiB buffered, %d dropped; slowest WriteTo %v",
		progress.Load(), drops.Load(), time.Duration(slowest.Load()).Round(time.Microsecond))

	closeWithin(t, m, time.Second)
	_, err := pc.WriteTo([]byte("after close"), addr)
	require.Error(t, err)
	require.ErrorIs(t, err, net.ErrClosed)
}

// TestTLSCloseWithPendingConn: a TLS connection that finished its
// handshake but never sent its first frame, and does not read, is closed
// promptly by Close.
func TestTLSCloseWithPendingConn(t *testing.T) {
	m := newTLSMux(t, TCPMuxParams{})
	client := dialTLS(t, m)
	eventually(t, func() bool { return m.Stats().ConnsPending == 1 }, "the TLS connection is pending")

	start := time.Now()
	closeWithin(t, m, time.Second)
	took := time.Since(start)
	require.Less(t, took, time.Second)
	s := m.Stats()
	require.Zero(t, s.ConnsPending)
	// The mux's end is gone: the client sees the connection end.
	waitClosedByPeer(t, client, time.Second)
}

// A healthy crypto/tls connection survives every timeout the mux causes
// itself: idle checks (the goroutine parks in awaitData), reads of the lent
// socket cut by the reader's deadline, and interrupts when a second
// connection joins while a reader holds the socket. None may pass for a
// wrapper's timeout that stuck and drop the connection.
func TestTLSSurvivesTheMuxsOwnTimeouts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cert := selfSignedCert(t)
		ln, pc, client := pipeMuxWith(t, func(server net.Conn) net.Conn {
			return tls.Server(server, &tls.Config{Certificates: []tls.Certificate{cert}})
		})
		tc := tls.Client(client, &tls.Config{InsecureSkipVerify: true})
		send := func(p string) {
			go func() { _, _ = tc.Write(frame([]byte(p))) }()
		}
		send(string(bindingRequest(t, "pipe")))
		readPacket(t, pc)
		// The client must keep reading for tls to make progress on writes.
		go func() {
			buf := make([]byte, 4096)
			for {
				if _, err := tc.Read(buf); err != nil {
					return
				}
			}
		}()

		buf := make([]byte, 1500)
		for i := range 40 {
			switch i % 4 {
			case 0: // idle: the idle check parks the goroutine
				time.Sleep(3 * idleBufferLinger)
			case 1: // a reader in the socket whose deadline passes
				require.NoError(t, pc.SetReadDeadline(time.Now().Add(time.Millisecond)))
				_, _, err := pc.ReadFrom(buf)
				require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			case 2: // a second connection joins under a reader holding the socket
				require.NoError(t, pc.SetReadDeadline(time.Time{}))
				pending := startReader(pc, 1500)
				synctest.Wait()
				other := ln.dial(t, "127.0.0.1:3478", fmt.Sprintf("127.0.0.1:%d", 41000+i))
				go func() { _, _ = other.Write(frame(bindingRequest(t, "pipe"))) }()
				r := <-pending
				require.NoError(t, r.err)
				_ = other.Close()
				synctest.Wait()
			}
			want := fmt.Sprintf("packet %d", i)
			send(want)
			require.NoError(t, pc.SetReadDeadline(time.Now().Add(time.Second)))
			for {
				n, from, err := pc.ReadFrom(buf)
				require.NoError(t, err, "round %d", i)
				if from.String() == "127.0.0.1:40000" {
					require.Equal(t, want, string(buf[:n]))
					break
				}
			}
		}
		require.Equal(t, 1, pc.(*packetConnHandle).pc.connCount())
		require.NoError(t, pc.Close())
	})
}
