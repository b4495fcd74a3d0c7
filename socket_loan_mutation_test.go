package tcpmux

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

// More tests of the socket loan and of reading a lent socket, each pinning
// down a promise that a mutant of the read path broke unnoticed by the rest
// of the suite (docs/mutations.md).

// Every move of the socket to offered wakes a waiting reader, also when a
// reader that did not wait (and so passes no token on when it leaves) gives
// it back.
func TestLoanGiveBackWakesWaitingReader(t *testing.T) {
	pc, c := loanUnderTest(t) // readers A and B wait
	require.True(t, pc.loan.offer(c))
	requireReaderWoken(t, pc, "an offer wakes no reader") // A is woken...
	pc.loan.stopWaiting()
	require.Same(t, c, takeNoRetry(t, &pc.loan, &packetConnHandle{})) // ...but C, just arrived, takes the socket
	require.Nil(t, takeNoRetry(t, &pc.loan, &packetConnHandle{}), "A waits again")
	pc.loan.giveBack(c, false) // C has its frame and leaves without waiting
	requireReaderWoken(t, pc, "readers A and B sleep while the socket is on offer")
}

// A connection that loses the right to lend (a second connection joined,
// or the PacketConn is closing) gets its socket back at once if it is on
// offer, not a sweep period later.
func TestLoanLostRightEndsOfferAtOnce(t *testing.T) {
	for _, next := range []string{"none", "another connection"} {
		t.Run(next, func(t *testing.T) {
			pc, c := loanUnderTest(t)
			require.True(t, pc.loan.offer(c))
			var other *streamConn
			if next != "none" {
				other = &streamConn{resume: make(chan struct{}, 1)}
			}
			pc.loan.setMayLend(other)
			require.True(t, pc.loan.inState(lenderReads), "the socket stays on offer")
			select {
			case <-c.resume:
			default:
				t.Fatal("the lender stays parked")
			}
			require.Nil(t, takeNoRetry(t, &pc.loan, &packetConnHandle{}), "a reader takes a socket that may not be lent")
		})
	}
}

// armRead refuses a read whose deadline has passed even before the
// deadline's timer fired: otherwise it sets a passed deadline on the socket
// and the holder spins on timeouts until the timer goroutine runs.
func TestLoanArmReadRefusesPassedDeadline(t *testing.T) {
	pc, c := loanUnderTest(t)
	server, client := net.Pipe()
	t.Cleanup(func() { _ = server.Close(); _ = client.Close() })
	c.conn = server
	c.idleAt = time.Now().Add(idleBufferLinger)
	h := &packetConnHandle{pc: pc}
	h.readDeadline.at = time.Now().Add(-time.Millisecond) // passed; no timer has fired
	require.False(t, h.readDeadline.exceeded())
	require.ErrorIs(t, pc.loan.armRead(c, h, false), os.ErrDeadlineExceeded)
	h.readDeadline.at = time.Now().Add(time.Hour)
	require.NoError(t, pc.loan.armRead(c, h, false))
}

// readerInPipeSocket, in a synctest bubble, starts a ReadFrom on pc that
// holds the lent socket of pc's only connection, client's. The connection
// lends only to a reader that waits when it has delivered a packet, so two
// readers wait for a warm-up packet: one returns it, the other still waits
// when the connection offers its socket, and takes it.
func readerInPipeSocket(t *testing.T, pc net.PacketConn, client net.Conn) <-chan pcReadResult {
	t.Helper()
	first, second := startReader(pc, 1500), startReader(pc, 1500)
	synctest.Wait()
	writeFrames(t, client, "warm-up")
	synctest.Wait()
	pending := second
	var r pcReadResult
	select {
	case r = <-first:
	case r = <-second:
		pending = first
	default:
		t.Fatal("no reader got the warm-up packet")
	}
	require.NoError(t, r.err)
	require.Equal(t, len("warm-up"), r.n)
	require.True(t, loanOf(pc).inState(held), "the reader holds the socket")
	return pending
}

// The sweeper takes back only a socket left on offer: a reader waiting in
// the socket for many sweep periods keeps it (the connection's goroutine
// must not read it at the same time).
func TestSweeperLeavesHeldSocket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pc, client, _ := pipePair(t)
		boundPipe(t, client)
		l := loanOf(pc)
		require.NoError(t, pc.SetReadDeadline(time.Time{}))
		pending := readerInPipeSocket(t, pc, client)

		time.Sleep(5 * loanSweepPeriod)
		synctest.Wait()
		require.True(t, l.inState(held), "the sweeper took a socket a reader is in")

		writeFrames(t, client, "direct")
		r := awaitReadResult(t, pending, time.Second)
		require.NoError(t, r.err)
		require.Equal(t, len("direct"), r.n)
	})
}

// breakOnceConn fails one Read, after which the stream reads on: a
// wrapper's transient error, which a plain socket never gives twice.
type breakOnceConn struct {
	net.Conn
	armed atomic.Bool
}

func (c *breakOnceConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.armed.CompareAndSwap(true, false) {
		return 0, errors.New("stream broken")
	}
	return n, err
}

// A read error other than a timeout ends the connection whoever reads the
// socket: a reader holding it on loan removes and closes the connection as
// its own goroutine would, rather than handing a broken stream back.
func TestDirectReadErrorEndsConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var breaking *breakOnceConn
		m, pc, client := wrappedPipePair(t, func(server net.Conn) net.Conn {
			breaking = &breakOnceConn{Conn: server}
			return breaking
		})
		require.NoError(t, pc.SetReadDeadline(time.Time{}))
		pending := readerInPipeSocket(t, pc, client)

		breaking.armed.Store(true)
		writeFrames(t, client, "lost with the stream")
		synctest.Wait()
		require.Zero(t, pc.(*packetConnHandle).pc.connCount(), "the broken connection is still attached")
		require.Zero(t, m.Stats().ConnsActive)
		_, err := client.Read(make([]byte, 1))
		require.ErrorIs(t, err, io.EOF, "the broken connection is not closed")

		require.NoError(t, pc.Close())
		require.ErrorIs(t, awaitReadResult(t, pending, time.Second).err, net.ErrClosed)
	})
}

