package tcpmux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Tests of SPEC sections 4 (the PacketConn) and 5 (closing), over real
// loopback TCP unless an address loopback cannot give is needed.

// pcFamily is a loopback setup for one address family.
type pcFamily struct {
	name    string
	network string
	listen  string
	ipv6    bool
	ip      net.IP
}

var pcFamilies = []pcFamily{
	{name: "IPv4", network: "tcp4", listen: "127.0.0.1:0", ipv6: false, ip: net.IPv4(127, 0, 0, 1)},
	{name: "IPv6", network: "tcp6", listen: "[::1]:0", ipv6: true, ip: net.IPv6loopback},
}

// pcWriteModes are the two WriteTo modes: synchronous, and buffered with
// room for many maximal frames.
var pcWriteModes = []struct {
	name            string
	writeBufferSize int
}{
	{"sync", 0},
	{"buffered", 1 << 20},
}

// pcAddrPortConn is pion/ice's optional allocation-free PacketConn interface.
type pcAddrPortConn interface {
	ReadFromAddrPort(b []byte) (int, netip.AddrPort, error)
	WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error)
}

// pcNewMux starts a mux on a loopback listener of fam; it skips the test if
// fam is IPv6 and ::1 cannot be listened on.
func pcNewMux(t testing.TB, fam pcFamily, params TCPMuxParams) *TCPMuxDefault {
	t.Helper()
	ln, err := net.Listen(fam.network, fam.listen)
	if err != nil && fam.ipv6 {
		t.Skipf("cannot listen on %s: %v", fam.listen, err)
	}
	require.NoError(t, err)
	params.Listener = ln
	return newTestMux(t, params)
}

// pcClaim takes a handle on (ufrag, fam's family, fam's loopback IP).
func pcClaim(t testing.TB, m *TCPMuxDefault, fam pcFamily, ufrag string) net.PacketConn {
	t.Helper()
	pc, err := m.GetConnByUfrag(ufrag, fam.ipv6, fam.ip)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pc.Close() })
	return pc
}

// pcConnect connects a client announcing ufrag, checks that pc reads its
// Binding request from the client's address, and returns the client and that
// address. pc's read deadline is left cleared.
func pcConnect(t testing.TB, m *TCPMuxDefault, pc net.PacketConn, ufrag string) (net.Conn, net.Addr) {
	t.Helper()
	req := bindingRequest(t, ufrag)
	client := dial(t, m, req)
	got, from := readPacket(t, pc)
	require.Equal(t, req, got, "the first frame reaches the PacketConn")
	require.Equal(t, client.LocalAddr().String(), from.String())
	require.NoError(t, pc.SetReadDeadline(time.Time{}))
	return client, from
}

// pcPair starts a mux for fam and returns a handle on ufrag "pair" and an
// attached client.
func pcPair(t testing.TB, fam pcFamily, params TCPMuxParams) (*TCPMuxDefault, net.PacketConn, net.Conn, net.Addr) {
	t.Helper()
	m := pcNewMux(t, fam, params)
	pc := pcClaim(t, m, fam, "pair")
	client, addr := pcConnect(t, m, pc, "pair")
	return m, pc, client, addr
}

// pcReadFrame reads one RFC 4571 frame from conn within d. Unlike readFrame
// it does not fail the test, so goroutines may use it.
func pcReadFrame(conn net.Conn, d time.Duration) ([]byte, error) {
	if err := conn.SetReadDeadline(time.Now().Add(d)); err != nil {
		return nil, err
	}
	var hdr [FrameHeaderSize]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return nil, err
	}
	p := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(conn, p); err != nil {
		return p, err
	}
	return p, nil
}

// pcReadFrameAsync reads one frame from conn in a goroutine.
func pcReadFrameAsync(conn net.Conn) <-chan []byte {
	ch := make(chan []byte, 1)
	go func() {
		p, err := pcReadFrame(conn, 5*time.Second)
		if err != nil {
			p = []byte("read error: " + err.Error())
		}
		ch <- p
	}()
	return ch
}

type pcReadResult struct {
	n    int
	addr net.Addr
	err  error
}

// pcReadAsync runs one ReadFrom in a goroutine.
func pcReadAsync(pc net.PacketConn, buf []byte) <-chan pcReadResult {
	ch := make(chan pcReadResult, 1)
	go func() {
		n, addr, err := pc.ReadFrom(buf)
		ch <- pcReadResult{n, addr, err}
	}()
	return ch
}

// pcAwait waits for a result, failing the test after within.
func pcAwait[T any](t testing.TB, ch <-chan T, within time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(within):
		t.Fatalf("%s did not return within %v", what, within)
		panic("unreachable")
	}
}

func pcRequireTimeout(t testing.TB, err error, msgAndArgs ...any) {
	t.Helper()
	require.Error(t, err, msgAndArgs...)
	var netErr net.Error
	require.ErrorAs(t, err, &netErr, msgAndArgs...)
	require.True(t, netErr.Timeout(), "Timeout() must be true for %v", err)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, msgAndArgs...)
}

func pcRequireClosed(t testing.TB, err error, msgAndArgs ...any) {
	t.Helper()
	require.Error(t, err, msgAndArgs...)
	require.ErrorIs(t, err, net.ErrClosed, msgAndArgs...)
	require.ErrorIs(t, err, io.ErrClosedPipe, msgAndArgs...)
}

// pcSeqPayload fills a payload of n bytes (n >= 6) with the writer's id, a
// sequence number and a pattern derived from both, so that a torn,
// interleaved or misrouted frame shows.
func pcSeqPayload(writer, seq, n int) []byte {
	p := make([]byte, n)
	binary.BigEndian.PutUint16(p, uint16(writer))
	binary.BigEndian.PutUint32(p[2:], uint32(seq))
	for i := 6; i < n; i++ {
		p[i] = byte(writer*31 + seq*7 + i)
	}
	return p
}

// pcParseSeqPayload checks a payload made by pcSeqPayload.
func pcParseSeqPayload(p []byte) (writer, seq int, err error) {
	if len(p) < 6 {
		return 0, 0, fmt.Errorf("payload of %d bytes is too short", len(p))
	}
	writer = int(binary.BigEndian.Uint16(p))
	seq = int(binary.BigEndian.Uint32(p[2:]))
	for i := 6; i < len(p); i++ {
		if p[i] != byte(writer*31+seq*7+i) {
			return writer, seq, fmt.Errorf("writer %d seq %d: byte %d of %d is corrupt", writer, seq, i, len(p))
		}
	}
	return writer, seq, nil
}

// pcSeqSize varies frame sizes between 6 and 1505 bytes, with one frame in
// 16 of up to 30 KB: those fill the socket and make writers queue, which is
// when a frame written in pieces would interleave with another.
func pcSeqSize(writer, seq int) int {
	if (writer+seq)%16 == 0 {
		return 6 + (writer*131+seq*37)%30000
	}
	return 6 + (writer*131+seq*37)%1500
}

// pcCheckConcurrentWriteTo has writers goroutines each send perWriter
// frames to peer through pc, and checks that peer parses every accepted
// frame intact, in each writer's order, and nothing else. In buffered mode
// WriteTo may drop frames with ErrWriteBufferFull; those must not arrive.
func pcCheckConcurrentWriteTo(t *testing.T, pc net.PacketConn, peer net.Conn, to net.Addr, writers, perWriter int) {
	t.Helper()
	end := []byte("END")
	type rx struct {
		frames [][]byte
		err    error
	}
	received := make(chan rx, 1)
	go func() {
		var frames [][]byte
		for {
			p, err := pcReadFrame(peer, 5*time.Second)
			if err != nil {
				received <- rx{frames, err}
				return
			}
			if bytes.Equal(p, end) {
				received <- rx{frames, nil}
				return
			}
			frames = append(frames, p)
		}
	}()

	var wg sync.WaitGroup
	accepted := make([][]int, writers)
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range perWriter {
				n, err := pc.WriteTo(pcSeqPayload(w, seq, pcSeqSize(w, seq)), to)
				if errors.Is(err, ErrWriteBufferFull) {
					continue
				}
				if err != nil {
					errs <- fmt.Errorf("writer %d seq %d: %w", w, seq, err)
					return
				}
				if n != pcSeqSize(w, seq) {
					errs <- fmt.Errorf("writer %d seq %d: WriteTo returned n=%d", w, seq, n)
					return
				}
				accepted[w] = append(accepted[w], seq)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	// Every writer is done, so the end marker is the stream's last frame.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := pc.WriteTo(end, to)
		if err == nil {
			break
		}
		require.ErrorIs(t, err, ErrWriteBufferFull)
		require.True(t, time.Now().Before(deadline), "the write buffer never drained")
		runtime.Gosched()
	}

	got := pcAwait(t, received, 15*time.Second, "the peer's reader")
	require.NoError(t, got.err, "the peer must parse a clean stream of frames")
	perWriterGot := make([][]int, writers)
	for _, p := range got.frames {
		w, seq, err := pcParseSeqPayload(p)
		require.NoError(t, err, "frames must never interleave")
		require.Less(t, w, writers)
		require.Equal(t, pcSeqSize(w, seq), len(p), "writer %d seq %d has the wrong length", w, seq)
		perWriterGot[w] = append(perWriterGot[w], seq)
	}
	for w := range writers {
		require.Equal(t, accepted[w], perWriterGot[w], "writer %d: every accepted frame arrives once, in order", w)
	}
}

