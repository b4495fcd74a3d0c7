package tcpmux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// SPEC 1: every rule of the first frame, each with its counter, and no
// per-ufrag state for a rejected connection.
func TestFirstFrameRejected(t *testing.T) {
	withoutFingerprint := func(t testing.TB) []byte {
		return bindingRequestWith(t, stun.NewUsername("srv:peer"))
	}
	cases := []struct {
		name   string
		first  func(t testing.TB) []byte
		reason func(RejectedStats) uint64
	}{
		{"garbage", func(testing.TB) []byte { return []byte("hello, world") }, notSTUN},
		{"empty frame", func(testing.TB) []byte { return []byte{} }, notSTUN},
		{"binding success response", func(t testing.TB) []byte {
			msg, err := stun.Build(stun.BindingSuccess, stun.TransactionID, stun.NewUsername("srv:peer"))
			require.NoError(t, err)
			return msg.Raw
		}, notSTUN},
		{"binding indication", func(t testing.TB) []byte {
			msg, err := stun.Build(stun.NewType(stun.MethodBinding, stun.ClassIndication), stun.TransactionID, stun.NewUsername("srv:peer"))
			require.NoError(t, err)
			return msg.Raw
		}, notSTUN},
		{"bad magic cookie", func(t testing.TB) []byte {
			b := withoutFingerprint(t)
			b[4] ^= 0xff
			return b
		}, notSTUN},
		{"trailing byte", func(t testing.TB) []byte { return append(withoutFingerprint(t), 0) }, notSTUN},
		{"length over frame", func(t testing.TB) []byte {
			b := withoutFingerprint(t)
			binary.BigEndian.PutUint16(b[2:], uint16(len(b)-stunHeaderSize+4))
			return b
		}, notSTUN},
		{"bad fingerprint", func(t testing.TB) []byte {
			b := bindingRequest(t, "srv")
			b[len(b)-1] ^= 1
			return b
		}, notSTUN},
		{"no username", func(t testing.TB) []byte { return bindingRequestWith(t, stun.Fingerprint) }, username},
		{"empty ufrag", func(t testing.TB) []byte { return bindingRequestWith(t, stun.NewUsername(":peer")) }, username},
		{"empty username", func(t testing.TB) []byte {
			return bindingRequestWith(t, stun.RawAttribute{Type: stun.AttrUsername})
		}, username},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMux(t, TCPMuxParams{})
			client := dial(t, m, tc.first(t))
			waitClosedByPeer(t, client, time.Second)
			eventually(t, func() bool { return tc.reason(m.Stats().Rejected) == 1 }, "rejection counted under its reason")
			s := m.Stats()
			require.Equal(t, uint64(1), s.ConnsRejected)
			require.Zero(t, s.PacketConns, "no per-ufrag state for a rejected connection")
			require.Zero(t, s.ConnsActive)
			require.Zero(t, s.PacketsReceived)
		})
	}
}

func notSTUN(r RejectedStats) uint64  { return r.NotSTUN }
func username(r RejectedStats) uint64 { return r.Username }

// SPEC 1: an oversized first frame is rejected from its header alone.
func TestFirstFrameTooLargeRejectedAtHeader(t *testing.T) {
	for _, size := range []int{DefaultMaxFirstFrameSize + 1, MaxFramePayload} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			m := newTestMux(t, TCPMuxParams{})
			client := dial(t, m, nil)
			var hdr [2]byte
			binary.BigEndian.PutUint16(hdr[:], uint16(size))
			_, err := client.Write(hdr[:])
			require.NoError(t, err)
			waitClosedByPeer(t, client, time.Second)
			eventually(t, func() bool { return m.Stats().Rejected.TooLarge == 1 }, "counted as TooLarge")
		})
	}
}