// A reader that finds the lent connection idle (parked: it gave its buffer
// up) gives the socket back to the connection's goroutine, which alone
// waits for data without a buffer, and waits like any reader. Were the
// socket left on offer, the reader would take it again and spin. Real
// time: that spin would stop a synctest bubble's clock.
func TestIdleSocketGoesBackToItsConnection(t *testing.T) {
	pc, c := loanUnderTest(t)
	c.pc = pc
	c.fr = NewFrameReader(nil, MaxFramePayload) // parked, as after an idle check
	require.True(t, pc.loan.offer(c))
	requireReaderWoken(t, pc, "an offer wakes no reader")
	pc.loan.stopWaiting() // readers A and B leave
	pc.loan.stopWaiting()

	h := newPacketConnHandle(pc)
	result, finished := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(finished)
		_, _, _, err, _ := h.readOrWait(make([]byte, 64))
		result <- err
	}()
	t.Cleanup(func() { // releases the reader, spinning or not
		if h.closed.CompareAndSwap(false, true) {
			h.readDeadline.shut()
		}
		<-finished
	})
	eventually(t, func() bool {
		state, _, waiting := pc.loan.inspect()
		return state == lenderReads && waiting == 1
	}, "the idle socket stays with the reader instead of going back to its connection")
	select {
	case <-c.resume:
	default:
		t.Fatal("the connection's goroutine is not resumed")
	}
	require.True(t, h.closed.CompareAndSwap(false, true))
	h.readDeadline.shut()
	require.ErrorIs(t, <-result, ErrConnClosed)
}

// The idle check of a reader holding the socket parks a connection that
// read nothing for a whole period, and only such a connection.
func TestDirectIdleCheckParksIdleConnection(t *testing.T) {
	c := &streamConn{fr: NewFrameReader(bytes.NewReader(frame([]byte("x"))), MaxFramePayload)}
	_, err := c.fr.Next()
	require.NoError(t, err)
	require.False(t, c.fr.parked)

	c.scheduleIdleCheck(time.Now().Add(-idleBufferLinger / 2)) // not due yet
	c.directIdleCheck()
	require.False(t, c.fr.parked, "parked before the check was due")

	c.scheduleIdleCheck(time.Now().Add(-idleBufferLinger)) // due, nothing read since
	c.directIdleCheck()
	require.True(t, c.fr.parked, "an idle connection keeps its read buffer")
}

// A connection lends its socket only with no whole frame buffered: frames
// that one Read brought in together are queued and counted first, not
// left in a lent buffer that the waiting reader may never come to take
// (they would then wait for the sweeper).
func TestLenderQueuesBufferedFramesBeforeLending(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pc, client, _ := pipePair(t)
		boundPipe(t, client)
		m := pc.(*packetConnHandle).pc.mux
		l := loanOf(pc)
		writeFrames(t, client, "warm-up") // the connection reads with a buffer now
		synctest.Wait()                   // ...and, nobody waiting, lends nothing
		p, _ := readPacket(t, pc)
		require.Equal(t, "warm-up", string(p))
		require.True(t, l.inState(lenderReads))
		before := m.Stats().PacketsReceived

		require.Nil(t, takeNoRetry(t, l, &packetConnHandle{}), "nothing on offer")    // a reader waits
		_, err := client.Write(append(frame([]byte("one")), frame([]byte("two"))...)) // one Read
		require.NoError(t, err)
		synctest.Wait()
		require.True(t, l.inState(offered), "the connection lends its socket to the waiting reader")
		require.Equal(t, before+2, m.Stats().PacketsReceived, "a frame already read waits in the lent buffer")
	})
}

// A PacketConn with two connections lends neither socket: a reader in one
// would miss the other's packets. Three readers wait for two packets, one
// on each connection, so that a reader still waits whenever a connection
// could offer.
func TestTwoConnectionsLendNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ln := newPipeListener("127.0.0.1:3478")
		m := newTestMux(t, TCPMuxParams{Listener: ln})
		pc := getConn(t, m, "pipe")
		var clients []net.Conn
		for _, remote := range []string{"127.0.0.1:40000", "127.0.0.1:40001"} {
			client := ln.dial(t, "127.0.0.1:3478", remote)
			boundPipe(t, client)
			writeFrames(t, client, string(bindingRequest(t, "pipe")))
			readPacket(t, pc)
			clients = append(clients, client)
		}
		require.NoError(t, pc.SetReadDeadline(time.Time{}))
		l := loanOf(pc)
		uses := l.useCount()

		var readers []<-chan pcReadResult
		for range 3 {
			readers = append(readers, startReader(pc, 1500))
		}
		synctest.Wait()
		writeFrames(t, clients[0], "first")
		writeFrames(t, clients[1], "second")
		synctest.Wait()
		require.Equal(t, uses, l.useCount(), "a connection of two lent its socket")
		require.True(t, l.inState(lenderReads))
		got := map[string]bool{}
		for _, r := range readers {
			select {
			case res := <-r:
				require.NoError(t, res.err)
				got[res.addr.String()] = true
			default:
			}
		}
		require.Equal(t, map[string]bool{"127.0.0.1:40000": true, "127.0.0.1:40001": true}, got)
	})
}
