package tcpmux

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Tests of the direct read path (direct_read.go): a PacketConn with one
// connection lends that connection's socket to its readers. Each test puts
// a reader in the lent socket first, then checks that a SPEC promise
// still holds.

func queueOf(pc net.PacketConn) *packetQueue { return pc.(*tcpPacketConn).pc.queue }

// startReader runs ReadFrom on pc in a goroutine, with buffer size n.
func startReader(pc net.PacketConn, n int) <-chan pcReadResult {
	ch := make(chan pcReadResult, 1)
	go func() {
		buf := make([]byte, n)
		got, addr, err := pc.ReadFrom(buf)
		ch <- pcReadResult{n: got, addr: addr, err: err}
	}()
	return ch
}

// awaitReadResult waits for a ReadFrom started with startReader.
func awaitReadResult(t *testing.T, ch <-chan pcReadResult, within time.Duration) pcReadResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(within):
		t.Fatalf("ReadFrom still blocked after %v", within)
		return pcReadResult{}
	}
}

// readerInSocket starts a ReadFrom on pc and waits until it reads the
// lent socket of pc's only connection, client's. An idle connection does
// not lend, so a packet first makes it active.
func readerInSocket(t *testing.T, pc net.PacketConn, client net.Conn) <-chan pcReadResult {
	return readerInSocketWith(t, pc, client, MaxFramePayload)
}

// readerInSocketWith is readerInSocket with a ReadFrom buffer of n bytes.
func readerInSocketWith(t *testing.T, pc net.PacketConn, client net.Conn, n int) <-chan pcReadResult {
	t.Helper()
	_, err := client.Write(frame([]byte("warm-up")))
	require.NoError(t, err)
	p, _ := readPacket(t, pc)
	require.Equal(t, "warm-up", string(p))
	require.NoError(t, pc.SetReadDeadline(time.Time{}))
	ch := startReader(pc, n)
	q := queueOf(pc)
	eventually(t, func() bool { return q.state.Load() == leaseHeld }, "the reader holds the lease")
	return ch
}

func TestDirectReadCarriesTheSession(t *testing.T) {
	for _, fam := range pcFamilies {
		t.Run(fam.name, func(t *testing.T) {
			m, pc, client, from := pcPair(t, fam, TCPMuxParams{})
			q := queueOf(pc)
			const packets = 200
			for i := range packets {
				want := fmt.Sprintf("packet %d", i)
				_, err := client.Write(frame([]byte(want)))
				require.NoError(t, err)
				got, addr := readPacket(t, pc)
				require.Equal(t, want, string(got))
				require.Equal(t, from.String(), addr.String())
			}
			require.NotZero(t, q.takes.Load(), "no ReadFrom used the lent socket")
			s := m.Stats()
			require.Equal(t, uint64(packets+1), s.PacketsReceived, "direct reads are counted")
		})
	}
}

// SPEC 3: several connections share a PacketConn. A reader waiting in the
// first connection's socket must still get the packets of a second one.
func TestDirectReaderGetsSecondConnection(t *testing.T) {
	m, pc, first, firstAddr := pcPair(t, pcFamilies[0], TCPMuxParams{})
	pending := readerInSocket(t, pc, first)

	second := dialUfrag(t, m, "pair") // its Binding request is its first packet
	r := awaitReadResult(t, pending, time.Second)
	require.NoError(t, r.err)
	require.Equal(t, second.LocalAddr().String(), r.addr.String())

	_, err := first.Write(frame([]byte("from the first")))
	require.NoError(t, err)
	_, err = second.Write(frame([]byte("from the second")))
	require.NoError(t, err)
	got := map[string]string{}
	for range 2 {
		p, addr := readPacket(t, pc)
		got[addr.String()] = string(p)
	}
	require.Equal(t, map[string]string{
		firstAddr.String():          "from the first",
		second.LocalAddr().String(): "from the second",
	}, got)
}

// An application that stops reading must not leave the connection
// unread: its packets are still queued and counted, its end noticed, and
// nothing is lost.
func TestDirectReadReturnsSocketWhenReadersStop(t *testing.T) {
	m, pc, client, _ := pcPair(t, pcFamilies[0], TCPMuxParams{})
	pending := readerInSocket(t, pc, client)
	_, err := client.Write(frame([]byte("read from the socket")))
	require.NoError(t, err)
	r := awaitReadResult(t, pending, time.Second)
	require.NoError(t, r.err)

	const later = 5
	for i := range later {
		_, err := client.Write(frame([]byte{byte(i)}))
		require.NoError(t, err)
	}
	require.NoError(t, client.Close())
	eventually(t, func() bool {
		s := m.Stats()
		return s.PacketsReceived == 3+later && s.ConnsActive == 0
	}, "packets counted and the connection's end noticed with nobody reading")
	for i := range later {
		p, _ := readPacket(t, pc)
		require.Equal(t, []byte{byte(i)}, p)
	}
}