// ---------------------------------------------------------------------------
// The generic net.PacketConn contract, in the spirit of x/net/nettest.

// pcContractEnv is what a case of the contract suite runs on: a handle on a
// fresh PacketConn and the clients attached to it. mk's cleanups close
// them all.
type pcContractEnv struct {
	pc net.PacketConn
	// peers are client TCP connections attached to pc, each speaking RFC
	// 4571 frames, their first frames already read by pc.
	peers []net.Conn
	// handle takes another handle on pc's PacketConn (GetConnByUfrag
	// again), closed when the test ends.
	handle func() net.PacketConn
}

// pair is the handle and its first peer, for the cases that need no more.
func (e pcContractEnv) pair() (net.PacketConn, net.Conn) { return e.pc, e.peers[0] }

// testPacketConnContract checks the net.PacketConn rules of SPEC 4 and 5
// that do not depend on how the PacketConn was built: addresses, a round
// trip, deadlines (read, write, both, blocked reads, clearing), concurrent
// ReadFrom and WriteTo, every method at once on two handles (Chaos), and
// closing. mk returns a fresh PacketConn and its peers.
func testPacketConnContract(t *testing.T, mk func(t *testing.T) pcContractEnv) {
	t.Run("Addresses", func(t *testing.T) {
		pc, peer := mk(t).pair()
		local, ok := pc.LocalAddr().(*net.TCPAddr)
		require.True(t, ok, "LocalAddr is a *net.TCPAddr, got %T", pc.LocalAddr())
		server := peer.RemoteAddr().(*net.TCPAddr)
		require.Equal(t, server.Port, local.Port)
		require.True(t, local.IP.Equal(server.IP), "LocalAddr %v, peer connected to %v", local, server)

		_, err := peer.Write(frame([]byte("addr")))
		require.NoError(t, err)
		buf := make([]byte, 64)
		require.NoError(t, pc.SetReadDeadline(time.Now().Add(5*time.Second)))
		n, from, err := pc.ReadFrom(buf)
		require.NoError(t, err)
		require.Equal(t, "addr", string(buf[:n]))
		tcpFrom, ok := from.(*net.TCPAddr)
		require.True(t, ok, "ReadFrom returns a *net.TCPAddr, got %T", from)
		require.Equal(t, peer.LocalAddr().String(), tcpFrom.String())
	})

	t.Run("RoundTrip", func(t *testing.T) {
		pc, peer := mk(t).pair()
		for i := range 10 {
			msg := []byte(fmt.Sprintf("ping %d", i))
			_, err := peer.Write(frame(msg))
			require.NoError(t, err)
			got, from := readPacket(t, pc)
			require.Equal(t, msg, got)
			reply := []byte(fmt.Sprintf("pong %d", i))
			n, err := pc.WriteTo(reply, from)
			require.NoError(t, err)
			require.Equal(t, len(reply), n)
			require.Equal(t, reply, readFrame(t, peer))
		}
	})

	t.Run("ReadDeadlinePassed", func(t *testing.T) {
		pc, peer := mk(t).pair()
		require.NoError(t, pc.SetReadDeadline(time.Now().Add(-time.Second)))
		n, _, err := pc.ReadFrom(make([]byte, 64))
		pcRequireTimeout(t, err)
		require.Zero(t, n)
		// A timeout does not break the PacketConn.
		require.NoError(t, pc.SetReadDeadline(time.Time{}))
		_, err = peer.Write(frame([]byte("after timeout")))
		require.NoError(t, err)
		got, _ := readPacket(t, pc)
		require.Equal(t, "after timeout", string(got))
	})

	t.Run("ReadDeadlineWakesBlockedRead", func(t *testing.T) {
		for _, d := range []time.Duration{-time.Second, 0, 50 * time.Millisecond} {
			pc, _ := mk(t).pair()
			res := pcReadAsync(pc, make([]byte, 64))
			start := time.Now()
			require.NoError(t, pc.SetReadDeadline(start.Add(d)))
			r := pcAwait(t, res, time.Second, "a blocked ReadFrom after SetReadDeadline")
			pcRequireTimeout(t, r.err)
			require.Zero(t, r.n)
			require.Less(t, time.Since(start), time.Second)
			if d > 0 {
				require.GreaterOrEqual(t, time.Since(start), d, "ReadFrom returned before its deadline")
			}
		}
		// A deadline moved earlier while ReadFrom waits.
		pc, _ := mk(t).pair()
		require.NoError(t, pc.SetReadDeadline(time.Now().Add(time.Hour)))
		res := pcReadAsync(pc, make([]byte, 64))
		require.NoError(t, pc.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
		pcRequireTimeout(t, pcAwait(t, res, time.Second, "a blocked ReadFrom").err)
	})

	t.Run("ReadDeadlineCleared", func(t *testing.T) {
		pc, peer := mk(t).pair()
		require.NoError(t, pc.SetReadDeadline(time.Now().Add(-time.Second)))
		_, _, err := pc.ReadFrom(make([]byte, 64))
		pcRequireTimeout(t, err)
		// Clear a passed deadline and a pending one: neither may fire.
		require.NoError(t, pc.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
		require.NoError(t, pc.SetReadDeadline(time.Time{}))
		res := pcReadAsync(pc, make([]byte, 64))
		select {
		case r := <-res:
			t.Fatalf("ReadFrom returned (%d, %v) with no data and no deadline", r.n, r.err)
		case <-time.After(200 * time.Millisecond):
		}
		_, err = peer.Write(frame([]byte("late")))
		require.NoError(t, err)
		r := pcAwait(t, res, 5*time.Second, "ReadFrom")
		require.NoError(t, r.err)
		require.Equal(t, 4, r.n)
	})

	t.Run("WriteDeadlinePassedWritesNothing", func(t *testing.T) {
		pc, peer := mk(t).pair()
		to := peer.LocalAddr()
		require.NoError(t, pc.SetWriteDeadline(time.Now().Add(-time.Second)))
		n, err := pc.WriteTo([]byte("must not be sent"), to)
		pcRequireTimeout(t, err)
		require.Zero(t, n)
		require.NoError(t, pc.SetWriteDeadline(time.Time{}))
		_, err = pc.WriteTo([]byte("sent"), to)
		require.NoError(t, err)
		require.Equal(t, "sent", string(readFrame(t, peer)), "the timed-out frame must not reach the peer")
	})

	t.Run("SetDeadlineSetsBoth", func(t *testing.T) {
		pc, peer := mk(t).pair()
		to := peer.LocalAddr()
		require.NoError(t, pc.SetDeadline(time.Now().Add(-time.Second)))
		_, _, err := pc.ReadFrom(make([]byte, 64))
		pcRequireTimeout(t, err)
		_, err = pc.WriteTo([]byte("no"), to)
		pcRequireTimeout(t, err)
		require.NoError(t, pc.SetDeadline(time.Time{}))
		_, err = pc.WriteTo([]byte("yes"), to)
		require.NoError(t, err)
		require.Equal(t, "yes", string(readFrame(t, peer)))
		_, err = peer.Write(frame([]byte("back")))
		require.NoError(t, err)
		got, _ := readPacket(t, pc)
		require.Equal(t, "back", string(got))
	})

	t.Run("ConcurrentReadFrom", func(t *testing.T) {
		pc, peer := mk(t).pair()
		const packets, readers = 400, 4
		var stream []byte
		for seq := range packets {
			stream = append(stream, frame(pcSeqPayload(0, seq, pcSeqSize(0, seq)))...)
		}
		got := make(chan []byte, packets)
		readErrs := make(chan error, readers)
		for range readers {
			go func() {
				buf := make([]byte, MaxFramePayload)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						readErrs <- err
						return
					}
					if from.String() != peer.LocalAddr().String() {
						readErrs <- fmt.Errorf("packet from %v, want %v", from, peer.LocalAddr())
						return
					}
					got <- bytes.Clone(buf[:n])
				}
			}()
		}
		_, err := peer.Write(stream)
		require.NoError(t, err)
		seen := make(map[int]bool)
		for range packets {
			p := pcAwait(t, got, 5*time.Second, "a concurrent reader")
			_, seq, err := pcParseSeqPayload(p)
			require.NoError(t, err)
			require.False(t, seen[seq], "packet %d delivered twice", seq)
			seen[seq] = true
		}
		// Wake the readers with a deadline; each must report a timeout.
		require.NoError(t, pc.SetReadDeadline(time.Now()))
		for range readers {
			pcRequireTimeout(t, pcAwait(t, readErrs, time.Second, "a reader after the deadline"))
		}
		require.Len(t, seen, packets)
	})

	t.Run("ConcurrentWriteTo", func(t *testing.T) {
		pc, peer := mk(t).pair()
		pcCheckConcurrentWriteTo(t, pc, peer, peer.LocalAddr(), 8, 100)
	})

	t.Run("Chaos", func(t *testing.T) {
		testPacketConnChaos(t, mk)
	})

	t.Run("CloseUnblocksReadFrom", func(t *testing.T) {
		pc, _ := mk(t).pair()
		res := pcReadAsync(pc, make([]byte, 64))
		require.NoError(t, pc.Close())
		r := pcAwait(t, res, time.Second, "ReadFrom after Close")
		pcRequireClosed(t, r.err)
	})

	t.Run("UseAfterClose", func(t *testing.T) {
		pc, peer := mk(t).pair()
		require.NoError(t, pc.Close())
		_, _, err := pc.ReadFrom(make([]byte, 64))
		pcRequireClosed(t, err, "ReadFrom")
		_, err = pc.WriteTo([]byte("x"), peer.LocalAddr())
		pcRequireClosed(t, err, "WriteTo")
		if apc, ok := pc.(pcAddrPortConn); ok {
			_, _, err = apc.ReadFromAddrPort(make([]byte, 64))
			pcRequireClosed(t, err, "ReadFromAddrPort")
			_, err = apc.WriteToAddrPort([]byte("x"), netip.MustParseAddrPort(peer.LocalAddr().String()))
			pcRequireClosed(t, err, "WriteToAddrPort")
		}
	})
}

