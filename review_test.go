package tcpmux

import (
	"net"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/require"
)

// Found in review of the socket loan (d5c4f22). Each test drives one interleaving
// of the real functions that ReadFrom (readOrWait) and a connection's
// goroutine (readLoop) call, in an order the scheduler may produce, and
// checks a promise that the interleaving breaks.

// loanConn is a connection that can take part in a loan: a socket whose
// read deadline can be interrupted and a resume channel.
func loanConn(t *testing.T) *streamConn {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return &streamConn{conn: a, resume: make(chan struct{}, 1)}
}

// The usual reconnect: a peer opens a new TCP connection (joined) to a
// PacketConn whose only connection (old) a reader A is reading on loan,
// then closes the old one. A's Read sees EOF, old.fail removes old, and
// joined becomes the only connection (setMayLend(joined)) while A is still
// in readDirect. joined's goroutine, with a reader B waiting, offers its
// socket: offer does not look at the loan's state, so it replaces A's loan
// (state offered, lent joined) and B takes joined's socket. Then A gives
// old back with errLoanEnded: giveBack does not check that old is still
// the lent socket, ends "the loan" (endLocked) and sends joined's goroutine
// its resume token. Now joined's goroutine and B both read joined's socket
// and its FrameReader (a data race: corrupted or lost frames), and the
// loan says lenderReads with no holder, so B's own giveBack then puts the
// loan in state offered with lent == nil. Now offer waits until no socket
// is on loan.
func TestReviewStaleGiveBackResumesLenderUnderHolder(t *testing.T) {
	pc := &tcpPacketConn{queue: newPacketQueue(8, 1<<16), readable: make(chan struct{}, 1)}
	pc.loan.readable, pc.loan.queue = pc.readable, pc.queue
	l := &pc.loan
	old, joined := loanConn(t), loanConn(t)
	hA, hB := &packetConnHandle{}, &packetConnHandle{}

	l.setMayLend(old) // old is the PacketConn's only connection
	require.Nil(t, takeNoRetry(t, l, hA))
	require.Nil(t, takeNoRetry(t, l, hB)) // A and B wait
	require.True(t, l.offer(old))
	<-pc.readable
	l.stopWaiting()
	require.Same(t, old, takeNoRetry(t, l, hA), "A reads old's socket")

	l.setMayLend(nil)    // joined attaches: A's Read is interrupted...
	l.setMayLend(joined) // ...and sees EOF: old.fail -> removeConn, joined is alone

	// Before A is back from readDirect, joined's goroutine has data but no
	// whole frame, and B waits: it must not offer its socket while A still
	// holds old's.
	require.False(t, l.offer(joined), "a second socket lent while the first is held")

	l.giveBack(old, true) // A: readDirect returned errLoanEnded for old
	select {
	case <-old.resume: // old's goroutine reads on (and sees its end)
	default:
		t.Fatal("old's goroutine was not given its socket back")
	}
	select {
	case <-joined.resume:
		t.Fatal("joined's goroutine was told to resume a loan it never made")
	default:
	}

	// joined's goroutine tries again: now B gets its socket, and nobody else.
	require.True(t, l.offer(joined))
	<-pc.readable
	l.stopWaiting()
	require.Same(t, joined, takeNoRetry(t, l, hB))
	l.mu.Lock()
	state, holder, lent := l.state, l.holder, l.lent
	l.mu.Unlock()
	require.Equal(t, held, state)
	require.Same(t, hB, holder)
	require.Same(t, joined, lent)
}

// SPEC 4: packets of one connection arrive in order. readOrWait pops the
// queue, then, in a separate critical section, takes the socket on offer.
// Between the two, the connection's goroutine may queue a packet and then
// offer its socket (it offers when it has no whole frame and some reader
// waits, whatever the queue holds). A reader that found the queue empty
// then reads the next packet from the socket, ahead of the queued one:
//
//	A: queue.pop -> empty
//	B (another handle) waits: loan.waiting = 1
//	c: reads "one", deliver -> queue ["one"]; no whole frame, a reader
//	   waits -> offer
//	A: loan.takeOrWait -> c's socket; readDirect -> "two"
//	B: leaves (deadline, Close) without popping
//	A: next ReadFrom pops "one"
//
// The old design popped and took the lease under one lock (the queue's);
// now takeOrWait declines while packets are queued.
func TestReviewDirectReadOvertakesQueuedPacket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pcA, client, _ := pipePair(t)
		p := pcA.(*packetConnHandle).pc
		hA, hB := pcA.(*packetConnHandle), &packetConnHandle{}
		buf := make([]byte, 1500)
		var got []string

		// A's ReadFrom: the queue is empty.
		_, _, ok, err := p.queue.pop(buf)
		require.NoError(t, err)
		require.False(t, ok)
		// Meanwhile B, a reader of another handle, starts to wait.
		require.Nil(t, takeNoRetry(t, &p.loan, hB))

		writeFrames(t, client, "one")
		synctest.Wait() // c queued "one", and offered its socket if it would
		require.Equal(t, 1, p.queue.len(), `"one" is queued`)

		sent := make(chan error, 1)
		go func() {
			_, err := client.Write(frame([]byte("two")))
			sent <- err
		}()

		// A goes on, as readOrWait does.
		if lent, retry := p.loan.takeOrWait(hA); lent != nil {
			n, err := lent.readDirect(hA, buf)
			p.loan.giveBack(lent, err == errLoanIdle || err == errLoanEnded)
			require.NoError(t, err)
			got = append(got, string(buf[:n]))
		} else if !retry {
			p.loan.stopWaiting() // A waits, and is woken by "one"'s token
		}

		p.loan.stopWaiting() // B leaves on its deadline without popping
		p.passReadable()

		for len(got) < 2 {
			n, _, err := pcA.ReadFrom(buf)
			require.NoError(t, err)
			got = append(got, string(buf[:n]))
		}
		require.NoError(t, <-sent)
		require.Equal(t, []string{"one", "two"}, got, "packets of one connection out of order")
	})
}
