package tcpmux

import (
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"
)

// Tests of the packet queue and of the wake-ups around it: blocked pushers
// (packetQueue.writable) and readers (tcpPacketConn.readable). Each pins
// down a promise that a mutant of the read path broke unnoticed by the rest
// of the suite (docs/mutations.md): such mistakes cost latency, a stray
// wake-up or a reader asleep next to a queued packet, rarely a failed read.

// A pusher that takes the writable token and leaves room in the queue
// passes the token on: the other blocked pusher must not sleep until the
// next pop while its packet fits.
func TestQueuePushPassesWritableToken(t *testing.T) {
	q := newPacketQueue(2, 1<<16)
	for _, p := range []string{"1", "2"} {
		ok, _, _, err := q.push(nil, []byte(p), &trafficCount{}, false)
		require.NoError(t, err)
		require.True(t, ok)
	}
	for _, p := range []string{"a", "b"} { // pushers A and B block
		ok, _, _, err := q.push(nil, []byte(p), &trafficCount{}, false)
		require.NoError(t, err)
		require.False(t, ok, "the queue is full")
	}
	buf := make([]byte, 8)
	for range 2 { // a reader drains the queue: its two wake-ups merge
		_, _, ok, err := q.pop(buf)
		require.NoError(t, err)
		require.True(t, ok)
	}
	select { // A is woken...
	case <-q.writable:
	default:
		t.Fatal("a pop wakes no blocked pusher")
	}
	ok, _, _, err := q.push(nil, []byte("a"), &trafficCount{}, true)
	require.NoError(t, err)
	require.True(t, ok)
	select { // ...and, the queue still having room, wakes B
	case <-q.writable:
	default:
		t.Fatal("pusher B sleeps while its packet fits")
	}
	ok, _, _, err = q.push(nil, []byte("b"), &trafficCount{}, true)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, 2, q.len())
}

// A connection's goroutine blocked on a full queue that gives up (its
// connection closed, as it does when its PacketConn closes) is no longer
// counted as blocked: the next pop must not leave a stale wake-up that
// sends a later pusher round for nothing.
func TestDeliverGivingUpLeavesNoStaleWakeUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pc := &tcpPacketConn{
			queue:    newPacketQueue(1, 1<<16),
			readable: make(chan struct{}, 1),
		}
		c := &streamConn{done: make(chan struct{}), traffic: &trafficStripe{}}
		require.True(t, pc.deliver(c, []byte("fills the queue")))
		gaveUp := make(chan bool)
		go func() { gaveUp <- pc.deliver(c, []byte("blocked")) }()
		synctest.Wait() // the pusher waits on writable
		close(c.done)
		require.False(t, <-gaveUp)

		_, _, ok, err := pc.queue.pop(make([]byte, 64))
		require.NoError(t, err)
		require.True(t, ok)
		select {
		case <-pc.queue.writable:
			t.Fatal("a pop woke a pusher that had left")
		default:
		}
	})
}

// A reader that waited and leaves with a packet passes the wake-up on if
// more are queued: deliver signals only into an empty queue, so two
// packets that arrive before any reader runs bring one wake-up for two
// waiting readers.
func TestReaderLeavingPassesWakeUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pc := &tcpPacketConn{
			queue:    newPacketQueue(8, 1<<16),
			readable: make(chan struct{}, 1),
		}
		pc.loan.readable, pc.loan.queue = pc.readable, pc.queue
		defer func() { // releases a reader left asleep
			pc.queue.close()
			pc.closing.Store(true)
			for range 2 {
				signal(pc.readable)
				synctest.Wait()
			}
		}()
		got := make(chan string, 2)
		for range 2 {
			h := newPacketConnHandle(pc)
			go func() {
				buf := make([]byte, 8)
				n, _, err := h.ReadFrom(buf)
				if err != nil {
					got <- err.Error()
					return
				}
				got <- string(buf[:n])
			}()
		}
		synctest.Wait() // both readers wait
		for _, p := range []string{"one", "two"} {
			ok, _, _, err := pc.queue.push(nil, []byte(p), &trafficCount{}, false)
			require.NoError(t, err)
			require.True(t, ok)
		}
		signal(pc.readable) // deliver's one wake-up, for the first packet
		synctest.Wait()
		var read []string
		for len(got) > 0 {
			read = append(read, <-got)
		}
		require.ElementsMatch(t, []string{"one", "two"}, read, "a reader sleeps while a packet is queued")
	})
}

// boundPipe bounds every Read and Write on a pipe client to a second of a
// synctest bubble's fake time. A mux left looping on its timers (a mutant
// whose lender offers its socket over and over to readers never woken)
// keeps the clock moving, so a pipe blocked forever would hang the test
// instead of failing it.
func boundPipe(t *testing.T, client net.Conn) {
	t.Helper()
	require.NoError(t, client.SetDeadline(time.Now().Add(time.Second)))
}