// TestPacketConnContract runs the suite over both address families, both
// write modes, and one or two TCP connections per PacketConn: with two,
// the first peer's packets share the PacketConn's queue with another
// connection's, which a single connection may bypass (direct_read.go).
func TestPacketConnContract(t *testing.T) {
	for _, fam := range pcFamilies {
		for _, mode := range pcWriteModes {
			for _, conns := range []int{1, 2} {
				t.Run(fmt.Sprintf("%s/%s/%dconn", fam.name, mode.name, conns), func(t *testing.T) {
					testPacketConnContract(t, func(t *testing.T) pcContractEnv {
						m, pc, client, _ := pcPair(t, fam, TCPMuxParams{WriteBufferSize: mode.writeBufferSize})
						env := pcContractEnv{
							pc:     pc,
							peers:  []net.Conn{client},
							handle: func() net.PacketConn { return pcClaim(t, m, fam, "pair") },
						}
						for len(env.peers) < conns {
							c, _ := pcConnect(t, m, pc, "pair")
							env.peers = append(env.peers, c)
						}
						return env
					})
				})
			}
		}
	}
}

// ---------------------------------------------------------------------------
// SPEC 4: ReadFrom.

// The remote of a dual-stack listener's connection from an IPv4 peer is
// IPv4-mapped: it routes to the IPv4 PacketConn and reads back unmapped.
func TestPacketConnReadFromUnmapsIPv4MappedRemote(t *testing.T) {
	for _, local := range []string{"[::ffff:10.0.0.2]:4000", "10.0.0.2:4000"} {
		t.Run(local, func(t *testing.T) {
			l := newPipeListener("[::]:4000")
			m := newTestMux(t, TCPMuxParams{Listener: l})
			pc4, err := m.GetConnByUfrag("mapped", false, net.ParseIP("10.0.0.2"))
			require.NoError(t, err)
			defer pc4.Close()
			pc6, err := m.GetConnByUfrag("mapped", true, net.ParseIP("10.0.0.2"))
			require.NoError(t, err)
			defer pc6.Close()

			client := l.dial(t, local, "[::ffff:10.0.0.1]:5000")
			req := bindingRequest(t, "mapped")
			_, err = client.Write(frame(req))
			require.NoError(t, err)

			got, from := readPacket(t, pc4)
			require.Equal(t, req, got, "an IPv4-mapped remote routes to the IPv4 PacketConn")
			tcpFrom, ok := from.(*net.TCPAddr)
			require.True(t, ok, "ReadFrom returns a *net.TCPAddr, got %T", from)
			require.Equal(t, "10.0.0.1:5000", tcpFrom.String())
			require.NotNil(t, tcpFrom.IP.To4())
			require.Equal(t, netip.MustParseAddrPort("10.0.0.1:5000"), netip.AddrPortFrom(tcpFrom.AddrPort().Addr().Unmap(), tcpFrom.AddrPort().Port()))

			_, err = client.Write(frame([]byte("second")))
			require.NoError(t, err)
			buf := make([]byte, 64)
			require.NoError(t, pc4.SetReadDeadline(time.Now().Add(5*time.Second)))
			n, ap, err := pc4.(pcAddrPortConn).ReadFromAddrPort(buf)
			require.NoError(t, err)
			require.Equal(t, "second", string(buf[:n]))
			require.True(t, ap.Addr().Is4(), "ReadFromAddrPort returns %v, want the unmapped IPv4 form", ap)
			require.Equal(t, netip.MustParseAddrPort("10.0.0.1:5000"), ap)

			// The IPv6 PacketConn of the same ufrag and local IP got nothing.
			require.NoError(t, pc6.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
			_, _, err = pc6.ReadFrom(buf)
			pcRequireTimeout(t, err, "the IPv6 PacketConn must not receive the IPv4 peer's packets")

			// WriteTo reaches the peer with the unmapped and the mapped form.
			for _, to := range []net.Addr{from, &net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.1"), Port: 5000}} {
				rx := pcReadFrameAsync(client)
				_, err = pc4.WriteTo([]byte("reply"), to)
				require.NoError(t, err, "WriteTo %v", to)
				require.Equal(t, "reply", string(pcAwait(t, rx, 5*time.Second, "the client's read")))
			}
			local := pc4.LocalAddr().(*net.TCPAddr)
			require.Equal(t, "10.0.0.2:4000", local.String())
		})
	}
}

func TestPacketConnShortBufferDropsPacket(t *testing.T) {
	_, pc, client, _ := pcPair(t, pcFamilies[0], TCPMuxParams{})
	apc := pc.(pcAddrPortConn)
	var burst []byte
	for _, p := range []string{"0123456789", "ab", "0123456789", "cd", "", "exact"} {
		burst = append(burst, frame([]byte(p))...)
	}
	_, err := client.Write(burst)
	require.NoError(t, err)
	require.NoError(t, pc.SetReadDeadline(time.Now().Add(5*time.Second)))

	small := make([]byte, 4)
	_, _, err = pc.ReadFrom(small)
	require.ErrorIs(t, err, io.ErrShortBuffer)
	buf := make([]byte, 64)
	n, _, err := pc.ReadFrom(buf)
	require.NoError(t, err)
	require.Equal(t, "ab", string(buf[:n]), "the short-buffer packet is dropped; the next read gets the next packet")

	_, _, err = apc.ReadFromAddrPort(small)
	require.ErrorIs(t, err, io.ErrShortBuffer)
	n, _, err = apc.ReadFromAddrPort(buf)
	require.NoError(t, err)
	require.Equal(t, "cd", string(buf[:n]))

	// An empty packet fits an empty buffer; a buffer of exactly the packet's
	// size is not short.
	n, _, err = pc.ReadFrom(nil)
	require.NoError(t, err)
	require.Zero(t, n)
	n, _, err = pc.ReadFrom(small[:0])
	require.ErrorIs(t, err, io.ErrShortBuffer, "a 5-byte packet does not fit an empty buffer")
	require.Zero(t, n)

	_, err = client.Write(frame([]byte("exact")))
	require.NoError(t, err)
	exact := make([]byte, 5)
	n, _, err = pc.ReadFrom(exact)
	require.NoError(t, err)
	require.Equal(t, "exact", string(exact[:n]))
}

func TestPacketConnConnectionEndIsQuiet(t *testing.T) {
	for _, how := range []string{"EOF", "reset"} {
		t.Run(how, func(t *testing.T) {
			m := newTestMux(t, TCPMuxParams{})
			pc := getConn(t, m, "end")
			a, aAddr := pcConnect(t, m, pc, "end")
			b, bAddr := pcConnect(t, m, pc, "end")
			require.Equal(t, 2, m.Stats().ConnsActive)

			_, err := a.Write(frame([]byte("last words")))
			require.NoError(t, err)
			if how == "reset" {
				// Read the packet first: a reset may discard unread data.
				got, from := readPacket(t, pc)
				require.Equal(t, "last words", string(got))
				require.Equal(t, aAddr.String(), from.String())
				require.NoError(t, a.(*net.TCPConn).SetLinger(0))
			}
			require.NoError(t, a.Close())
			if how == "EOF" {
				got, from := readPacket(t, pc)
				require.Equal(t, "last words", string(got), "packets sent before EOF are delivered")
				require.Equal(t, aAddr.String(), from.String())
			}
			eventually(t, func() bool { return m.Stats().ConnsActive == 1 }, "the ended connection is removed")

			// ReadFrom reports nothing about it and carries on.
			_, err = b.Write(frame([]byte("from b")))
			require.NoError(t, err)
			got, from := readPacket(t, pc)
			require.Equal(t, "from b", string(got))
			require.Equal(t, bAddr.String(), from.String())

			_, err = pc.WriteTo([]byte("to a"), aAddr)
			require.ErrorIs(t, err, ErrNoConnForAddr)
			_, err = pc.WriteTo([]byte("to b"), bAddr)
			require.NoError(t, err)
			require.Equal(t, "to b", string(readFrame(t, b)))

			// A new connection with the same ufrag joins the same PacketConn.
			c, cAddr := pcConnect(t, m, pc, "end")
			_, err = c.Write(frame([]byte("from c")))
			require.NoError(t, err)
			got, from = readPacket(t, pc)
			require.Equal(t, "from c", string(got))
			require.Equal(t, cAddr.String(), from.String())
			_, err = pc.WriteTo([]byte("to c"), cAddr)
			require.NoError(t, err)
			require.Equal(t, "to c", string(readFrame(t, c)))
			st := m.Stats()
			require.Equal(t, 2, st.ConnsActive)
			require.Equal(t, 1, st.PacketConns)
		})
	}
}

// ---------------------------------------------------------------------------
// SPEC 4: frame sizes.

func TestPacketConnFrameSizesBothWays(t *testing.T) {
	sizes := []int{0, 1, 1200, MaxFramePayload}
	for _, fam := range pcFamilies {
		for _, mode := range pcWriteModes {
			t.Run(fam.name+"/"+mode.name, func(t *testing.T) {
				_, pc, client, addr := pcPair(t, fam, TCPMuxParams{WriteBufferSize: mode.writeBufferSize})
				for _, size := range sizes {
					p := pcSeqPayload(1, size, max(size, 6))[:size]
					_, err := client.Write(frame(p))
					require.NoError(t, err)
					got, _ := readPacket(t, pc)
					require.Equal(t, p, got, "client to ReadFrom, %d bytes", size)

					n, err := pc.WriteTo(p, addr)
					require.NoError(t, err)
					require.Equal(t, size, n)
					require.Equal(t, p, readFrame(t, client), "WriteTo to client, %d bytes", size)
				}

				// All sizes back to back in one client write, and in a row of
				// WriteTo calls.
				var burst []byte
				for _, size := range sizes {
					burst = append(burst, frame(bytes.Repeat([]byte{byte(size)}, size))...)
				}
				_, err := client.Write(burst)
				require.NoError(t, err)
				for _, size := range sizes {
					got, _ := readPacket(t, pc)
					require.Equal(t, bytes.Repeat([]byte{byte(size)}, size), got)
				}
				for _, size := range sizes {
					_, err := pc.WriteTo(bytes.Repeat([]byte{byte(size)}, size), addr)
					require.NoError(t, err)
				}
				for _, size := range sizes {
					require.Equal(t, bytes.Repeat([]byte{byte(size)}, size), readFrame(t, client))
				}
			})
		}
	}
}

// ---------------------------------------------------------------------------
// SPEC 4: WriteTo.

func TestPacketConnConcurrentWriteToNeverInterleaves(t *testing.T) {
	for _, mode := range pcWriteModes {
		t.Run(mode.name, func(t *testing.T) {
			_, pc, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{WriteBufferSize: mode.writeBufferSize})
			pcCheckConcurrentWriteTo(t, pc, client, addr, 32, 200)
		})
	}
}