// paddedRequest is a valid Binding request of exactly size bytes, padded
// with a comprehension-optional attribute.
func paddedRequest(t testing.TB, ufrag string, size int) []byte {
	t.Helper()
	base := bindingRequestWith(t, stun.NewUsername(ufrag+":peer"))
	pad := size - len(base) - stunAttrHeaderSize
	require.GreaterOrEqual(t, pad, 0)
	require.Zero(t, pad%4)
	return bindingRequestWith(t, stun.NewUsername(ufrag+":peer"), stun.RawAttribute{Type: 0x8022, Value: make([]byte, pad)})
}

// SPEC 1: the documented bound admits legal requests up to it, including a
// 256-character ufrag.
func TestFirstFrameLegalSizes(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	long := strings.Repeat("u", 256)
	for _, first := range [][]byte{bindingRequest(t, long), paddedRequest(t, "max", DefaultMaxFirstFrameSize)} {
		ufrag, reason := parseBindingRequest(first)
		require.Equal(t, rejectNone, reason)
		pc := getConn(t, m, string(ufrag))
		dial(t, m, first)
		got, _ := readPacket(t, pc)
		require.Equal(t, first, got)
	}
	require.Zero(t, m.Stats().ConnsRejected)
}

// SPEC 1: silence, a partial header and a slow trickle are all cut at the
// first-frame deadline, counted from accept.
func TestFirstFrameDeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	m := newTestMux(t, TCPMuxParams{FirstStunBindTimeout: timeout})
	req := frame(bindingRequest(t, "srv"))

	silent := dial(t, m, nil)
	partial := dial(t, m, nil)
	_, err := partial.Write(req[:1])
	require.NoError(t, err)
	trickle := dial(t, m, nil)
	start := time.Now()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // one byte every 40 ms: the frame cannot complete in time
		tick := time.NewTicker(40 * time.Millisecond)
		defer tick.Stop()
		for _, b := range req {
			select {
			case <-tick.C:
			case <-stop:
				return
			}
			if _, err := trickle.Write([]byte{b}); err != nil {
				return
			}
		}
	}()

	for _, conn := range []net.Conn{silent, partial, trickle} {
		waitClosedByPeer(t, conn, timeout+time.Second)
	}
	require.GreaterOrEqual(t, time.Since(start), timeout-50*time.Millisecond, "closed at the deadline, not before")
	eventually(t, func() bool { return m.Stats().Rejected.Timeout == 3 }, "three timeouts counted")
	require.Zero(t, m.Stats().PacketConns)
}

// SPEC 1 and 3: the first frame is delivered like any other packet,
// followed by every later one in order, zero-length frames included.
func TestFramesAfterFirstInOrder(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	pc := getConn(t, m, "srv")
	client := dialUfrag(t, m, "srv")
	var burst []byte
	for i := range 100 {
		burst = append(burst, frame(make([]byte, i%3))...) // 0, 1, 2 bytes
	}
	_, err := client.Write(burst)
	require.NoError(t, err)
	readPacket(t, pc) // the Binding request
	for i := range 100 {
		got, _ := readPacket(t, pc)
		require.Len(t, got, i%3)
	}
	s := m.Stats()
	require.Equal(t, uint64(101), s.PacketsReceived)
}

