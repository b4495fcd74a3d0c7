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
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

// Tests of the direct read path (socket_loan.go): a PacketConn with one
// connection lends that connection's socket to its readers. Each test puts
// a reader in the lent socket first, then checks that a SPEC promise
// still holds.

func loanOf(pc net.PacketConn) *socketLoan { return &pc.(*packetConnHandle).pc.loan }

// takeNoRetry is takeOrWait for a test whose queue is empty.
func takeNoRetry(t *testing.T, l *socketLoan, h *packetConnHandle) *streamConn {
	t.Helper()
	c, retry := l.takeOrWait(h)
	require.False(t, retry, "packets queued")
	return c
}

// inspect reads the loan's state under its lock.
func (l *socketLoan) inspect() (state loanState, uses uint64, waiting int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state, l.uses, l.waiting
}

func (l *socketLoan) inState(want loanState) bool {
	state, _, _ := l.inspect()
	return state == want
}

func (l *socketLoan) useCount() uint64 {
	_, uses, _ := l.inspect()
	return uses
}

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
	l := loanOf(pc)
	eventually(t, func() bool { return l.inState(held) }, "the reader holds the socket")
	return ch
}

func TestDirectReadCarriesTheSession(t *testing.T) {
	for _, fam := range pcFamilies {
		t.Run(fam.name, func(t *testing.T) {
			m, pc, client, from := pcPair(t, fam, TCPMuxParams{})
			l := loanOf(pc)
			const packets = 200
			for i := range packets {
				want := fmt.Sprintf("packet %d", i)
				_, err := client.Write(frame([]byte(want)))
				require.NoError(t, err)
				got, addr := readPacket(t, pc)
				require.Equal(t, want, string(got))
				require.Equal(t, from.String(), addr.String())
			}
			require.Greater(t, l.useCount(), uint64(packets), "ReadFrom did not use the lent socket")
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
	require.Greater(t, loanOf(pc).useCount(), uint64(packets), "ReadFrom did not use the lent socket")
}

// An idle connection gives its socket back after idleBufferLinger: its
// reader waits, not in the socket, and no buffer is held. Traffic brings
// the loan back. Over net.Pipe in a synctest bubble: the linger passes in
// no real time.
func TestDirectReadIdleConnectionGivesSocketBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pc, client, c := pipePair(t)
		l := loanOf(pc)
		pending := startReader(pc, 1500)
		synctest.Wait()
		require.False(t, l.inState(held), "a connection waiting for data lends nothing")
		writeFrames(t, client, "warm-up")
		require.NoError(t, (<-pending).err)
		pending = startReader(pc, 1500)
		synctest.Wait()
		require.True(t, l.inState(held), "the reader holds the socket")

		time.Sleep(2*idleBufferLinger + time.Millisecond) // one check saw the warm-up, the next sees nothing
		synctest.Wait()
		state, uses, waiting := l.inspect()
		require.Equal(t, lenderReads, state, "the idle socket went back to its connection")
		require.Equal(t, 1, waiting, "the reader waits, not in the socket")
		require.True(t, c.fr.parked, "the idle connection holds no read buffer")

		writeFrames(t, client, "after a pause")
		r := <-pending
		require.NoError(t, r.err)
		require.Equal(t, len("after a pause"), r.n)
		pending = startReader(pc, 1500)
		synctest.Wait()
		state, newUses, _ := l.inspect()
		require.Equal(t, held, state, "the loan is back")
		require.Greater(t, newUses, uses)
		writeFrames(t, client, "direct again")
		r = <-pending
		require.NoError(t, r.err)
		require.Equal(t, len("direct again"), r.n)
	})
}

// loanUnderTest is a PacketConn's queue and loan with no mux: connection c
// may lend, and readers A and B wait.
func loanUnderTest(t *testing.T) (*tcpPacketConn, *streamConn) {
	t.Helper()
	pc := &tcpPacketConn{queue: newPacketQueue(8, 1<<16), readable: make(chan struct{}, 1)}
	pc.loan.readable, pc.loan.queue = pc.readable, pc.queue
	c := &streamConn{resume: make(chan struct{}, 1)}
	pc.loan.setMayLend(c)
	for _, h := range []*packetConnHandle{{}, {}} {
		require.Nil(t, takeNoRetry(t, &pc.loan, h), "nothing on offer yet")
	}
	return pc, c
}

// requireReaderWoken fails unless a waiting reader gets the wake-up token.
func requireReaderWoken(t *testing.T, pc *tcpPacketConn, why string) {
	t.Helper()
	select {
	case <-pc.readable:
	default:
		t.Fatal(why)
	}
}