// Several handles of one PacketConn write to the same remote at once.
func TestPacketConnConcurrentWriteToAcrossHandles(t *testing.T) {
	m, pc, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{})
	other, err := m.GetConnByUfrag("pair", false, net.IPv4(127, 0, 0, 1))
	require.NoError(t, err)
	defer other.Close()
	end := []byte("END")
	received := make(chan error, 1)
	const perWriter = 300
	go func() {
		next := [2]int{}
		for {
			p, err := pcReadFrame(client, 10*time.Second)
			if err != nil {
				received <- err
				return
			}
			if bytes.Equal(p, end) {
				if next != [2]int{perWriter, perWriter} {
					received <- fmt.Errorf("got %v frames per handle, want %d each", next, perWriter)
				} else {
					received <- nil
				}
				return
			}
			w, seq, err := pcParseSeqPayload(p)
			if err == nil && (w > 1 || seq != next[w]) {
				err = fmt.Errorf("writer %d: got seq %d, want %d", w, seq, next[w])
			}
			if err != nil {
				received <- err
				return
			}
			next[w]++
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for w, h := range []net.PacketConn{pc, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range perWriter {
				if _, err := h.WriteTo(pcSeqPayload(w, seq, 1000+seq), addr); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	_, err = pc.WriteTo(end, addr)
	require.NoError(t, err)
	require.NoError(t, pcAwait(t, received, 15*time.Second, "the client's reader"))
}

func TestPacketConnWriteToUnknownAddr(t *testing.T) {
	for _, mode := range pcWriteModes {
		t.Run(mode.name, func(t *testing.T) {
			m, pc, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{WriteBufferSize: mode.writeBufferSize})
			apc := pc.(pcAddrPortConn)

			_, err := pc.WriteTo([]byte("x"), &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1})
			require.ErrorIs(t, err, ErrNoConnForAddr)
			_, err = apc.WriteToAddrPort([]byte("x"), netip.MustParseAddrPort("127.0.0.1:1"))
			require.ErrorIs(t, err, ErrNoConnForAddr)
			_, err = pc.WriteTo([]byte("x"), nil)
			require.Error(t, err, "a nil address has no connection")

			// A connection of another ufrag is not reachable from this one.
			otherPC := getConn(t, m, "other")
			_, otherAddr := pcConnect(t, m, otherPC, "other")
			_, err = pc.WriteTo([]byte("x"), otherAddr)
			require.ErrorIs(t, err, ErrNoConnForAddr, "WriteTo must not reach another PacketConn's connection")

			_, err = pc.WriteTo([]byte("ok"), addr)
			require.NoError(t, err)
			require.Equal(t, "ok", string(readFrame(t, client)), "failed WriteTo calls sent nothing")
		})
	}
}

func TestPacketConnWriteToFrameTooLarge(t *testing.T) {
	for _, mode := range pcWriteModes {
		t.Run(mode.name, func(t *testing.T) {
			m, pc, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{WriteBufferSize: mode.writeBufferSize})
			before := m.Stats()
			n, err := pc.WriteTo(make([]byte, MaxFramePayload+1), addr)
			require.ErrorIs(t, err, ErrFrameTooLarge)
			require.Zero(t, n)
			n, err = pc.(pcAddrPortConn).WriteToAddrPort(make([]byte, MaxFramePayload+1), addrPortOf(addr))
			require.ErrorIs(t, err, ErrFrameTooLarge)
			require.Zero(t, n)
			after := m.Stats()
			require.Equal(t, before.PacketsSent, after.PacketsSent, "an unframeable packet is not counted as sent")
			require.Equal(t, before.BytesSent, after.BytesSent)
			require.Equal(t, 1, after.ConnsActive, "the connection stays")

			_, err = pc.WriteTo([]byte("next"), addr)
			require.NoError(t, err)
			require.Equal(t, "next", string(readFrame(t, client)), "the client received nothing of the oversized packet")
		})
	}
}

// pcFailWriteConn fails every Write once fail is set, while reads go on: a
// write error the read side does not see.
type pcFailWriteConn struct {
	net.Conn
	fail atomic.Bool
}

func (c *pcFailWriteConn) Write(b []byte) (int, error) {
	if c.fail.Load() {
		return 0, errors.New("injected write failure")
	}
	return c.Conn.Write(b)
}

func TestPacketConnWriteErrorRemovesConn(t *testing.T) {
	for _, mode := range pcWriteModes {
		t.Run("injected/"+mode.name, func(t *testing.T) {
			l := newPipeListener("10.0.0.2:4000")
			m := newTestMux(t, TCPMuxParams{Listener: l, WriteBufferSize: mode.writeBufferSize})
			pc, err := m.GetConnByUfrag("wfail", false, net.ParseIP("10.0.0.2"))
			require.NoError(t, err)
			defer pc.Close()

			client, server := net.Pipe()
			t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
			conn := &pcFailWriteConn{Conn: &addrConn{
				Conn:   server,
				local:  net.TCPAddrFromAddrPort(mustAddrPort("10.0.0.2:4000")),
				remote: net.TCPAddrFromAddrPort(mustAddrPort("10.0.0.1:5000")),
			}}
			select {
			case l.conns <- conn:
			case <-time.After(5 * time.Second):
				t.Fatal("mux did not accept")
			}
			_, err = client.Write(frame(bindingRequest(t, "wfail")))
			require.NoError(t, err)
			_, addr := readPacket(t, pc)

			rx := pcReadFrameAsync(client)
			_, err = pc.WriteTo([]byte("works"), addr)
			require.NoError(t, err)
			require.Equal(t, "works", string(pcAwait(t, rx, 5*time.Second, "the client's read")))
			require.Equal(t, 1, m.Stats().ConnsActive)

			conn.fail.Store(true)
			_, err = pc.WriteTo([]byte("fails"), addr)
			if mode.writeBufferSize == 0 {
				require.Error(t, err, "a synchronous WriteTo reports the write error")
			}
			eventually(t, func() bool { return m.Stats().ConnsActive == 0 }, "a write error removes the connection")
			_, err = pc.WriteTo([]byte("gone"), addr)
			require.ErrorIs(t, err, ErrNoConnForAddr)
			waitClosedByPeer(t, client, time.Second)

			// The PacketConn itself lives on.
			require.NoError(t, pc.SetReadDeadline(time.Now()))
			_, _, err = pc.ReadFrom(make([]byte, 64))
			pcRequireTimeout(t, err)
		})
	}
	for _, mode := range pcWriteModes {
		t.Run("reset/"+mode.name, func(t *testing.T) {
			m, pc, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{WriteBufferSize: mode.writeBufferSize})
			require.NoError(t, client.(*net.TCPConn).SetLinger(0))
			require.NoError(t, client.Close())
			var lastErr error
			eventually(t, func() bool {
				_, lastErr = pc.WriteTo([]byte("into the void"), addr)
				return errors.Is(lastErr, ErrNoConnForAddr)
			}, "WriteTo to a reset peer ends with ErrNoConnForAddr")
			require.Equal(t, 0, m.Stats().ConnsActive)
			require.Equal(t, 1, m.Stats().PacketConns, "the PacketConn stays open")
		})
	}
}