// SPEC 3: PacketConns are keyed by ufrag, remote family and local IP;
// IPv4-mapped addresses count as IPv4.
func TestRoutingByFamilyAndLocalIP(t *testing.T) {
	ln := newPipeListener("10.0.0.100:443")
	m := newTestMux(t, TCPMuxParams{Listener: ln})
	type route struct {
		local, remote string
		ipv6          bool
		localIP       string
	}
	routes := []route{
		{"10.0.0.100:443", "192.0.2.1:1000", false, "10.0.0.100"},
		{"10.0.0.200:443", "192.0.2.2:1000", false, "10.0.0.200"},
		{"[2001:db8::100]:443", "[2001:db8::1]:1000", true, "2001:db8::100"},
	}
	handles := make([]net.PacketConn, len(routes))
	for i, r := range routes {
		pc, err := m.GetConnByUfrag("srv", r.ipv6, net.ParseIP(r.localIP))
		require.NoError(t, err)
		t.Cleanup(func() { _ = pc.Close() })
		handles[i] = pc
		ln.dial(t, r.local, r.remote)
	}
	// A mapped remote on a dual-stack socket joins the IPv4 PacketConn.
	mapped := ln.dial(t, "[::ffff:10.0.0.100]:443", "[::ffff:192.0.2.9]:1000")

	for i, r := range routes {
		client := ln.dial(t, r.local, strings.Replace(r.remote, "1000", "2000", 1))
		go func() { _, _ = client.Write(frame(bindingRequest(t, "srv"))) }()
		_, from := readPacket(t, handles[i])
		require.Equal(t, mustAddrPort(strings.Replace(r.remote, "1000", "2000", 1)), from.(*net.TCPAddr).AddrPort())
		require.Equal(t, int(mustAddrPort(r.local).Port()), handles[i].LocalAddr().(*net.TCPAddr).Port)
	}
	go func() { _, _ = mapped.Write(frame(bindingRequest(t, "srv"))) }()
	_, from := readPacket(t, handles[0])
	require.Equal(t, "192.0.2.9:1000", from.String(), "mapped address returned unmapped")
	require.Equal(t, 3, m.Stats().PacketConns)
}

// SPEC 3: packets of a ufrag nobody asked for wait for GetConnByUfrag, the
// Binding request first.
func TestUnclaimedUfragQueuedUntilClaimed(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	req := bindingRequest(t, "late")
	client := dial(t, m, req)
	for i := range 3 {
		_, err := client.Write(frame([]byte{byte(i)}))
		require.NoError(t, err)
	}
	eventually(t, func() bool { return m.Stats().PacketsReceived == 4 }, "packets queued before the claim")
	require.Equal(t, 1, m.Stats().PacketConns)

	pc := getConn(t, m, "late")
	got, _ := readPacket(t, pc)
	require.Equal(t, req, got)
	for i := range 3 {
		got, _ := readPacket(t, pc)
		require.Equal(t, []byte{byte(i)}, got)
	}
	require.Equal(t, 1, m.Stats().PacketConns, "the claim reuses the PacketConn the connection created")
}

// SPEC 3: an unclaimed PacketConn closes with its connections after
// AliveDurationForConnFromStun, and a later claim starts afresh.
func TestUnclaimedUfragExpires(t *testing.T) {
	const alive = 200 * time.Millisecond
	m := newTestMux(t, TCPMuxParams{AliveDurationForConnFromStun: alive})
	start := time.Now()
	client := dialUfrag(t, m, "nobody")
	waitClosedByPeer(t, client, alive+time.Second)
	require.GreaterOrEqual(t, time.Since(start), alive-20*time.Millisecond)
	eventually(t, func() bool { s := m.Stats(); return s.PacketConns == 0 && s.ConnsActive == 0 }, "state released")

	pc := getConn(t, m, "nobody")
	require.NoError(t, pc.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
	_, _, err := pc.ReadFrom(make([]byte, 1500))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "nothing of the expired connection is left")
}

// SPEC 3: several connections share a PacketConn; WriteTo picks the
// connection by remote address.
func TestSeveralConnsShareOnePacketConn(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	pc := getConn(t, m, "srv")
	clients := make(map[string]net.Conn)
	for range 3 {
		c := dialUfrag(t, m, "srv")
		clients[c.LocalAddr().String()] = c
	}
	seen := map[string]bool{}
	for range 3 {
		_, from := readPacket(t, pc)
		seen[from.String()] = true
	}
	require.Len(t, seen, 3)
	for addr, c := range clients {
		_, err := pc.WriteTo([]byte(addr), mustTCPAddr(addr))
		require.NoError(t, err)
		require.Equal(t, addr, string(readFrame(t, c)))
	}
	require.Equal(t, 3, m.Stats().ConnsActive)
	require.Equal(t, 1, m.Stats().PacketConns)
}

func mustTCPAddr(s string) *net.TCPAddr { return net.TCPAddrFromAddrPort(mustAddrPort(s)) }