// SPEC 4: SetReadDeadline reaches a ReadFrom blocked in the lent socket,
// both to cut it short and to extend it.
func TestDirectReadDeadlines(t *testing.T) {
	_, pc, client, _ := pcPair(t, pcFamilies[0], TCPMuxParams{})

	pending := readerInSocket(t, pc, client)
	require.NoError(t, pc.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	r := awaitReadResult(t, pending, time.Second)
	require.ErrorIs(t, r.err, os.ErrDeadlineExceeded)
	var netErr net.Error
	require.ErrorAs(t, r.err, &netErr)
	require.True(t, netErr.Timeout())

	require.NoError(t, pc.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	pending = readerInSocket(t, pc, client)
	require.NoError(t, pc.SetReadDeadline(time.Now().Add(time.Hour)))
	time.Sleep(50 * time.Millisecond) // past the first deadline: the reader must still wait
	_, err := client.Write(frame([]byte("late")))
	require.NoError(t, err)
	r = awaitReadResult(t, pending, time.Second)
	require.NoError(t, r.err)
	require.Equal(t, 4, r.n)
}

// SPEC 5: closing a handle unblocks its ReadFrom in the lent socket; the
// PacketConn's other handle then reads the connection.
func TestDirectReadCloseHandle(t *testing.T) {
	m, pc, client, _ := pcPair(t, pcFamilies[0], TCPMuxParams{})
	other, err := m.GetConnByUfrag("pair", false, pcFamilies[0].ip)
	require.NoError(t, err)
	defer other.Close()

	pending := readerInSocket(t, pc, client)
	require.NoError(t, pc.Close())
	r := awaitReadResult(t, pending, time.Second)
	require.ErrorIs(t, r.err, net.ErrClosed)

	_, err = client.Write(frame([]byte("to the other handle")))
	require.NoError(t, err)
	p, _ := readPacket(t, other)
	require.Equal(t, "to the other handle", string(p))
}

// SPEC 4: a short buffer drops the packet read from the lent socket; the
// next one is intact.
func TestDirectReadShortBuffer(t *testing.T) {
	_, pc, client, _ := pcPair(t, pcFamilies[0], TCPMuxParams{})
	short := readerInSocketWith(t, pc, client, 10)
	_, err := client.Write(append(frame(make([]byte, 100)), frame([]byte("next"))...))
	require.NoError(t, err)
	r := awaitReadResult(t, short, time.Second)
	require.ErrorIs(t, r.err, io.ErrShortBuffer)
	require.Zero(t, r.n)
	p, _ := readPacket(t, pc)
	require.Equal(t, "next", string(p))
}

// Several handles reading one single-connection PacketConn share its lent
// socket: every packet reaches exactly one of them, in order per reader.
func TestDirectReadSharedByHandles(t *testing.T) {
	m, pc, client, _ := pcPair(t, pcFamilies[0], TCPMuxParams{})
	other, err := m.GetConnByUfrag("pair", false, pcFamilies[0].ip)
	require.NoError(t, err)
	defer other.Close()

	const packets = 2000
	var mu sync.Mutex
	seen := make(map[int]int)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, h := range []net.PacketConn{pc, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			last := -1
			for {
				_ = h.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				n, _, err := h.ReadFrom(buf)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				var i int
				_, _ = fmt.Sscanf(string(buf[:n]), "%d", &i)
				if i <= last {
					errs <- fmt.Errorf("packet %d after %d", i, last)
					return
				}
				last = i
				mu.Lock()
				seen[i]++
				mu.Unlock()
			}
		}()
	}
	for i := range packets {
		_, err := client.Write(frame(fmt.Appendf(nil, "%d", i)))
		require.NoError(t, err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, seen, packets)
	for i, n := range seen {
		require.Equal(t, 1, n, "packet %d", i)
	}
	require.NotZero(t, queueOf(pc).takes.Load(), "no ReadFrom used the lent socket")
}

// An idle connection gives its socket back after idleBufferLinger: its
// reader waits on the queue, not in the socket, and no buffer is held.
// Traffic brings the loan back.
func TestDirectReadIdleConnectionGivesSocketBack(t *testing.T) {
	_, pc, client, _ := pcPair(t, pcFamilies[0], TCPMuxParams{})
	q := queueOf(pc)
	pending := readerInSocket(t, pc, client)
	takes := q.takes.Load()
	require.Eventually(t, func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.lease == nil && q.direct.Load().idleLender && q.waiting == 1
	}, 3*idleBufferLinger, 10*time.Millisecond, "the idle reader waits on the queue")

	_, err := client.Write(frame([]byte("after a pause")))
	require.NoError(t, err)
	r := awaitReadResult(t, pending, time.Second)
	require.NoError(t, r.err)
	require.Equal(t, len("after a pause"), r.n)
	pending = startReader(pc, MaxFramePayload)
	eventually(t, func() bool { return q.state.Load() == leaseHeld && q.takes.Load() > takes }, "the loan is back")
	_, err = client.Write(frame([]byte("direct again")))
	require.NoError(t, err)
	r = awaitReadResult(t, pending, time.Second)
	require.NoError(t, r.err)
	require.Equal(t, len("direct again"), r.n)
}

// queueWithTwoParkedReaders is a queue whose only connection c may lend
// (idle, so nobody asks it to) and on which readers A and B wait.
func queueWithTwoParkedReaders(t *testing.T) (*packetQueue, *streamConn, []byte) {
	t.Helper()
	q := newPacketQueue(8, 1<<16)
	c := &streamConn{resume: make(chan struct{}, 1), idleLender: true}
	q.direct.Store(c)
	buf := make([]byte, 16)
	for range 2 {
		_, _, _, res, err := q.pop(buf, false, &tcpPacketConn{})
		require.NoError(t, err)
		require.Equal(t, popEmpty, res)
	}
	return q, c, buf
}

// requireReaderBWoken fails unless the second parked reader gets the
// wake-up token.
func requireReaderBWoken(t *testing.T, q *packetQueue) {
	t.Helper()
	select {
	case <-q.readable:
	case <-time.After(time.Second):
		t.Fatal("reader B stays parked while the socket is on offer")
	}
}

// A reader that takes the wake-up token and gives up passes it on while
// the socket is on offer, so another parked reader takes the lease
// (found in review: it used to wait for the sweeper).
func TestQueueReaderGivingUpPassesLease(t *testing.T) {
	q, c, buf := queueWithTwoParkedReaders(t)
	require.True(t, q.offer(c))
	<-q.readable   // A is woken...
	q.cancelRead() // ...and leaves on its deadline
	requireReaderBWoken(t, q)
	_, _, lent, res, err := q.pop(buf, true, &tcpPacketConn{})
	require.NoError(t, err)
	require.Equal(t, popLease, res)
	require.Same(t, c, lent)
}

// A reader that pauses longer than the sweep period between reads gets its
// socket taken back each time; that must not cost allocations (found in
// review: the connection was treated as idle and freed its buffers).
func TestDirectReadPausingReaderAllocatesNothing(t *testing.T) {
	_, pc, client, _ := pcPair(t, pcFamilies[0], TCPMuxParams{})
	f := frame(make([]byte, 200))
	buf := make([]byte, 1500)
	step := func() {
		if _, err := client.Write(f); err != nil {
			panic(err)
		}
		if _, _, err := pc.ReadFrom(buf); err != nil {
			panic(err)
		}
		time.Sleep(3 * leaseSweepPeriod)
	}
	for range 5 {
		step()
	}
	allocs := testing.AllocsPerRun(20, step)
	require.Zero(t, allocs, "allocations per packet with a reader pausing between reads")
}

// SPEC 2: any listener works, TLS included. Timeouts interrupt reads of the
// lent socket, which a tls.Conn survives: traffic goes on intact after
// each.
func TestDirectReadOverTLS(t *testing.T) {
	inner, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	cert := selfSignedCert(t)
	m := newTestMux(t, TCPMuxParams{Listener: tls.NewListener(inner, &tls.Config{Certificates: []tls.Certificate{cert}})})
	pc := getConn(t, m, "tls")
	client, err := tls.Dial("tcp4", inner.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	_, err = client.Write(frame(bindingRequest(t, "tls")))
	require.NoError(t, err)
	_, from := readPacket(t, pc)

	buf := make([]byte, 1500)
	for i := range 100 {
		if i%10 == 5 { // the reader waits in the socket when its deadline passes
			require.NoError(t, pc.SetReadDeadline(time.Now().Add(5*time.Millisecond)))
			_, _, err := pc.ReadFrom(buf)
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
		}
		require.NoError(t, pc.SetReadDeadline(time.Now().Add(5*time.Second)))
		want := fmt.Appendf(nil, "packet %d", i)
		_, err := client.Write(frame(want))
		require.NoError(t, err)
		n, addr, err := pc.ReadFrom(buf)
		require.NoError(t, err)
		require.Equal(t, string(want), string(buf[:n]))
		_, err = pc.WriteTo(buf[:n], addr)
		require.NoError(t, err)
		require.Equal(t, want, readFrame(t, client))
	}
	require.Equal(t, from.String(), client.LocalAddr().String())
	require.NotZero(t, queueOf(pc).takes.Load(), "no ReadFrom used the lent socket")
}

// selfSignedCert is a throwaway certificate for 127.0.0.1.
func selfSignedCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// A reader that pops the last queued packet passes the wake-up token on
// while the socket is on offer: the offer's own wake-up may have merged
// with the packet's (found in review).
func TestQueuePopLastPacketPassesLease(t *testing.T) {
	q, c, buf := queueWithTwoParkedReaders(t)
	ok, err := q.push(c.remote, []byte("x"), false) // the connection queues a packet...
	require.NoError(t, err)
	require.True(t, ok)
	require.True(t, q.offer(c)) // ...then lends; the two wake-ups merge
	<-q.readable                // A is woken
	_, _, _, res, err := q.pop(buf, true, &tcpPacketConn{})
	require.NoError(t, err)
	require.Equal(t, popPacket, res)
	requireReaderBWoken(t, q)
}