func TestPacketConnAddrPortMethods(t *testing.T) {
	for _, fam := range pcFamilies {
		for _, mode := range pcWriteModes {
			t.Run(fam.name+"/"+mode.name, func(t *testing.T) {
				_, pc, client, addr := pcPair(t, fam, TCPMuxParams{WriteBufferSize: mode.writeBufferSize})
				apc, ok := pc.(pcAddrPortConn)
				require.True(t, ok, "the PacketConn implements ReadFromAddrPort and WriteToAddrPort")
				want := netip.MustParseAddrPort(client.LocalAddr().String())

				_, err := client.Write(frame([]byte("via addrport")))
				require.NoError(t, err)
				require.NoError(t, pc.SetReadDeadline(time.Now().Add(5*time.Second)))
				buf := make([]byte, 64)
				n, ap, err := apc.ReadFromAddrPort(buf)
				require.NoError(t, err)
				require.Equal(t, "via addrport", string(buf[:n]))
				require.Equal(t, want, ap)
				require.Equal(t, addr.String(), ap.String())

				n, err = apc.WriteToAddrPort([]byte("reply"), ap)
				require.NoError(t, err)
				require.Equal(t, 5, n)
				require.Equal(t, "reply", string(readFrame(t, client)))

				if !fam.ipv6 {
					mapped := netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
					require.True(t, mapped.Addr().Is4In6())
					_, err = apc.WriteToAddrPort([]byte("mapped"), mapped)
					require.NoError(t, err, "an IPv4-mapped address is the same address")
					require.Equal(t, "mapped", string(readFrame(t, client)))
				}

				_, err = apc.WriteToAddrPort([]byte("x"), netip.AddrPortFrom(ap.Addr(), ap.Port()+1))
				require.ErrorIs(t, err, ErrNoConnForAddr)

				require.NoError(t, pc.SetReadDeadline(time.Now().Add(-time.Second)))
				_, _, err = apc.ReadFromAddrPort(buf)
				pcRequireTimeout(t, err)
				require.NoError(t, pc.SetWriteDeadline(time.Now().Add(-time.Second)))
				_, err = apc.WriteToAddrPort([]byte("late"), ap)
				pcRequireTimeout(t, err)
			})
		}
	}
}

// ---------------------------------------------------------------------------
// SPEC 4: deadlines belong to the handle.

func TestPacketConnDeadlinesPerHandle(t *testing.T) {
	m, h1, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{})
	h2, err := m.GetConnByUfrag("pair", false, net.IPv4(127, 0, 0, 1))
	require.NoError(t, err)
	defer h2.Close()

	// h2 blocks in ReadFrom with no deadline while h1's read deadline passes.
	res2 := pcReadAsync(h2, make([]byte, 64))
	require.NoError(t, h1.SetReadDeadline(time.Now().Add(-time.Second)))
	_, _, err = h1.ReadFrom(make([]byte, 64))
	pcRequireTimeout(t, err)
	res1 := pcReadAsync(h1, make([]byte, 64))
	pcRequireTimeout(t, pcAwait(t, res1, time.Second, "h1's ReadFrom").err)
	select {
	case r := <-res2:
		t.Fatalf("h2's ReadFrom returned (%d, %v): h1's deadline leaked into h2", r.n, r.err)
	default:
	}
	_, err = client.Write(frame([]byte("for h2")))
	require.NoError(t, err)
	r := pcAwait(t, res2, 5*time.Second, "h2's ReadFrom")
	require.NoError(t, r.err)
	require.Equal(t, 6, r.n)

	// Write deadlines likewise.
	require.NoError(t, h1.SetWriteDeadline(time.Now().Add(-time.Second)))
	_, err = h1.WriteTo([]byte("h1"), addr)
	pcRequireTimeout(t, err)
	_, err = h2.WriteTo([]byte("h2"), addr)
	require.NoError(t, err, "h1's write deadline must not bound h2")
	require.Equal(t, "h2", string(readFrame(t, client)))

	// And the other way round: h2's deadline does not bound h1.
	require.NoError(t, h1.SetDeadline(time.Time{}))
	require.NoError(t, h2.SetDeadline(time.Now().Add(-time.Second)))
	_, err = h1.WriteTo([]byte("h1"), addr)
	require.NoError(t, err)
	require.Equal(t, "h1", string(readFrame(t, client)))
	_, err = client.Write(frame([]byte("for h1")))
	require.NoError(t, err)
	got, _ := readPacket(t, h1)
	require.Equal(t, "for h1", string(got))
}

func TestPacketConnWriteDeadlinePassedWritesNothing(t *testing.T) {
	for _, mode := range pcWriteModes {
		t.Run(mode.name, func(t *testing.T) {
			m, pc, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{WriteBufferSize: mode.writeBufferSize})
			before := m.Stats()
			require.NoError(t, pc.SetWriteDeadline(time.Now().Add(-time.Second)))
			for _, size := range []int{0, 100, MaxFramePayload} {
				n, err := pc.WriteTo(make([]byte, size), addr)
				pcRequireTimeout(t, err)
				require.Zero(t, n)
			}
			require.Equal(t, before.PacketsSent, m.Stats().PacketsSent)
			require.Equal(t, 1, m.Stats().ConnsActive, "a WriteTo that wrote nothing keeps the connection")

			require.NoError(t, pc.SetWriteDeadline(time.Time{}))
			_, err := pc.WriteTo([]byte("first"), addr)
			require.NoError(t, err)
			require.Equal(t, "first", string(readFrame(t, client)), "the client received nothing before the first allowed frame")
		})
	}
}

// A write deadline that passes while a frame is half written tears the
// stream: the connection is closed, and the client never sees a frame
// WriteTo reported as failed.
func TestPacketConnWriteDeadlineMidFrame(t *testing.T) {
	m, pc, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{})
	// The client stops reading. Each WriteTo gets a fresh short deadline, so
	// the one that finds the socket full times out after part of its frame
	// went out, however long filling the socket takes.
	template := pcSeqPayload(3, 0, MaxFramePayload)
	payload := bytes.Clone(template)
	start := time.Now()
	sent := 0
	var werr error
	var dl time.Time
	for werr == nil {
		require.Less(t, time.Since(start), 20*time.Second, "the socket never filled up")
		binary.BigEndian.PutUint32(payload[2:], uint32(sent))
		dl = time.Now().Add(250 * time.Millisecond)
		require.NoError(t, pc.SetWriteDeadline(dl))
		if _, werr = pc.WriteTo(payload, addr); werr == nil {
			sent++
		}
	}
	pcRequireTimeout(t, werr)
	require.Less(t, time.Since(dl), time.Second, "WriteTo overran its deadline")

	// Drain the client (until it has been idle for a second) and parse.
	var stream []byte
	buf := make([]byte, 256<<10)
	var rerr error
	for rerr == nil {
		require.NoError(t, client.SetReadDeadline(time.Now().Add(time.Second)))
		var n int
		n, rerr = client.Read(buf)
		stream = append(stream, buf[:n]...)
	}
	var netErr net.Error
	closed := !(errors.As(rerr, &netErr) && netErr.Timeout())
	whole, partial := 0, false
	for data := stream; len(data) > 0; whole++ {
		if len(data) < FrameHeaderSize || len(data) < FrameHeaderSize+int(binary.BigEndian.Uint16(data)) {
			partial = true
			break
		}
		n := int(binary.BigEndian.Uint16(data))
		require.Equal(t, MaxFramePayload, n, "frame %d", whole)
		p := data[FrameHeaderSize : FrameHeaderSize+n]
		require.Equal(t, uint32(whole), binary.BigEndian.Uint32(p[2:]), "frame %d", whole)
		require.True(t, bytes.Equal(template[6:], p[6:]), "frame %d is corrupt", whole)
		data = data[FrameHeaderSize+n:]
	}
	require.Equal(t, sent, whole, "the client receives exactly the frames WriteTo accepted")
	if partial {
		require.True(t, closed, "a half-written frame must close the TCP connection (client error: %v)", rerr)
		eventually(t, func() bool { return m.Stats().ConnsActive == 0 }, "the torn connection is removed")
		require.NoError(t, pc.SetWriteDeadline(time.Time{}))
		_, err := pc.WriteTo([]byte("x"), addr)
		require.ErrorIs(t, err, ErrNoConnForAddr)
		return
	}
	t.Logf("the timed-out WriteTo wrote nothing (closed=%v)", closed)
	if !closed {
		require.NoError(t, pc.SetWriteDeadline(time.Time{}))
		_, err := pc.WriteTo([]byte("after"), addr)
		require.NoError(t, err)
		require.Equal(t, "after", string(readFrame(t, client)))
	}
}