// SPEC 3: within one PacketConn a second connection from a live remote
// address is rejected; the first keeps working.
func TestDuplicateRemoteRejected(t *testing.T) {
	ln := newPipeListener("10.0.0.100:443")
	m := newTestMux(t, TCPMuxParams{Listener: ln})
	pc, err := m.GetConnByUfrag("srv", false, net.ParseIP("10.0.0.100"))
	require.NoError(t, err)
	defer pc.Close()

	first := ln.dial(t, "10.0.0.100:443", "192.0.2.1:1000")
	go func() { _, _ = first.Write(frame(bindingRequest(t, "srv"))) }()
	readPacket(t, pc)
	dup := ln.dial(t, "10.0.0.100:443", "192.0.2.1:1000")
	go func() { _, _ = dup.Write(frame(bindingRequest(t, "srv"))) }()
	waitClosedByPeer(t, dup, time.Second)
	eventually(t, func() bool { return m.Stats().Rejected.Other == 1 }, "duplicate counted as Other")

	go func() { _, _ = first.Write(frame([]byte("still here"))) }()
	got, _ := readPacket(t, pc)
	require.Equal(t, "still here", string(got))
}

// SPEC 3: RemoveConnByUfrag closes every PacketConn of the ufrag, in both
// families and on every local IP, and only those. Idempotent.
func TestRemoveConnByUfrag(t *testing.T) {
	ln := newPipeListener("10.0.0.100:443")
	m := newTestMux(t, TCPMuxParams{Listener: ln})
	var handles []net.PacketConn
	var clients []net.Conn
	for _, r := range []struct {
		ufrag, local, remote string
		ipv6                 bool
	}{
		{"gone", "10.0.0.100:443", "192.0.2.1:1000", false},
		{"gone", "10.0.0.200:443", "192.0.2.1:1000", false},
		{"gone", "[2001:db8::100]:443", "[2001:db8::1]:1000", true},
		{"kept", "10.0.0.100:443", "192.0.2.2:1000", false},
	} {
		pc, err := m.GetConnByUfrag(r.ufrag, r.ipv6, net.IP(mustAddrPort(r.local).Addr().AsSlice()))
		require.NoError(t, err)
		t.Cleanup(func() { _ = pc.Close() })
		c := ln.dial(t, r.local, r.remote)
		go func() { _, _ = c.Write(frame(bindingRequest(t, r.ufrag))) }()
		readPacket(t, pc)
		handles, clients = append(handles, pc), append(clients, c)
	}
	require.Equal(t, 4, m.Stats().PacketConns)

	m.RemoveConnByUfrag("gone")
	m.RemoveConnByUfrag("gone")
	for i := range 3 {
		_, _, err := handles[i].ReadFrom(make([]byte, 10))
		require.ErrorIs(t, err, net.ErrClosed)
		waitClosedByPeer(t, clients[i], time.Second)
	}
	s := m.Stats()
	require.Equal(t, 1, s.PacketConns)
	require.Equal(t, 1, s.ConnsActive)
	go func() { _, _ = clients[3].Write(frame([]byte("kept"))) }()
	got, _ := readPacket(t, handles[3])
	require.Equal(t, "kept", string(got))
}

// SPEC 3: each GetConnByUfrag is a new reference; the PacketConn and its
// connections close with the last one.
func TestHandlesAreReferenceCounted(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	h1 := getConn(t, m, "srv")
	h2 := getConn(t, m, "srv")
	require.NotSame(t, h1, h2)
	client := dialUfrag(t, m, "srv")
	readPacket(t, h2)

	require.NoError(t, h1.Close())
	_, err := client.Write(frame([]byte("after one close")))
	require.NoError(t, err)
	got, _ := readPacket(t, h2)
	require.Equal(t, "after one close", string(got))

	require.NoError(t, h2.Close())
	waitClosedByPeer(t, client, time.Second)
	eventually(t, func() bool { return m.Stats().PacketConns == 0 }, "closed with its last handle")
}