// unclaimedPipe is a mux over net.Pipe, for a synctest bubble, with one
// connection whose first frame, first, created an unclaimed PacketConn.
func unclaimedPipe(t *testing.T, params TCPMuxParams, first []byte) (*TCPMuxDefault, net.Conn) {
	t.Helper()
	ln := newPipeListener("127.0.0.1:3478")
	params.Listener = ln
	m := newTestMux(t, params)
	client := ln.dial(t, "127.0.0.1:3478", "127.0.0.1:40000")
	boundPipe(t, client)
	writeFrames(t, client, string(first))
	return m, client
}

// Claiming a PacketConn lifts its queue's byte bound: a connection blocked
// on the unclaimed bound queues its packet at once, before anyone reads.
func TestClaimWakesBlockedPusher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, client := unclaimedPipe(t, TCPMuxParams{}, bindingRequest(t, "pipe"))
		const size = 6000 // the third does not fit in UnclaimedQueueBytes
		big := string(make([]byte, size))
		writeFrames(t, client, big, big, big)
		synctest.Wait()
		require.Equal(t, uint64(3), m.Stats().PacketsReceived, "the unclaimed bound holds the third packet back")

		pc := getConn(t, m, "pipe")
		synctest.Wait()
		require.Equal(t, uint64(4), m.Stats().PacketsReceived, "the claim leaves the packet waiting for a read")
		for range 4 {
			readPacket(t, pc)
		}
	})
}

// An empty queue takes one packet whatever its size: a first frame larger
// than the unclaimed bound (MaxFirstFrameSize allows up to 64 KiB) is
// queued and counted at once, not held until a claim.
func TestUnclaimedQueueTakesLargeFirstFrame(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		first := bindingRequestWith(t,
			stun.NewUsername("pipe:peer"),
			stun.RawAttribute{Type: 0x8050, Value: make([]byte, 2*UnclaimedQueueBytes)}, // comprehension-optional
			stun.Fingerprint)
		m, _ := unclaimedPipe(t, TCPMuxParams{MaxFirstFrameSize: MaxFramePayload}, first)
		synctest.Wait()
		require.Equal(t, uint64(1), m.Stats().PacketsReceived, "the first frame is not queued")
		pc := getConn(t, m, "pipe")
		p, _ := readPacket(t, pc)
		require.Equal(t, first, p)
	})
}

// A queue whose connection went quiet while packets were queued drops its
// tables when a reader empties it: a session whose peer sent only its
// first request, read later, holds no queue.
func TestQueueEmptiedAfterQuietReleasesTables(t *testing.T) {
	q := newPacketQueue(8, 1<<16)
	ok, _, _, err := q.push(nil, []byte("first request"), &trafficCount{}, false)
	require.NoError(t, err)
	require.True(t, ok)
	q.releaseIfEmpty() // the connection goes quiet with the packet queued
	require.NotNil(t, q.data, "a queued packet's bytes were dropped")
	n, _, ok, err := q.pop(make([]byte, 64))
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, len("first request"), n)
	require.Nil(t, q.data, "the emptied queue keeps its byte buffer")
	require.Nil(t, q.entries, "the emptied queue keeps its packet table")

	ok, _, _, err = q.push(nil, []byte("traffic again"), &trafficCount{}, false)
	require.NoError(t, err)
	require.True(t, ok)
	_, _, ok, err = q.pop(make([]byte, 64))
	require.NoError(t, err)
	require.True(t, ok)
	require.NotNil(t, q.data, "a busy queue gave its buffer up: it would reallocate per packet")
}

// SPEC 4: closing a PacketConn ends every ReadFrom waiting on it, however
// many: its one wake-up is passed from reader to reader.
func TestPacketConnCloseWakesEveryWaitingReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ln := newPipeListener("127.0.0.1:3478")
		m := newTestMux(t, TCPMuxParams{Listener: ln})
		const readers = 3
		results := make(chan error, readers)
		var first net.PacketConn
		for i := range readers {
			pc := getConn(t, m, "many")
			if i == 0 {
				first = pc
			}
			go func() {
				_, _, err := pc.ReadFrom(make([]byte, 64))
				results <- err
			}()
		}
		synctest.Wait()
		_, _, waiting := loanOf(first).inspect()
		require.Equal(t, readers, waiting, "the readers wait")
		m.RemoveConnByUfrag("many")
		synctest.Wait()
		require.Len(t, results, readers, "a ReadFrom still waits on a closed PacketConn")
		for range readers {
			require.ErrorIs(t, <-results, net.ErrClosed)
		}
	})
}