// Deadlines apply to pending I/O too (net.Conn): moving the write deadline
// while a WriteTo is blocked on a peer that stopped reading bounds it.
func TestPacketConnWriteDeadlineWakesBlockedWriteTo(t *testing.T) {
	_, pc, _, addr := pcPair(t, pcFamilies[0], TCPMuxParams{})
	inCall, result := pcBlockedWriter(pc, addr)
	pcWaitStuck(t, inCall)
	start := time.Now()
	require.NoError(t, pc.SetWriteDeadline(start.Add(50*time.Millisecond)))
	err := pcAwait(t, result, time.Second, "a blocked WriteTo after SetWriteDeadline")
	pcRequireTimeout(t, err)
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond, "WriteTo returned before its deadline")
}

func TestPacketConnSetDeadlineSetsBoth(t *testing.T) {
	_, pc, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{})
	res := pcReadAsync(pc, make([]byte, 64))
	require.NoError(t, pc.SetDeadline(time.Now().Add(50*time.Millisecond)))
	pcRequireTimeout(t, pcAwait(t, res, time.Second, "a blocked ReadFrom").err)
	_, err := pc.WriteTo([]byte("no"), addr)
	pcRequireTimeout(t, err)

	require.NoError(t, pc.SetDeadline(time.Time{}))
	_, err = pc.WriteTo([]byte("yes"), addr)
	require.NoError(t, err)
	require.Equal(t, "yes", string(readFrame(t, client)))
	res = pcReadAsync(pc, make([]byte, 64))
	_, err = client.Write(frame([]byte("back")))
	require.NoError(t, err)
	r := pcAwait(t, res, 5*time.Second, "ReadFrom")
	require.NoError(t, r.err)
	require.Equal(t, 4, r.n)
}

// ---------------------------------------------------------------------------
// SPEC 4: LocalAddr.

func TestPacketConnLocalAddr(t *testing.T) {
	for _, fam := range pcFamilies {
		t.Run(fam.name, func(t *testing.T) {
			m := pcNewMux(t, fam, TCPMuxParams{})
			port := m.LocalAddr().(*net.TCPAddr).Port
			pc := pcClaim(t, m, fam, "local")
			local, ok := pc.LocalAddr().(*net.TCPAddr)
			require.True(t, ok, "LocalAddr is a *net.TCPAddr, got %T", pc.LocalAddr())
			require.Equal(t, port, local.Port)
			require.True(t, local.IP.Equal(fam.ip), "LocalAddr IP %v, asked for %v", local.IP, fam.ip)
		})
	}
	t.Run("asked IP", func(t *testing.T) {
		m := newTestMux(t, TCPMuxParams{})
		port := m.LocalAddr().(*net.TCPAddr).Port
		for _, tc := range []struct {
			ipv6 bool
			ip   string
		}{{false, "192.0.2.7"}, {true, "2001:db8::7"}} {
			pc, err := m.GetConnByUfrag("asked", tc.ipv6, net.ParseIP(tc.ip))
			require.NoError(t, err)
			local := pc.LocalAddr().(*net.TCPAddr)
			require.Equal(t, port, local.Port)
			require.True(t, local.IP.Equal(net.ParseIP(tc.ip)), "LocalAddr IP %v, asked for %v", local.IP, tc.ip)
			require.NoError(t, pc.Close())
		}
	})
}

// ---------------------------------------------------------------------------
// SPEC 4: buffered writes.

func TestPacketConnBufferedWriteNeverBlocks(t *testing.T) {
	m, pc, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{WriteBufferSize: 64 << 10})
	// The client stops reading. 24 MB is more than loopback's socket
	// buffers and the write buffer hold together, so WriteTo must drop.
	const frames, size = 20000, 1200
	type result struct {
		accepted []int
		drops    int
		err      error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		for seq := range frames {
			_, err := pc.WriteTo(pcSeqPayload(5, seq, size), addr)
			switch {
			case err == nil:
				r.accepted = append(r.accepted, seq)
			case errors.Is(err, ErrWriteBufferFull):
				r.drops++
			default:
				r.err = err
				done <- r
				return
			}
		}
		done <- r
	}()
	r := pcAwait(t, done, 20*time.Second, "WriteTo in buffered mode (it blocked on a peer that stopped reading)")
	require.NoError(t, r.err)
	require.Positive(t, r.drops, "some frames must be dropped")
	require.Equal(t, uint64(r.drops), m.Stats().WriteDrops, "Stats.WriteDrops counts every dropped frame")
	require.Equal(t, uint64(len(r.accepted)), m.Stats().PacketsSent, "PacketsSent counts accepted frames only")

	// The client now reads whole frames, in order, exactly the accepted ones.
	for i, seq := range r.accepted {
		p, err := pcReadFrame(client, 5*time.Second)
		require.NoError(t, err, "frame %d of %d", i, len(r.accepted))
		require.Len(t, p, size, "frames are never partial")
		_, got, err := pcParseSeqPayload(p)
		require.NoError(t, err)
		require.Equal(t, seq, got, "frame %d: frames arrive whole and in order", i)
	}
	_, err := pc.WriteTo([]byte("end"), addr)
	require.NoError(t, err)
	require.Equal(t, "end", string(readFrame(t, client)), "nothing but accepted frames was sent")
}

func TestPacketConnBufferedDropsWholeFrame(t *testing.T) {
	m, pc, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{WriteBufferSize: 1000})
	n, err := pc.WriteTo(make([]byte, 999), addr)
	require.ErrorIs(t, err, ErrWriteBufferFull, "999 bytes plus a 2-byte header do not fit in 1000")
	require.Zero(t, n)
	require.Equal(t, uint64(1), m.Stats().WriteDrops)
	require.Equal(t, uint64(0), m.Stats().PacketsSent)
	n, err = pc.WriteTo(make([]byte, MaxFramePayload), addr)
	require.ErrorIs(t, err, ErrWriteBufferFull)
	require.Zero(t, n)
	require.Equal(t, uint64(2), m.Stats().WriteDrops)

	p := pcSeqPayload(9, 9, 998)
	n, err = pc.WriteTo(p, addr)
	require.NoError(t, err, "998 bytes plus the header fill the buffer exactly")
	require.Equal(t, 998, n)
	require.Equal(t, p, readFrame(t, client), "the first frame the client sees is the one that fitted")
	require.Equal(t, 1, m.Stats().ConnsActive, "drops keep the connection")
}

// ---------------------------------------------------------------------------
// SPEC 5: closing.

func TestClosedErrorsMatchNetErrClosedAndErrClosedPipe(t *testing.T) {
	t.Run("RemoveConnByUfrag", func(t *testing.T) {
		m, pc, _, addr := pcPair(t, pcFamilies[0], TCPMuxParams{})
		m.RemoveConnByUfrag("pair")
		_, _, err := pc.ReadFrom(make([]byte, 64))
		pcRequireClosed(t, err, "ReadFrom")
		_, err = pc.WriteTo([]byte("x"), addr)
		pcRequireClosed(t, err, "WriteTo")
	})
	t.Run("mux", func(t *testing.T) {
		m, pc, _, addr := pcPair(t, pcFamilies[0], TCPMuxParams{})
		require.NoError(t, m.Close())
		_, _, err := pc.ReadFrom(make([]byte, 64))
		pcRequireClosed(t, err, "ReadFrom")
		_, err = pc.WriteTo([]byte("x"), addr)
		pcRequireClosed(t, err, "WriteTo")
		_, err = m.GetConnByUfrag("pair", false, net.IPv4(127, 0, 0, 1))
		pcRequireClosed(t, err, "GetConnByUfrag")
	})
}

func TestCloseHandleUnblocksReadFrom(t *testing.T) {
	m, h1, client, _ := pcPair(t, pcFamilies[0], TCPMuxParams{})
	h2, err := m.GetConnByUfrag("pair", false, net.IPv4(127, 0, 0, 1))
	require.NoError(t, err)
	defer h2.Close()
	res1 := pcReadAsync(h1, make([]byte, 64))
	res2 := pcReadAsync(h2, make([]byte, 64))
	require.NoError(t, h1.Close())
	pcRequireClosed(t, pcAwait(t, res1, time.Second, "ReadFrom on the closed handle").err)

	// The other handle's ReadFrom is still pending and gets the next packet.
	select {
	case r := <-res2:
		t.Fatalf("closing h1 woke h2's ReadFrom: (%d, %v)", r.n, r.err)
	default:
	}
	_, err = client.Write(frame([]byte("still here")))
	require.NoError(t, err)
	r := pcAwait(t, res2, 5*time.Second, "h2's ReadFrom")
	require.NoError(t, r.err)
	require.Equal(t, 10, r.n)
}