// SPEC 2: ReadBufferSize is back-pressure, never a drop.
func TestBackPressureLosesNothing(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{ReadBufferSize: 2})
	pc := getConn(t, m, "srv")
	client := dialUfrag(t, m, "srv")
	const packets = 2000
	go func() {
		for i := range packets {
			var b [1200]byte
			binary.BigEndian.PutUint32(b[:], uint32(i))
			if _, err := client.Write(frame(b[:])); err != nil {
				return
			}
		}
	}()
	readPacket(t, pc)
	eventually(t, func() bool { return m.Stats().PacketsReceived >= 3 }, "queue filled")
	for i := range packets {
		got, _ := readPacket(t, pc)
		require.Len(t, got, 1200)
		require.Equal(t, uint32(i), binary.BigEndian.Uint32(got))
	}
}

// SPEC 2: a connection over a limit is closed at once and counted; serving
// goes on.
func TestConnectionLimits(t *testing.T) {
	t.Run("MaxPendingConnections evicts the oldest pending", func(t *testing.T) {
		m := newTestMux(t, TCPMuxParams{MaxPendingConnections: 2})
		oldest := dial(t, m, nil)
		eventually(t, func() bool { return m.Stats().ConnsPending == 1 }, "one pending")
		dial(t, m, nil)
		eventually(t, func() bool { return m.Stats().ConnsPending == 2 }, "two pending")
		newcomer := dial(t, m, nil)
		waitClosedByPeer(t, oldest, time.Second)
		s := m.Stats()
		require.Equal(t, uint64(1), s.Rejected.Evicted)
		require.Zero(t, s.Rejected.Limit)
		require.Equal(t, 2, s.ConnsPending)
		_, err := newcomer.Write(frame(bindingRequest(t, "srv")))
		require.NoError(t, err)
		pc := getConn(t, m, "srv")
		readPacket(t, pc) // the newcomer was admitted
	})
	t.Run("MaxConnections evicts only evictable connections", func(t *testing.T) {
		m := newTestMux(t, TCPMuxParams{MaxConnections: 2})
		pc := getConn(t, m, "srv")
		dialUfrag(t, m, "srv")
		pending := dial(t, m, nil)
		readPacket(t, pc)
		eventually(t, func() bool { s := m.Stats(); return s.ConnsActive == 1 && s.ConnsPending == 1 }, "one of each")
		dialUfrag(t, m, "srv") // evicts the pending one, not the claimed one
		waitClosedByPeer(t, pending, time.Second)
		readPacket(t, pc)
		eventually(t, func() bool { return m.Stats().ConnsActive == 2 }, "two attached")
		require.Equal(t, uint64(1), m.Stats().Rejected.Evicted)
		// Both held connections belong to a claimed PacketConn: a
		// newcomer is refused.
		waitClosedByPeer(t, dialUfrag(t, m, "srv"), time.Second)
		require.Equal(t, uint64(1), m.Stats().Rejected.Limit)
	})
	t.Run("MaxConnectionsPerUfrag", func(t *testing.T) {
		m := newTestMux(t, TCPMuxParams{MaxConnectionsPerUfrag: 1})
		pc := getConn(t, m, "srv")
		dialUfrag(t, m, "srv")
		readPacket(t, pc)
		waitClosedByPeer(t, dialUfrag(t, m, "srv"), time.Second)
		require.Equal(t, uint64(1), m.Stats().Rejected.Limit)
		other := getConn(t, m, "other")
		dialUfrag(t, m, "other")
		readPacket(t, other) // another ufrag is unaffected
	})
}