// A reader that takes the wake-up token and gives up passes it on while
// the socket is on offer, so the other waiting reader takes it.
func TestLoanReaderGivingUpPassesToken(t *testing.T) {
	pc, c := loanUnderTest(t)
	require.True(t, pc.loan.offer(c))
	requireReaderWoken(t, pc, "an offer wakes no reader") // A is woken...
	pc.loan.stopWaiting()
	pc.passReadable() // ...and leaves on its deadline
	requireReaderWoken(t, pc, "reader B stays asleep while the socket is on offer")
	pc.loan.stopWaiting()
	require.Same(t, c, takeNoRetry(t, &pc.loan, &packetConnHandle{}))
}

// A reader that pops the last queued packet passes the wake-up token on
// while the socket is on offer: the offer's wake-up may have merged with
// the packet's.
func TestLoanPopLastPacketPassesToken(t *testing.T) {
	pc, c := loanUnderTest(t)
	ok, wasEmpty, _, err := pc.queue.push(&net.TCPAddr{}, []byte("x"), &trafficCount{}, false)
	require.NoError(t, err)
	require.True(t, ok)
	require.True(t, wasEmpty)
	signal(pc.readable)
	require.True(t, pc.loan.offer(c)) // the two wake-ups merge
	requireReaderWoken(t, pc, "no reader woken")
	pc.loan.stopWaiting()
	buf := make([]byte, 8)
	_, _, ok, err = pc.queue.pop(buf)
	require.NoError(t, err)
	require.True(t, ok)
	pc.passReadable() // A leaves with the packet
	requireReaderWoken(t, pc, "reader B stays asleep while the socket is on offer")
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
		time.Sleep(3 * loanSweepPeriod)
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
	require.Greater(t, loanOf(pc).useCount(), uint64(100), "ReadFrom did not use the lent socket")
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

// pipePair is a mux over net.Pipe connections, usable in a synctest
// bubble, with a claimed PacketConn of ufrag "pipe" and one connection:
// the client's end, and the mux's side of it.
func pipePair(t *testing.T) (net.PacketConn, net.Conn, *streamConn) {
	t.Helper()
	ln := newPipeListener("127.0.0.1:3478")
	m := newTestMux(t, TCPMuxParams{Listener: ln})
	pc := getConn(t, m, "pipe")
	client := ln.dial(t, "127.0.0.1:3478", "127.0.0.1:40000")
	writeFrames(t, client, string(bindingRequest(t, "pipe")))
	readPacket(t, pc)
	h := pc.(*packetConnHandle)
	c := h.pc.lookup(mustAddrPort("127.0.0.1:40000"))
	require.NotNil(t, c)
	return pc, client, c
}

// wrappedPipePair is pipePair with the mux's side of the connection
// wrapped by wrap: a faulty wrapper under test.
func wrappedPipePair(t *testing.T, wrap func(net.Conn) net.Conn) (*TCPMuxDefault, net.PacketConn, net.Conn) {
	t.Helper()
	_, pc, client := pipeMuxWith(t, wrap)
	boundPipe(t, client)
	writeFrames(t, client, string(bindingRequest(t, "pipe")))
	readPacket(t, pc)
	return pc.(*packetConnHandle).pc.mux, pc, client
}

// pipeMuxWith is a mux over net.Pipe with a claimed PacketConn of ufrag
// "pipe" and one connection from 127.0.0.1:40000, whose mux side is
// wrap(the pipe's end). It returns the client's end before any frame.
func pipeMuxWith(t *testing.T, wrap func(net.Conn) net.Conn) (*pipeListener, net.PacketConn, net.Conn) {
	t.Helper()
	ln := newPipeListener("127.0.0.1:3478")
	m := newTestMux(t, TCPMuxParams{Listener: ln})
	pc := getConn(t, m, "pipe")
	client, server := net.Pipe()
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	ln.conns <- &addrConn{
		Conn:   wrap(server),
		local:  net.TCPAddrFromAddrPort(mustAddrPort("127.0.0.1:3478")),
		remote: net.TCPAddrFromAddrPort(mustAddrPort("127.0.0.1:40000")),
	}
	return ln, pc, client
}

// writeFrames writes each payload as one frame.
func writeFrames(t *testing.T, conn net.Conn, payloads ...string) {
	t.Helper()
	for _, p := range payloads {
		_, err := conn.Write(frame([]byte(p)))
		require.NoError(t, err)
	}
}