// pcBlockedWriter writes maximal frames to addr until WriteTo fails, and
// reports the error. inCall holds the start time of the WriteTo under way
// (0 between calls), so a test can wait until one has been stuck a while.
func pcBlockedWriter(pc net.PacketConn, addr net.Addr) (inCall *atomic.Int64, result <-chan error) {
	inCall = new(atomic.Int64)
	ch := make(chan error, 1)
	go func() {
		p := make([]byte, MaxFramePayload)
		for {
			inCall.Store(time.Now().UnixNano())
			_, err := pc.WriteTo(p, addr)
			inCall.Store(0)
			if err != nil {
				ch <- err
				return
			}
		}
	}()
	return inCall, ch
}

func pcWaitStuck(t testing.TB, inCall *atomic.Int64) {
	t.Helper()
	eventually(t, func() bool {
		since := inCall.Load()
		return since != 0 && time.Since(time.Unix(0, since)) > 200*time.Millisecond
	}, "WriteTo never blocked on the peer that stopped reading")
}

func TestCloseLastHandleUnblocksWriteTo(t *testing.T) {
	m, h1, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{})
	h2, err := m.GetConnByUfrag("pair", false, net.IPv4(127, 0, 0, 1))
	require.NoError(t, err)
	inCall, result := pcBlockedWriter(h1, addr)
	pcWaitStuck(t, inCall)

	// Closing a handle that is not the last leaves the writer blocked.
	require.NoError(t, h2.Close())
	select {
	case err := <-result:
		t.Fatalf("closing another handle ended the write: %v", err)
	default:
	}
	start := time.Now()
	require.NoError(t, h1.Close())
	err = pcAwait(t, result, time.Second, "WriteTo blocked when its last handle closed")
	require.Less(t, time.Since(start), time.Second)
	pcRequireClosed(t, err, "the WriteTo interrupted by Close")
	waitClosedByPeer(t, client, 5*time.Second)
	eventually(t, func() bool { st := m.Stats(); return st.ConnsActive == 0 && st.PacketConns == 0 }, "the PacketConn and its connection are gone")
}

func TestCloseHandleTwiceReleasesOneReference(t *testing.T) {
	m, h1, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{})
	h2, err := m.GetConnByUfrag("pair", false, net.IPv4(127, 0, 0, 1))
	require.NoError(t, err)
	defer h2.Close()

	require.NoError(t, h1.Close())
	_ = h1.Close() // must not release h2's reference
	_ = h1.Close()
	require.Equal(t, 1, m.Stats().PacketConns)
	require.Equal(t, 1, m.Stats().ConnsActive)

	_, err = client.Write(frame([]byte("to h2")))
	require.NoError(t, err)
	got, from := readPacket(t, h2)
	require.Equal(t, "to h2", string(got))
	_, err = h2.WriteTo([]byte("from h2"), addr)
	require.NoError(t, err)
	require.Equal(t, "from h2", string(readFrame(t, client)))
	require.Equal(t, addr.String(), from.String())

	require.NoError(t, h2.Close())
	waitClosedByPeer(t, client, time.Second)
	require.Equal(t, 0, m.Stats().PacketConns)
}

// pcLibraryGoroutines lists the goroutines running code the mux started:
// those created by one of the package's methods, and timer callbacks of
// unclaimed PacketConns. The tests' own goroutines are created by Test
// functions and are not listed.
func pcLibraryGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "created by github.com/icetcp/tcpmux.(*") ||
			strings.Contains(g, "tcpmux.(*tcpPacketConn).expireUnclaimed") {
			found = append(found, g)
		}
	}
	return found
}

func TestMuxCloseClosesEverything(t *testing.T) {
	for _, mode := range pcWriteModes {
		t.Run(mode.name, func(t *testing.T) {
			// The first-frame timeout only bounds the test if Close fails to
			// close the pending connection.
			m, pc, attached, addr := pcPair(t, pcFamilies[0], TCPMuxParams{WriteBufferSize: mode.writeBufferSize, FirstStunBindTimeout: 5 * time.Second})
			unclaimed := dialUfrag(t, m, "nobody-asked")
			pending := dial(t, m, nil)
			eventually(t, func() bool {
				st := m.Stats()
				return st.ConnsPending == 1 && st.ConnsActive == 2 && st.PacketConns == 2
			}, "one pending connection, two attached, two PacketConns")

			reading := pcReadAsync(pc, make([]byte, 64))
			var writing <-chan error
			if mode.writeBufferSize == 0 {
				var inCall *atomic.Int64
				inCall, writing = pcBlockedWriter(pc, addr)
				pcWaitStuck(t, inCall)
			} else {
				// Fill the socket and the write buffer: the flusher blocks.
				eventually(t, func() bool {
					_, err := pc.WriteTo(make([]byte, 60000), addr)
					return errors.Is(err, ErrWriteBufferFull)
				}, "the write buffer never filled")
			}

			require.NotEmpty(t, pcLibraryGoroutines(), "the goroutine check sees the mux's goroutines")
			closed := make(chan error, 1)
			go func() { closed <- m.Close() }()
			require.NoError(t, pcAwait(t, closed, time.Second, "Close with a writer blocked and a connection pending"))
			// A goroutine that has just called its WaitGroup's Done may still
			// be returning: allow it a moment, not any real work.
			require.Eventually(t, func() bool { return len(pcLibraryGoroutines()) == 0 }, 200*time.Millisecond, time.Millisecond,
				"Close returned before the mux's goroutines exited: %v", pcLibraryGoroutines())

			pcRequireClosed(t, pcAwait(t, reading, time.Second, "ReadFrom after mux Close").err)
			if writing != nil {
				pcRequireClosed(t, pcAwait(t, writing, time.Second, "WriteTo after mux Close"))
			}
			waitClosedByPeer(t, pending, time.Second)
			waitClosedByPeer(t, unclaimed, time.Second)
			waitClosedByPeer(t, attached, 5*time.Second)
			if c, err := net.DialTimeout("tcp", m.LocalAddr().String(), time.Second); err == nil {
				waitClosedByPeer(t, c, time.Second)
				_ = c.Close()
			}

			st := m.Stats()
			require.Zero(t, st.ConnsActive)
			require.Zero(t, st.ConnsPending)
			require.Zero(t, st.PacketConns)

			require.NoError(t, m.Close(), "a second Close returns nil")
			_, err := m.GetConnByUfrag("pair", false, net.IPv4(127, 0, 0, 1))
			pcRequireClosed(t, err, "GetConnByUfrag after Close")
			_, err = m.GetConnByUfrag("new", true, net.IPv6loopback)
			pcRequireClosed(t, err, "GetConnByUfrag after Close")
		})
	}
}

func TestMuxCloseIdempotent(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	require.NoError(t, m.Close())
	require.NoError(t, m.Close())
	require.NoError(t, m.Close())
	m.RemoveConnByUfrag("any") // harmless after Close
}

func TestUfragReusableAtOnceAfterClose(t *testing.T) {
	for _, how := range []string{"Close", "RemoveConnByUfrag"} {
		t.Run(how, func(t *testing.T) {
			m, pc, client, _ := pcPair(t, pcFamilies[0], TCPMuxParams{})
			if how == "Close" {
				require.NoError(t, pc.Close())
			} else {
				m.RemoveConnByUfrag("pair")
			}
			pc2 := getConn(t, m, "pair")
			require.Equal(t, 1, m.Stats().PacketConns)
			waitClosedByPeer(t, client, time.Second)

			client2, addr2 := pcConnect(t, m, pc2, "pair")
			_, err := client2.Write(frame([]byte("again")))
			require.NoError(t, err)
			got, _ := readPacket(t, pc2)
			require.Equal(t, "again", string(got))
			_, err = pc2.WriteTo([]byte("welcome back"), addr2)
			require.NoError(t, err)
			require.Equal(t, "welcome back", string(readFrame(t, client2)))
			_, _, err = pc.ReadFrom(make([]byte, 64))
			pcRequireClosed(t, err, "the old handle stays closed")
		})
	}
}

// ---------------------------------------------------------------------------
// SPEC 7: no allocation per packet.

func TestPacketConnRoundTripAllocs(t *testing.T) {
	// 8000 bytes: synchronous writes of large frames take the writev path.
	for _, size := range []int{1200, 8000} {
		for _, mode := range pcWriteModes {
			for _, api := range []string{"ReadFrom+WriteTo", "ReadFromAddrPort+WriteToAddrPort"} {
				t.Run(fmt.Sprintf("%d B/%s/%s", size, mode.name, api), func(t *testing.T) {
					testRoundTripAllocs(t, size, mode.writeBufferSize, api)
				})
			}
		}
	}
}