// SPEC 2: with PasswordLookup only a known ufrag with a valid
// MESSAGE-INTEGRITY gets in, and refusals leave no state.
func TestPasswordLookup(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{PasswordLookup: func(ufrag string) (string, bool) {
		return "pwd", ufrag == "known"
	}})
	waitClosedByPeer(t, dialUfrag(t, m, "unknown"), time.Second)
	wrong := bindingRequestWith(t, stun.NewUsername("known:peer"), stun.NewShortTermIntegrity("wrong"), stun.Fingerprint)
	waitClosedByPeer(t, dial(t, m, wrong), time.Second)
	noIntegrity := bindingRequestWith(t, stun.NewUsername("known:peer"), stun.Fingerprint)
	waitClosedByPeer(t, dial(t, m, noIntegrity), time.Second)
	eventually(t, func() bool { return m.Stats().Rejected.Auth == 3 }, "three auth rejections")
	require.Zero(t, m.Stats().PacketConns)

	pc := getConn(t, m, "known")
	dialUfrag(t, m, "known")
	readPacket(t, pc)
}

// closeFromLookupTimeout bounds a Close that a deadlock would hold forever:
// the test fails instead of hanging the suite.
const closeFromLookupTimeout = 5 * time.Second

// lookupMux starts a mux whose PasswordLookup calls lookup with the mux
// itself. It has no Cleanup that closes it: a Close that deadlocked would
// hang the cleanup too.
func lookupMux(t *testing.T, lookup func(m *TCPMuxDefault) (string, bool)) *TCPMuxDefault {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	// The lookup runs on a goroutine synchronised with the test only
	// through a socket, which the race detector does not see.
	var self atomic.Pointer[TCPMuxDefault]
	m := NewTCPMuxDefault(TCPMuxParams{Listener: ln, Logger: quietLogger(), PasswordLookup: func(string) (string, bool) {
		return lookup(self.Load())
	}})
	self.Store(m)
	return m
}

// waitCloseFromLookup waits for the error of a Close that a PasswordLookup
// called or was running during.
func waitCloseFromLookup(t *testing.T, closed <-chan error) {
	t.Helper()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(closeFromLookupTimeout):
		t.Fatal("Close deadlocked on a PasswordLookup")
	}
}

// A PasswordLookup may close the mux (say, the server is shutting down):
// Close returns, the connection ends closed and counted as Other like any
// pending connection Close closes, and its goroutine exits once the
// lookup returns.
func TestCloseFromPasswordLookup(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	closed := make(chan error, 1)
	m := lookupMux(t, func(m *TCPMuxDefault) (string, bool) {
		closed <- m.Close()
		return "pwd", true
	})
	client := dialUfrag(t, m, "srv")
	waitCloseFromLookup(t, closed)
	waitClosedByPeer(t, client, time.Second)
	goleak.VerifyNone(t, leaks)

	s := m.Stats()
	require.Equal(t, uint64(1), s.ConnsRejected)
	require.Equal(t, uint64(1), s.Rejected.Other)
	require.Zero(t, s.ConnsPending)
	require.Zero(t, s.ConnsActive)
	require.Zero(t, s.PacketConns)
	_, err := m.GetConnByUfrag("srv", false, nil)
	require.ErrorIs(t, err, net.ErrClosed)
}

// Close from another goroutine does not wait for a PasswordLookup in
// progress, yet the connection is already closed and counted when it
// returns; the lookup's answer, when it comes, changes nothing.
func TestCloseDuringPasswordLookup(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	entered, release := make(chan struct{}), make(chan struct{})
	m := lookupMux(t, func(*TCPMuxDefault) (string, bool) {
		close(entered)
		<-release
		return "pwd", true
	})
	client := dialUfrag(t, m, "srv")
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("PasswordLookup not called")
	}
	closed := make(chan error, 1)
	go func() { closed <- m.Close() }()
	waitCloseFromLookup(t, closed)
	s := m.Stats()
	require.Equal(t, uint64(1), s.Rejected.Other, "counted when Close returns")
	require.Zero(t, s.ConnsPending)
	waitClosedByPeer(t, client, time.Second)

	close(release)
	goleak.VerifyNone(t, leaks)
	require.Equal(t, s, m.Stats(), "nothing counted after Close")
}

// SPEC 5: Accept errors other than a closed listener are retried with
// back-off from 5 ms doubling to 1 s, reset by a successful Accept.
func TestAcceptBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ln := &failingListener{pipeListener: newPipeListener("127.0.0.1:443"), failures: 12}
		m := NewTCPMuxDefault(TCPMuxParams{Listener: ln, Logger: quietLogger()})
		synctest.Wait()
		for ln.attempts() < 13 {
			time.Sleep(time.Second)
			synctest.Wait()
		}
		gaps := ln.gaps()
		want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000}
		require.Len(t, gaps, len(want))
		for i, ms := range want {
			require.Equal(t, ms*time.Millisecond, gaps[i], "retry %d", i)
		}
		client, server := net.Pipe()
		ln.conns <- server // Accept works again
		synctest.Wait()
		require.Equal(t, uint64(1), m.Stats().ConnsAccepted)
		require.NoError(t, m.Close())
		_ = client.Close()
	})
}

// failingListener fails its first Accepts with a non-closed error, like a
// process out of file descriptors, and records when each Accept happened.
type failingListener struct {
	*pipeListener
	mu       sync.Mutex
	failures int
	times    []time.Time
}

func (l *failingListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	l.times = append(l.times, time.Now())
	fail := len(l.times) <= l.failures
	l.mu.Unlock()
	if fail {
		return nil, fmt.Errorf("accept: %w", errTooManyFiles)
	}
	return l.pipeListener.Accept()
}

var errTooManyFiles = errors.New("too many open files")

func (l *failingListener) attempts() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.times)
}

func (l *failingListener) gaps() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var gaps []time.Duration
	for i := 1; i < len(l.times); i++ {
		gaps = append(gaps, l.times[i].Sub(l.times[i-1]))
	}
	return gaps
}

// emfileListener fails its first Accepts the way a process out of file
// descriptors does, then accepts for real.
type emfileListener struct {
	net.Listener
	failures atomic.Int32
	calls    atomic.Int32
}

func (l *emfileListener) Accept() (net.Conn, error) {
	l.calls.Add(1)
	if l.failures.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// SPEC 5: Accept failing with EMFILE does not end the accept loop; a client
// waiting in the backlog is served once Accept recovers.
func TestAcceptEMFILERecovers(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := &emfileListener{Listener: inner}
	ln.failures.Store(5)
	client, err := net.Dial("tcp", inner.Addr().String()) // waits in the backlog
	require.NoError(t, err)
	defer client.Close()

	m := newTestMux(t, TCPMuxParams{Listener: ln})
	pc := getConn(t, m, "srv")
	req := bindingRequest(t, "srv")
	_, err = client.Write(frame(req))
	require.NoError(t, err)
	got, from := readPacket(t, pc)
	require.Equal(t, req, got)
	_, err = pc.WriteTo([]byte("served"), from)
	require.NoError(t, err)
	require.Equal(t, "served", string(readFrame(t, client)))
	require.GreaterOrEqual(t, ln.calls.Load(), int32(6))
	s := m.Stats()
	require.Equal(t, uint64(1), s.ConnsAccepted)
	require.Zero(t, s.ConnsRejected)

	later := dialUfrag(t, m, "srv")
	_, from = readPacket(t, pc)
	require.Equal(t, later.LocalAddr().String(), from.String(), "and goes on serving")
}

// SPEC 2: invalid params give a closed mux whose getter explains why.
func TestInvalidParams(t *testing.T) {
	m := NewTCPMuxDefault(TCPMuxParams{Logger: quietLogger()})
	_, err := m.GetConnByUfrag("srv", false, nil)
	require.ErrorIs(t, err, ErrNoListener)
	require.NoError(t, m.Close())
	require.Nil(t, m.LocalAddr())

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	m = NewTCPMuxDefault(TCPMuxParams{Listener: ln, Logger: quietLogger(), MaxConnections: -1})
	_, err = m.GetConnByUfrag("srv", false, nil)
	require.Error(t, err)
	require.NoError(t, m.Close())
}

func TestGetConnByUfragEmpty(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	_, err := m.GetConnByUfrag("", false, nil)
	require.ErrorIs(t, err, ErrEmptyUfrag)
}