func testRoundTripAllocs(t *testing.T, size, writeBufferSize int, api string) {
	_, pc, client, _ := pcPair(t, pcFamilies[0], TCPMuxParams{WriteBufferSize: writeBufferSize})
	apc := pc.(pcAddrPortConn)
	payload := pcSeqPayload(1, 1, size)
	out := frame(payload)
	in := make([]byte, len(out))
	buf := make([]byte, MaxFramePayload)
	require.NoError(t, pc.SetReadDeadline(time.Now().Add(time.Minute)))
	require.NoError(t, client.SetReadDeadline(time.Now().Add(time.Minute)))
	var failed error
	roundTrip := func() {
		if failed != nil {
			return
		}
		if _, failed = client.Write(out); failed != nil {
			return
		}
		var n int
		if api == "ReadFrom+WriteTo" {
			var from net.Addr
			if n, from, failed = pc.ReadFrom(buf); failed != nil {
				return
			}
			if _, failed = pc.WriteTo(buf[:n], from); failed != nil {
				return
			}
		} else {
			var from netip.AddrPort
			if n, from, failed = apc.ReadFromAddrPort(buf); failed != nil {
				return
			}
			if _, failed = apc.WriteToAddrPort(buf[:n], from); failed != nil {
				return
			}
		}
		_, failed = io.ReadFull(client, in)
	}
	for range 100 {
		roundTrip()
	}
	require.NoError(t, failed)
	const runs = 300
	allocs := testing.AllocsPerRun(runs, roundTrip)
	require.NoError(t, failed)
	require.Equal(t, out, in)
	require.Zero(t, allocs, "allocations per round trip")

	// AllocsPerRun rounds the average down, so an allocation made
	// by most round trips but not all goes unseen: count them all.
	// A few are the runtime's: a goroutine that parks in select
	// takes sudogs from a per-P cache, refilled by allocation
	// when goroutines migrate between Ps and after each GC (more
	// often under -race). A per-packet allocation would still
	// give at least one per round trip.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		roundTrip()
	}
	runtime.ReadMemStats(&after)
	require.NoError(t, failed)
	total := after.Mallocs - before.Mallocs
	t.Logf("%d allocations in %d round trips", total, runs)
	require.Less(t, total, uint64(runs/4), "allocations in %d round trips", runs)
}

// A reader that takes the wake-up token and then gives up (deadline,
// Close) passes it on: another waiting reader must still get the packet.
func TestQueueReaderGivingUpPassesWakeUp(t *testing.T) {
	pc := &tcpPacketConn{queue: newPacketQueue(8, 1<<16), readable: make(chan struct{}, 1)}
	pc.loan.readable, pc.loan.queue = pc.readable, pc.queue
	ok, wasEmpty, _, err := pc.queue.push(nil, []byte("x"), &trafficCount{}, false)
	require.NoError(t, err)
	require.True(t, ok)
	require.True(t, wasEmpty, "the first packet must wake a reader")
	signal(pc.readable)
	<-pc.readable     // A is woken...
	pc.passReadable() // ...and leaves on its deadline instead of popping
	select {
	case <-pc.readable: // B is woken
	default:
		t.Fatal("the packet waits while reader B sleeps")
	}
	buf := make([]byte, 16)
	n, _, ok, err := pc.queue.pop(buf)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "x", string(buf[:n]))
}

// A write deadline set on one handle does not reach another handle's write
// in progress on the same connection (deadlines belong to the handle).
func TestWriteDeadlineStaysWithItsHandle(t *testing.T) {
	m, h1, _, addr := pcPair(t, pcFamilies[0], TCPMuxParams{})
	h2, err := m.GetConnByUfrag("pair", false, net.IPv4(127, 0, 0, 1))
	require.NoError(t, err)
	defer h2.Close()
	inCall, result := pcBlockedWriter(h1, addr) // no deadline; the peer never reads
	pcWaitStuck(t, inCall)

	require.NoError(t, h2.SetWriteDeadline(time.Now().Add(50*time.Millisecond)))
	_, err = h2.WriteTo([]byte("waits for the connection"), addr)
	pcRequireTimeout(t, err, "h2's own WriteTo times out")
	require.NoError(t, h2.SetWriteDeadline(time.Now().Add(-time.Second)))
	pcWaitStuck(t, inCall) // h1 is still in the same WriteTo
	select {
	case err := <-result:
		t.Fatalf("h2's deadline ended h1's write: %v", err)
	default:
	}
	require.Equal(t, 1, m.Stats().ConnsActive, "the connection was not torn down")

	require.NoError(t, h1.SetWriteDeadline(time.Now()))
	pcRequireTimeout(t, <-result, "h1's own deadline reaches its blocked write")
}

// Buffered writes grow their ring geometrically up to WriteBufferSize, so
// a connection reaches a large buffer in a few allocations, never past the
// limit, and frames come out in order across the wrap.
func TestWriteRingGrowsGeometrically(t *testing.T) {
	const limit = 1 << 20
	payload := make([]byte, 1200)
	var r writeRing
	grows, size := 0, 0
	for r.push(payload, limit) {
		if len(r.buf) != size {
			grows, size = grows+1, len(r.buf)
		}
		require.LessOrEqual(t, len(r.buf), limit)
	}
	require.LessOrEqual(t, grows, 6, "2 KiB to 1 MiB by quadrupling")
	require.Equal(t, limit, len(r.buf))
	require.Greater(t, r.used+FrameHeaderSize+len(payload), limit, "push refused a frame that fit")
}

func TestWriteRingWrapsInOrder(t *testing.T) {
	const limit = 64
	var r writeRing
	var sent, want []byte
	for i := range 200 {
		p := pattern(i%20, byte(i))
		for !r.push(p, limit) { // full: the "socket" takes a few bytes
			front := r.front()
			n := min(len(front), 7)
			sent = append(sent, front[:n]...)
			r.consume(n)
		}
		want = append(want, frame(p)...)
		require.LessOrEqual(t, len(r.buf), limit)
	}
	for r.used > 0 {
		front := r.front()
		sent = append(sent, front...)
		r.consume(len(front))
	}
	require.Equal(t, want, sent)
}

// A write with no deadline is never cut short by another handle's deadline
// moving at the same moment: the deadline is applied only while its own
// handle writes, even as writes of the two handles alternate on one
// connection as fast as they can (own and moveWriteDeadline).
func TestWriteDeadlineNeverReachesAnotherHandlesNextWrite(t *testing.T) {
	m, h1, client, addr := pcPair(t, pcFamilies[0], TCPMuxParams{})
	h2, err := m.GetConnByUfrag("pair", false, net.IPv4(127, 0, 0, 1))
	require.NoError(t, err)
	defer h2.Close()
	go func() { _, _ = io.Copy(io.Discard, client) }()

	const rounds = 20000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(2)
	go func() { // h2 writes with a deadline that keeps passing and coming back
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = h2.WriteTo([]byte("h2"), addr)
		}
	}()
	go func() {
		defer wg.Done()
		far := time.Now().Add(time.Hour)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = h2.SetWriteDeadline(time.Unix(1, 0))
			_ = h2.SetWriteDeadline(far)
		}
	}()
	for i := range rounds {
		if _, err := h1.WriteTo([]byte("h1"), addr); err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("write %d of a handle with no deadline: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
}

// Many connections on one ufrag (an attacker who knows it, or a very
// multi-homed peer) route as one does: each WriteTo reaches the
// connection from its address, connections leave in any order, and a
// left one's address finds nothing. Twenty-four is past the size where a
// PacketConn starts indexing its connections (connSet), and leaving
// moves the last connection into each hole.
func TestPacketConnRoutesAmongManyConnections(t *testing.T) {
	const n = 3 * connSetIndexMin
	m, pc, first, firstAddr := pcPair(t, pcFamilies[0], TCPMuxParams{})
	clients, addrs := []net.Conn{first}, []net.Addr{firstAddr}
	for range n - 1 {
		client, addr := pcConnect(t, m, pc, "pair")
		clients, addrs = append(clients, client), append(addrs, addr)
	}
	roundTrip := func(i int) {
		t.Helper()
		msg := fmt.Appendf(nil, "to %d", i)
		_, err := pc.WriteTo(msg, addrs[i])
		require.NoError(t, err)
		require.Equal(t, msg, readFrame(t, clients[i]), "connection %d", i)
	}
	for i := range n {
		roundTrip(i)
	}
	for i := 0; i < n; i += 2 { // every other one leaves
		require.NoError(t, clients[i].Close())
	}
	inner := pc.(*packetConnHandle).pc
	eventually(t, func() bool { return inner.connCount() == n/2 }, "the closed connections are still attached")
	for i := range n {
		if i%2 == 1 {
			roundTrip(i)
			continue
		}
		_, err := pc.WriteTo([]byte("gone"), addrs[i])
		require.ErrorIs(t, err, ErrNoConnForAddr, "connection %d left", i)
	}
}
