//go:build unix

// Hardening tests: port sharing through the fallback listener, MPTCP,
// faults over real sockets (resets, half-closes, slowloris, stalled
// readers, failing Accepts), the Stats contract, a fuzz target for the
// admission of a connection's first bytes, and an opt-in soak. The build
// tag is for syscall.Setrlimit, which the slowloris test and the soak use.
package tcpmux

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// --- helpers -------------------------------------------------------------

// httpRequestBytes is the start of a plain HTTP request: not framed STUN.
const httpRequestBytes = "GET / HTTP/1.1\r\nHost: example\r\n\r\n"

// startEcho serves pc until the test ends: every packet that is not a
// Binding request goes back to its sender.
func startEcho(t testing.TB, pc net.PacketConn) {
	t.Helper()
	require.NoError(t, pc.SetReadDeadline(time.Time{}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, MaxFramePayload)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if errors.Is(err, io.ErrShortBuffer) {
				continue
			}
			if err != nil {
				return
			}
			if _, reason := parseBindingRequest(buf[:n]); reason == rejectNone {
				continue
			}
			_, _ = pc.WriteTo(buf[:n], addr) // the peer may have left
		}
	}()
	t.Cleanup(func() {
		_ = pc.Close()
		<-done
	})
}

// roundTrip sends payload as one frame on conn and expects it back.
func roundTrip(conn net.Conn, payload []byte) error {
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	if _, err := conn.Write(frame(payload)); err != nil {
		return err
	}
	var hdr [FrameHeaderSize]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return err
	}
	got := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(conn, got); err != nil {
		return err
	}
	if string(got) != string(payload) {
		return fmt.Errorf("echo %q, sent %q", got, payload)
	}
	return nil
}

// raiseNoFile raises RLIMIT_NOFILE to at least want for the test, raising
// the hard limit too if the process may, and restores it afterwards.
func raiseNoFile(t testing.TB, want uint64) {
	t.Helper()
	var orig syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig))
	if orig.Cur >= want {
		return
	}
	lim := syscall.Rlimit{Cur: want, Max: max(orig.Max, want)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		if orig.Max < want {
			t.Skipf("RLIMIT_NOFILE hard limit %d < %d and not raisable: %v", orig.Max, want, err)
		}
		lim.Max = orig.Max
		require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim))
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig) })
}

// waitStalled waits until a writer's progress counter has stopped moving
// for quiet: the writer is then blocked in a write.
func waitStalled(t testing.TB, progress *atomic.Int64, quiet time.Duration) {
	t.Helper()
	last, since := int64(-1), time.Now()
	require.Eventually(t, func() bool {
		p := progress.Load()
		if p != last {
			last, since = p, time.Now()
			return false
		}
		return p > 0 && time.Since(since) >= quiet
	}, 20*time.Second, time.Millisecond, "writer never stalled")
}

// closeWithin closes m and fails the test if that takes over d.
func closeWithin(t testing.TB, m *TCPMuxDefault, d time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- m.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
		t.Logf("Close took %v", time.Since(start).Round(time.Microsecond))
	case <-time.After(d):
		t.Fatalf("Close did not return within %v", d)
	}
}

// acceptAsync runs one Accept on l in the background.
func acceptAsync(l net.Listener) <-chan acceptResult {
	ch := make(chan acceptResult, 1)
	go func() {
		c, err := l.Accept()
		ch <- acceptResult{c, err}
	}()
	return ch
}

type acceptResult struct {
	conn net.Conn
	err  error
}

func recvAccept(t testing.TB, ch <-chan acceptResult) acceptResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return")
		return acceptResult{}
	}
}

// expectOpen checks that conn is still open by an exchange through the
// application's end of it, app.
func expectOpen(t testing.TB, client, app net.Conn) {
	t.Helper()
	require.NoError(t, app.SetDeadline(time.Now().Add(5*time.Second)))
	require.NoError(t, client.SetDeadline(time.Now().Add(5*time.Second)))
	_, err := client.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(app, buf)
	require.NoError(t, err)
	require.Equal(t, "ping", string(buf))
	_, err = app.Write([]byte("pong"))
	require.NoError(t, err)
	_, err = io.ReadFull(client, buf)
	require.NoError(t, err)
	require.Equal(t, "pong", string(buf))
}

// --- 1. Port sharing through the fallback listener -------------------------

// SPEC 2 (Fallback): a real HTTP(S) server on FallbackListener() and an ICE
// session on the same port at the same time; the handed-over connections
// count in ConnsAccepted only.
func TestFallbackSharesPortWithHTTP(t *testing.T) {
	for _, useTLS := range []bool{true, false} {
		name := map[bool]string{true: "https", false: "http"}[useTLS]
		t.Run(name, func(t *testing.T) {
			m := newTestMux(t, TCPMuxParams{Fallback: true})
			pc := getConn(t, m, "srv")
			ice := dialUfrag(t, m, "srv")
			_, iceAddr := readPacket(t, pc)

			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.WriteString(w, "hello "+r.URL.Path)
			}))
			_ = srv.Listener.Close() // httptest's own listener, unused
			srv.Listener = m.FallbackListener()
			srv.Config.ErrorLog = log.New(io.Discard, "", 0)
			var httpConns atomic.Int64
			srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					httpConns.Add(1)
				}
			}
			if useTLS {
				srv.StartTLS()
				require.True(t, strings.HasPrefix(srv.URL, "https://"))
			} else {
				srv.Start()
			}
			defer srv.Close()
			require.Equal(t, m.LocalAddr().String(), srv.Listener.Addr().String(), "one port")

			// HTTP requests and ICE packets at the same time.
			const requests = 5
			httpErr := make(chan error, 1)
			go func() {
				client := srv.Client()
				for i := range requests {
					resp, err := client.Get(fmt.Sprintf("%s/%d", srv.URL, i))
					if err != nil {
						httpErr <- err
						return
					}
					body, err := io.ReadAll(resp.Body)
					_ = resp.Body.Close()
					if err != nil {
						httpErr <- err
						return
					}
					if want := fmt.Sprintf("hello /%d", i); string(body) != want || resp.StatusCode != http.StatusOK {
						httpErr <- fmt.Errorf("got %d %q, want %q", resp.StatusCode, body, want)
						return
					}
					if useTLS && resp.TLS == nil {
						httpErr <- errors.New("response not over TLS")
						return
					}
				}
				httpErr <- nil
			}()
			for i := range 50 {
				payload := []byte(fmt.Sprintf("ice %d", i))
				_, err := ice.Write(frame(payload))
				require.NoError(t, err)
				got, from := readPacket(t, pc)
				require.Equal(t, payload, got)
				require.Equal(t, iceAddr.String(), from.String())
				_, err = pc.WriteTo(payload, from)
				require.NoError(t, err)
				require.Equal(t, payload, readFrame(t, ice))
			}
			select {
			case err := <-httpErr:
				require.NoError(t, err)
			case <-time.After(10 * time.Second):
				t.Fatal("HTTP client did not finish")
			}

			n := httpConns.Load()
			require.Positive(t, n)
			// PacketsReceived may lag the packet ReadFrom returned by an instant.
			eventually(t, func() bool { return m.Stats().PacketsReceived == 1+50 }, "HTTP bytes never reach a PacketConn")
			s := m.Stats()
			require.Equal(t, uint64(1+n), s.ConnsAccepted, "handed-over connections count as accepted")
			require.Zero(t, s.ConnsRejected, "nor as rejected")
			require.Equal(t, 1, s.ConnsActive, "nor as active")
			require.Zero(t, s.ConnsPending, "nor as pending")
			require.Equal(t, 1, s.PacketConns)
		})
	}
}

// SPEC 2: a connection that looks like STUN from its first 10 bytes is
// judged by the first-frame rules and never handed over, even if invalid.
func TestFallbackNeverHandsOverSTUNLookalikes(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{Fallback: true})
	accepted := acceptAsync(m.FallbackListener())

	badFingerprint := bindingRequest(t, "srv")
	badFingerprint[len(badFingerprint)-1] ^= 1
	require.True(t, looksLikeBindingRequest(frame(badFingerprint)))
	waitClosedByPeer(t, dial(t, m, badFingerprint), time.Second)
	eventually(t, func() bool { return m.Stats().Rejected.NotSTUN == 1 }, "invalid lookalike counted as NotSTUN")

	// A lookalike whose header announces a frame over the bound.
	huge := frame(bindingRequest(t, "srv"))[:stunSniffSize]
	binary.BigEndian.PutUint16(huge, 0xffff)
	require.True(t, looksLikeBindingRequest(huge))
	c := dial(t, m, nil)
	_, err := c.Write(huge)
	require.NoError(t, err)
	waitClosedByPeer(t, c, time.Second)
	eventually(t, func() bool { return m.Stats().Rejected.TooLarge == 1 }, "oversized lookalike counted as TooLarge")

	// The first connection the fallback listener yields is the next,
	// genuinely non-STUN one.
	plain := dial(t, m, nil)
	_, err = plain.Write([]byte(httpRequestBytes))
	require.NoError(t, err)
	r := recvAccept(t, accepted)
	require.NoError(t, r.err)
	defer r.conn.Close()
	require.Equal(t, plain.LocalAddr().String(), r.conn.RemoteAddr().String())
	got := make([]byte, len(httpRequestBytes))
	require.NoError(t, r.conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = io.ReadFull(r.conn, got)
	require.NoError(t, err)
	require.Equal(t, httpRequestBytes, string(got), "the bytes the mux read are replayed")
	s := m.Stats()
	require.Equal(t, uint64(2), s.ConnsRejected)
	require.Zero(t, s.PacketConns)
}

// SPEC 2: the hand-over queue is bounded; past it connections are closed
// and counted as Limit. The queued ones stay open, with their bytes.
func TestFallbackQueueBounded(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{Fallback: true, FallbackQueueSize: 2})
	var clients []net.Conn
	for i := range 4 {
		c := dial(t, m, nil)
		_, err := c.Write([]byte(fmt.Sprintf("%d%s", i, httpRequestBytes)))
		require.NoError(t, err)
		if i < 2 {
			eventually(t, func() bool {
				s := m.Stats()
				return s.ConnsAccepted == uint64(i+1) && s.ConnsPending == 0
			}, "handed over")
		} else {
			waitClosedByPeer(t, c, time.Second)
		}
		clients = append(clients, c)
	}
	eventually(t, func() bool { return m.Stats().Rejected.Limit == 2 }, "two over the queue, counted as Limit")
	s := m.Stats()
	require.Equal(t, uint64(2), s.ConnsRejected)
	require.Equal(t, uint64(4), s.ConnsAccepted)
	require.Zero(t, s.ConnsPending)

	for i := range 2 {
		r := recvAccept(t, acceptAsync(m.FallbackListener()))
		require.NoError(t, r.err)
		defer r.conn.Close()
		require.Equal(t, clients[i].LocalAddr().String(), r.conn.RemoteAddr().String(), "queued in order")
		want := fmt.Sprintf("%d%s", i, httpRequestBytes)
		got := make([]byte, len(want))
		require.NoError(t, r.conn.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err := io.ReadFull(r.conn, got)
		require.NoError(t, err)
		require.Equal(t, want, string(got))
		expectOpen(t, clients[i], r.conn)
	}
}

// SPEC 2: handed-over connections leave the mux's limits.
func TestFallbackHandOverLeavesLimits(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{Fallback: true, MaxConnections: 1, MaxPendingConnections: 1})
	for i := range 3 {
		c := dial(t, m, nil)
		_, err := c.Write([]byte(httpRequestBytes))
		require.NoError(t, err)
		r := recvAccept(t, acceptAsync(m.FallbackListener()))
		require.NoError(t, r.err)
		defer r.conn.Close()
		require.Equal(t, c.LocalAddr().String(), r.conn.RemoteAddr().String(), "connection %d", i)
		eventually(t, func() bool { return m.Stats().ConnsPending == 0 }, "left the mux's counters")
	}
	pc := getConn(t, m, "srv")
	dialUfrag(t, m, "srv")
	readPacket(t, pc)
	require.Zero(t, m.Stats().ConnsRejected)
}

// SPEC 2: closing FallbackListener stops the hand-over: later non-STUN
// connections are closed and counted, and ICE goes on.
func TestFallbackListenerCloseStopsHandOver(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{Fallback: true})
	fl := m.FallbackListener()
	require.Equal(t, m.LocalAddr().String(), fl.Addr().String())
	require.NoError(t, fl.Close())
	_, err := fl.Accept()
	require.ErrorIs(t, err, net.ErrClosed)

	c := dial(t, m, nil)
	_, err = c.Write([]byte(httpRequestBytes))
	require.NoError(t, err)
	waitClosedByPeer(t, c, time.Second)
	eventually(t, func() bool { return m.Stats().ConnsRejected == 1 }, "counted")
	require.Zero(t, m.Stats().ConnsPending)

	pc := getConn(t, m, "srv")
	dialUfrag(t, m, "srv")
	readPacket(t, pc)
}

// SPEC 2: the mux's Close closes the fallback listener and the queued
// connections, not those the application already accepted.
func TestFallbackMuxCloseClosesQueueOnly(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{Fallback: true})
	taken := dial(t, m, nil)
	_, err := taken.Write([]byte(httpRequestBytes))
	require.NoError(t, err)
	r := recvAccept(t, acceptAsync(m.FallbackListener()))
	require.NoError(t, r.err)
	app := r.conn
	defer app.Close()
	replayed := make([]byte, len(httpRequestBytes))
	require.NoError(t, app.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = io.ReadFull(app, replayed)
	require.NoError(t, err)

	queued := dial(t, m, nil)
	_, err = queued.Write([]byte(httpRequestBytes))
	require.NoError(t, err)
	eventually(t, func() bool { s := m.Stats(); return s.ConnsAccepted == 2 && s.ConnsPending == 0 }, "second connection queued")

	closeWithin(t, m, time.Second)
	_, err = m.FallbackListener().Accept()
	require.ErrorIs(t, err, net.ErrClosed, "the fallback listener closed with the mux")

	require.NoError(t, queued.SetReadDeadline(time.Now().Add(time.Second)))
	n, err := queued.Read(make([]byte, 1))
	require.Zero(t, n)
	require.ErrorIs(t, err, io.EOF, "a queued connection is closed by the mux's Close")

	expectOpen(t, taken, app) // the application's connection is its own
}

// SPEC 2: without Fallback, FallbackListener().Accept fails at once.
func TestFallbackDisabledAcceptFails(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	ch := acceptAsync(m.FallbackListener())
	select {
	case r := <-ch:
		require.Error(t, r.err)
		require.Nil(t, r.conn)
	case <-time.After(time.Second):
		_ = m.Close()
		t.Fatal("Accept blocks without Fallback")
	}
}

// SPEC 2: a connection that sends fewer than the 10 deciding bytes and
// waits is closed at the first-frame deadline, counted as Timeout.
func TestFallbackShortPrefixTimesOut(t *testing.T) {
	const timeout = 300 * time.Millisecond
	m := newTestMux(t, TCPMuxParams{Fallback: true, FirstStunBindTimeout: timeout})
	accepted := acceptAsync(m.FallbackListener())
	start := time.Now()
	c := dial(t, m, nil)
	_, err := c.Write([]byte("GET"))
	require.NoError(t, err)
	waitClosedByPeer(t, c, timeout+time.Second)
	require.GreaterOrEqual(t, time.Since(start), timeout-50*time.Millisecond, "not before the deadline")
	eventually(t, func() bool { return m.Stats().Rejected.Timeout == 1 }, "counted as Timeout")
	require.Equal(t, uint64(1), m.Stats().ConnsRejected)
	select {
	case r := <-accepted:
		t.Fatalf("a short prefix was handed over: %v", r)
	default:
	}
	require.NoError(t, m.Close())
	require.ErrorIs(t, recvAccept(t, accepted).err, net.ErrClosed)
}

// --- 2. MPTCP ---------------------------------------------------------------

// SPEC 2 and 6: an MPTCP listener and client work end to end and are
// counted in MultipathConns while attached.
func TestMultipathTCP(t *testing.T) {
	if b, err := os.ReadFile("/proc/sys/net/mptcp/enabled"); err != nil || strings.TrimSpace(string(b)) != "1" {
		t.Skipf("MPTCP not enabled in this kernel (/proc/sys/net/mptcp/enabled: %q, %v)", b, err)
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	require.NoError(t, err)
	m := newTestMux(t, TCPMuxParams{Listener: ln})
	pc := getConn(t, m, "mptcp")

	var d net.Dialer
	d.SetMultipathTCP(true)
	conn, err := d.Dial("tcp", m.LocalAddr().String())
	require.NoError(t, err)
	defer conn.Close()
	if mp, err := conn.(*net.TCPConn).MultipathTCP(); err != nil || !mp {
		t.Skipf("the kernel did not negotiate MPTCP on loopback (MultipathTCP() = %v, %v)", mp, err)
	}

	req := bindingRequest(t, "mptcp")
	_, err = conn.Write(frame(req))
	require.NoError(t, err)
	got, from := readPacket(t, pc)
	require.Equal(t, req, got)
	for i := range 10 {
		p := []byte(fmt.Sprintf("up %d", i))
		_, err = conn.Write(frame(p))
		require.NoError(t, err)
		got, _ = readPacket(t, pc)
		require.Equal(t, p, got)
		p = make([]byte, 1000*i)
		_, err = pc.WriteTo(p, from)
		require.NoError(t, err)
		require.Equal(t, p, readFrame(t, conn))
	}
	s := m.Stats()
	require.Equal(t, 1, s.ConnsActive)
	require.Equal(t, 1, s.MultipathConns, "the attached connection uses MPTCP")

	require.NoError(t, conn.Close())
	eventually(t, func() bool { s := m.Stats(); return s.ConnsActive == 0 && s.MultipathConns == 0 }, "MultipathConns drops when it leaves")
}

// --- 3. Faults over real sockets -------------------------------------------

// SPEC 4: a peer that resets mid-frame is removed quietly; the other
// connection of the PacketConn keeps working both ways, and nothing of
// the torn frame is delivered.
func TestResetMidFrame(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	pc := getConn(t, m, "srv")
	a := dialUfrag(t, m, "srv")
	_, aAddr := readPacket(t, pc)
	b := dialUfrag(t, m, "srv")
	_, bAddr := readPacket(t, pc)
	require.Equal(t, 2, m.Stats().ConnsActive)

	torn := frame(make([]byte, 1000))[:500]
	_, err := a.Write(append(frame([]byte("complete")), torn...))
	require.NoError(t, err)
	got, from := readPacket(t, pc)
	require.Equal(t, "complete", string(got))
	require.Equal(t, aAddr.String(), from.String())
	require.NoError(t, a.(*net.TCPConn).SetLinger(0))
	require.NoError(t, a.Close()) // RST
	eventually(t, func() bool { return m.Stats().ConnsActive == 1 }, "the reset connection is removed")

	_, err = pc.WriteTo([]byte("to a"), aAddr)
	require.ErrorIs(t, err, ErrNoConnForAddr)

	_, err = b.Write(frame([]byte("from b")))
	require.NoError(t, err)
	got, from = readPacket(t, pc)
	require.Equal(t, "from b", string(got), "the torn frame was not delivered")
	require.Equal(t, bAddr.String(), from.String())
	_, err = pc.WriteTo([]byte("to b"), bAddr)
	require.NoError(t, err)
	require.Equal(t, "to b", string(readFrame(t, b)))
	require.Equal(t, 1, m.Stats().PacketConns)
}

// SPEC 4: a peer that half-closes after its frames has every complete frame
// delivered, in order, even after its connection is removed; the trailing
// partial frame is not; the ufrag's PacketConn lives on.
func TestHalfCloseDeliversEveryFrame(t *testing.T) {
	m := newTestMux(t, TCPMuxParams{})
	pc := getConn(t, m, "srv")
	c := dial(t, m, nil)
	stream := frame(bindingRequest(t, "srv"))
	const frames = 20
	for i := range frames {
		stream = append(stream, frame(pattern(i*97, byte(i)))...)
	}
	stream = append(stream, 0x01, 0x00, 'x') // a partial frame
	_, err := c.Write(stream)
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	eventually(t, func() bool {
		s := m.Stats()
		return s.PacketsReceived == frames+1 && s.ConnsActive == 0
	}, "every complete frame queued, then the connection removed")
	waitClosedByPeer(t, c, time.Second)

	_, from := readPacket(t, pc)
	require.Equal(t, c.LocalAddr().String(), from.String())
	for i := range frames {
		got, _ := readPacket(t, pc)
		require.Equal(t, pattern(i*97, byte(i)), got, "frame %d", i)
	}
	s := m.Stats()
	require.Equal(t, 1, s.PacketConns)
	require.Zero(t, s.ConnsRejected)

	again := dialUfrag(t, m, "srv")
	_, from = readPacket(t, pc)
	require.Equal(t, again.LocalAddr().String(), from.String(), "a new connection joins the same PacketConn")
}

// SPEC 1: hundreds of slowloris connections trickling first frames are all
// closed at the first-frame deadline and counted as Timeout, while a real
// session on the same mux keeps exchanging packets throughout.
func TestSlowlorisDoesNotStarveSessions(t *testing.T) {
	const (
		attackers = 500
		timeout   = time.Second
	)
	raiseNoFile(t, 4*attackers)
	m := newTestMux(t, TCPMuxParams{FirstStunBindTimeout: timeout})
	pc := getConn(t, m, "victim")
	session := dialUfrag(t, m, "victim")
	readPacket(t, pc)
	startEcho(t, pc)
	require.NoError(t, roundTrip(session, []byte("before")))

	req := frame(bindingRequest(t, "attacker"))
	dialStart := time.Now()
	conns := make([]net.Conn, attackers)
	for i := range conns {
		conns[i] = dial(t, m, nil)
	}
	eventually(t, func() bool { return m.Stats().ConnsPending == attackers }, "every attacker pending")
	dialEnd := time.Now()
	if time.Since(dialStart) < timeout-200*time.Millisecond {
		require.Zero(t, m.Stats().ConnsRejected, "nobody closed before the deadline")
	}

	// One byte per attacker every 100 ms: no first frame can complete.
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		alive := make([]bool, attackers)
		for i := range alive {
			alive[i] = true
		}
		for off := 0; off < len(req); off++ {
			for i, c := range conns {
				if alive[i] {
					if _, err := c.Write(req[off : off+1]); err != nil {
						alive[i] = false
					}
				}
			}
			select {
			case <-tick.C:
			case <-stop:
				return
			}
		}
	}()
	defer func() { close(stop); <-trickled }()

	rounds, duringAttack := 0, 0
	for m.Stats().Rejected.Timeout < attackers {
		require.Less(t, time.Since(dialEnd), timeout+10*time.Second, "attackers not closed")
		require.NoError(t, roundTrip(session, []byte(fmt.Sprintf("round %d", rounds))))
		rounds++
		if m.Stats().ConnsPending > 0 {
			duringAttack++
		}
	}
	elapsed := time.Since(dialEnd)
	t.Logf("%d round trips, %d of them with attackers pending; all attackers closed %v after the last accept", rounds, duringAttack, elapsed)
	require.GreaterOrEqual(t, duringAttack, 20, "the session kept exchanging packets during the attack")
	require.Less(t, elapsed, timeout+1500*time.Millisecond, "closed at the deadline")

	for _, c := range conns {
		waitClosedByPeer(t, c, time.Second)
	}
	s := m.Stats()
	require.Equal(t, uint64(attackers), s.Rejected.Timeout)
	require.Equal(t, uint64(attackers), s.ConnsRejected)
	require.Zero(t, s.ConnsPending)
	require.Equal(t, 1, s.ConnsActive)
	require.Equal(t, 1, s.PacketConns, "attackers created no per-ufrag state")
	require.NoError(t, roundTrip(session, []byte("after")))
}

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

// closeOnDrainConn is the server end of a net.Pipe whose client closes
// as soon as the server has read its last byte: a peer that sends its
// request and leaves at once, without a timing race.
type closeOnDrainConn struct {
	net.Conn
	peer      net.Conn
	remaining int
}

func (c *closeOnDrainConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.remaining -= n; n > 0 && c.remaining == 0 {
		_ = c.peer.Close()
	}
	return n, err
}

// SPEC 1, 2 and 4: a peer that sends a valid first frame (and a packet)
// and closes at once is admitted and its packets are delivered; its EOF
// only removes it. Over an in-memory listener (SPEC 2: any listener
// works), where a pipe refuses deadlines once its other end closed.
func TestPeerLeavingRightAfterFirstFrame(t *testing.T) {
	ln := newPipeListener("127.0.0.1:443")
	m := newTestMux(t, TCPMuxParams{Listener: ln})
	pc := getConn(t, m, "srv")
	req := bindingRequest(t, "srv")
	stream := append(frame(req), frame([]byte("last words"))...)

	client, server := net.Pipe()
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	ln.conns <- &addrConn{
		Conn:   &closeOnDrainConn{Conn: server, peer: client, remaining: len(stream)},
		local:  mustTCPAddr("127.0.0.1:443"),
		remote: mustTCPAddr("192.0.2.1:1000"),
	}
	go func() { _, _ = client.Write(stream) }()

	eventually(t, func() bool { s := m.Stats(); return s.ConnsRejected > 0 || s.PacketsReceived > 0 }, "a verdict")
	require.Zero(t, m.Stats().ConnsRejected, "rejected: %+v", m.Stats().Rejected)
	got, _ := readPacket(t, pc)
	require.Equal(t, req, got)
	got, _ = readPacket(t, pc)
	require.Equal(t, "last words", string(got))
	eventually(t, func() bool { return m.Stats().ConnsActive == 0 }, "removed at EOF")
}

// --- 4. Stats ----------------------------------------------------------------

// SPEC 6: one connection of every rejection reason through one mux, an
// admitted session with traffic, and a silent client, with every counter.
func TestStatsAccounting(t *testing.T) {
	const timeout = 400 * time.Millisecond
	m := newTestMux(t, TCPMuxParams{
		FirstStunBindTimeout:   timeout,
		MaxConnectionsPerUfrag: 1,
		PasswordLookup:         func(ufrag string) (string, bool) { return "pwd", ufrag != "stranger" },
	})
	require.Equal(t, Stats{}, m.Stats())

	waitClosedByPeer(t, dial(t, m, []byte("not a STUN message")), time.Second)            // NotSTUN
	waitClosedByPeer(t, dial(t, m, bindingRequestWith(t, stun.Fingerprint)), time.Second) // Username
	tooLarge := dial(t, m, nil)
	_, err := tooLarge.Write([]byte{0xff, 0xff})
	require.NoError(t, err)
	waitClosedByPeer(t, tooLarge, time.Second)                    // TooLarge
	waitClosedByPeer(t, dialUfrag(t, m, "stranger"), time.Second) // Auth
	require.NoError(t, dial(t, m, nil).Close())                   // Other: leaves before its first frame

	pc := getConn(t, m, "srv")
	req := bindingRequest(t, "srv")
	client := dial(t, m, req)
	_, from := readPacket(t, pc)
	waitClosedByPeer(t, dialUfrag(t, m, "srv"), time.Second) // Limit: one per ufrag

	want := RejectedStats{NotSTUN: 1, Username: 1, TooLarge: 1, Auth: 1, Other: 1, Limit: 1}
	eventually(t, func() bool { return m.Stats().Rejected == want }, "each reason counted once")

	sizes := []int{0, 10, 100}
	for _, n := range sizes {
		_, err := client.Write(frame(make([]byte, n)))
		require.NoError(t, err)
		got, _ := readPacket(t, pc)
		require.Len(t, got, n)
	}
	for _, n := range []int{5, 50} {
		_, err := pc.WriteTo(make([]byte, n), from)
		require.NoError(t, err)
		require.Len(t, readFrame(t, client), n)
	}

	// PacketsReceived may lag the packet ReadFrom returned by an instant.
	eventually(t, func() bool { return m.Stats().PacketsReceived == uint64(1+len(sizes)) }, "received counted")

	silent := dial(t, m, nil)
	eventually(t, func() bool { return m.Stats().ConnsPending == 1 }, "the silent client is pending")
	s := m.Stats()
	require.Equal(t, uint64(8), s.ConnsAccepted)
	require.Equal(t, uint64(6), s.ConnsRejected)
	require.Equal(t, 1, s.ConnsActive)
	require.Equal(t, 1, s.PacketConns)
	require.Equal(t, uint64(1+len(sizes)), s.PacketsReceived, "the first frame counts; rejected frames do not")
	require.Equal(t, uint64(len(req)+0+10+100), s.BytesReceived)
	require.Equal(t, uint64(2), s.PacketsSent)
	require.Equal(t, uint64(55), s.BytesSent)
	require.Zero(t, s.WriteDrops)
	require.Zero(t, s.MultipathConns)

	waitClosedByPeer(t, silent, timeout+time.Second)
	want.Timeout = 1
	eventually(t, func() bool { s := m.Stats(); return s.Rejected == want && s.ConnsPending == 0 }, "the silent client timed out")
	s = m.Stats()
	r := s.Rejected
	require.Equal(t, r.Timeout+r.NotSTUN+r.Username+r.TooLarge+r.Limit+r.Auth+r.Other, s.ConnsRejected)
	require.Equal(t, uint64(7), s.ConnsRejected)
	require.Equal(t, uint64(8), s.ConnsAccepted)

	require.NoError(t, client.Close())
	eventually(t, func() bool { return m.Stats().ConnsActive == 0 }, "the session's connection left")
	require.Equal(t, 1, m.Stats().PacketConns, "its PacketConn stays with its handle")
	require.NoError(t, pc.Close())
	eventually(t, func() bool { return m.Stats().PacketConns == 0 }, "and closes with it")
}

// --- 5. Fuzzing admission ------------------------------------------------------

// admissionVerdict is what the mux must decide for a connection whose whole
// stream is stream, followed by EOF: the reason it is rejected, or, when
// admitted, its ufrag, first frame and the complete frames after it.
func admissionVerdict(stream []byte, lookup func(string) (string, bool)) (reason rejectReason, ufrag string, first []byte, rest [][]byte) {
	if len(stream) < FrameHeaderSize {
		return rejectOther, "", nil, nil // EOF before or inside the header
	}
	n := int(binary.BigEndian.Uint16(stream))
	if n > DefaultMaxFirstFrameSize {
		return rejectTooLarge, "", nil, nil
	}
	if len(stream)-FrameHeaderSize < n {
		return rejectOther, "", nil, nil // EOF inside the first frame
	}
	first = stream[FrameHeaderSize : FrameHeaderSize+n]
	u, reason := parseBindingRequest(first)
	if reason != rejectNone {
		return reason, "", nil, nil
	}
	password, ok := lookup(string(u))
	if !ok || !verifyIntegrity(first, password) {
		return rejectAuth, "", nil, nil
	}
	rest, _ = referenceFrames(stream[FrameHeaderSize+n:], MaxFramePayload)
	return rejectNone, string(u), first, rest
}

func rejectedCount(r RejectedStats, reason rejectReason) uint64 {
	switch reason {
	case rejectTimeout:
		return r.Timeout
	case rejectNotSTUN:
		return r.NotSTUN
	case rejectUsername:
		return r.Username
	case rejectTooLarge:
		return r.TooLarge
	case rejectLimit:
		return r.Limit
	case rejectAuth:
		return r.Auth
	case rejectEvicted:
		return r.Evicted
	case rejectOther:
		return r.Other
	}
	return 0
}

// FuzzFirstFrameAdmission feeds arbitrary bytes, then EOF, as a
// connection's stream into a mux with PasswordLookup, and checks that the
// mux admits exactly the connections whose first frame is a valid Binding
// request with valid credentials, delivering that frame and every complete
// later one, and otherwise counts exactly one rejection and keeps no state.
func FuzzFirstFrameAdmission(f *testing.F) {
	valid := frame(bindingRequest(f, "srv"))
	f.Add(valid)
	f.Add(append(append([]byte{}, valid...), append(frame([]byte("next")), frame(nil)...)...))
	f.Add(append(append([]byte{}, valid...), 0x00, 0x05, 'x')) // then a partial frame
	f.Add(frame(bindingRequest(f, "stranger")))                // unknown ufrag
	f.Add(frame(bindingRequestWith(f, stun.NewUsername("srv:peer"), stun.NewShortTermIntegrity("wrong"), stun.Fingerprint)))
	f.Add(frame(bindingRequestWith(f, stun.NewUsername("srv:peer"), stun.Fingerprint))) // no integrity
	badFingerprint := frame(bindingRequest(f, "srv"))
	badFingerprint[len(badFingerprint)-1] ^= 1
	f.Add(badFingerprint)
	f.Add(frame(bindingRequestWith(f, stun.Fingerprint)))                     // no USERNAME
	f.Add(valid[:len(valid)/2])                                               // truncated
	f.Add([]byte(httpRequestBytes))                                           // garbage
	f.Add([]byte{0xff, 0xff, 0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42}) // oversize header
	f.Add([]byte{0x08, 0x01})                                                 // just over the bound
	f.Add([]byte{})
	f.Add([]byte{0x00})

	lookup := func(ufrag string) (string, bool) { return "pwd", ufrag != "stranger" }
	f.Fuzz(func(t *testing.T, stream []byte) {
		ln := newPipeListener("127.0.0.1:443")
		m := NewTCPMuxDefault(TCPMuxParams{
			Listener:               ln,
			Logger:                 quietLogger(),
			PasswordLookup:         lookup,
			MaxConnectionsPerUfrag: 1,
			FirstStunBindTimeout:   2 * time.Second, // every stream ends with EOF well before
		})
		// An unclaimed PacketConn closes with its last connection (SPEC 3),
		// and the stream ends with EOF, so an admitted ufrag is claimed
		// first.
		wantReason, ufrag, first, rest := admissionVerdict(stream, lookup)
		var pc net.PacketConn
		if wantReason == rejectNone {
			var err error
			pc, err = m.GetConnByUfrag(ufrag, false, net.IPv4(127, 0, 0, 1))
			require.NoError(t, err)
			defer pc.Close()
		}
		client := ln.dial(t, "127.0.0.1:443", "192.0.2.1:1000")
		written := make(chan struct{})
		go func() {
			defer close(written)
			if len(stream) > 0 {
				_, _ = client.Write(stream) // fails once the mux closes its end
			}
			_ = client.Close()
		}()
		defer func() {
			require.NoError(t, m.Close())
			<-written
		}()

		require.Eventually(t, func() bool {
			s := m.Stats()
			return s.ConnsRejected > 0 || s.PacketsReceived > 0
		}, 5*time.Second, 100*time.Microsecond, "no verdict")

		s := m.Stats()
		admitted := s.ConnsRejected == 0
		require.Equal(t, wantReason == rejectNone, admitted, "want %v, stats %+v, stream %x", wantReason, s, stream)
		if !admitted {
			require.Equal(t, uint64(1), s.ConnsRejected)
			require.Equal(t, uint64(1), rejectedCount(s.Rejected, wantReason), "want %v, got %+v", wantReason, s.Rejected)
			require.Zero(t, s.PacketsReceived)
			require.Zero(t, s.ConnsActive)
			require.Zero(t, s.PacketConns, "no per-ufrag state for a rejected connection")
			require.Zero(t, s.UnclaimedExpired)
			return
		}
		_, reason := parseBindingRequest(first)
		require.Equal(t, rejectNone, reason)
		require.True(t, verifyIntegrity(first, "pwd"))
		oracleUfrag, ok := oracleBindingRequest(first)
		require.True(t, ok)
		require.Equal(t, string(oracleUfrag), ufrag)
		require.Equal(t, 1, m.Stats().PacketConns, "the connection joined the claimed PacketConn")
		buf := make([]byte, MaxFramePayload)
		want := 0
		for i, p := range append([][]byte{first}, rest...) {
			require.NoError(t, pc.SetReadDeadline(time.Now().Add(5*time.Second)))
			n, from, err := pc.ReadFrom(buf)
			require.NoError(t, err, "packet %d", i)
			require.Equal(t, p, buf[:n], "packet %d", i)
			require.Equal(t, "192.0.2.1:1000", from.String())
			want += len(p)
		}
		<-written
		eventually(t, func() bool { return m.Stats().ConnsActive == 0 }, "removed at EOF")
		s = m.Stats()
		require.Equal(t, uint64(1+len(rest)), s.PacketsReceived)
		require.Equal(t, uint64(want), s.BytesReceived)
	})
}

// --- 6. Soak ---------------------------------------------------------------------

// Soak sizes: connections, ufrags they spread over, sample connections with
// traffic (the first of each ufrag) and round trips per sample connection.
const (
	soakConns   = 10000
	soakUfrags  = 100
	soakSample  = 100
	soakRounds  = 200
	soakDialers = 16
)

func soakUfrag(i int) string { return fmt.Sprintf("soak%03d", i%soakUfrags) }

// TestSoak attaches 10,000 loopback connections to one mux, runs echo
// traffic on a sample of them, and reports the mux process's memory and
// goroutines per connection. The clients live in a child process (this
// test binary running TestSoakClients), so that each process stays within
// its file limit and the figures are the server side's alone. Opt-in:
// TCPMUX_SOAK=1.
func TestSoak(t *testing.T) {
	if os.Getenv("TCPMUX_SOAK") != "1" {
		t.Skip("opt-in soak: set TCPMUX_SOAK=1")
	}
	raiseNoFile(t, soakConns+1024)

	type mem struct {
		heap, stack uint64
		goroutines  int
	}
	measure := func() mem {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return mem{ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine()}
	}
	perConn := func(a, b mem) (heap, stack, goroutines float64) {
		return (float64(b.heap) - float64(a.heap)) / soakConns,
			(float64(b.stack) - float64(a.stack)) / soakConns,
			float64(b.goroutines-a.goroutines) / soakConns
	}

	// Control: the same connections held by a bare accept loop, to tell
	// the mux's share from that of the sockets themselves.
	ctlLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	held := make(chan []net.Conn, 1)
	go func() {
		var cs []net.Conn
		for len(cs) < soakConns {
			c, err := ctlLn.Accept()
			if err != nil {
				break
			}
			cs = append(cs, c)
		}
		held <- cs
	}()
	base := measure()
	ctlClients := startSoakClients(t, ctlLn.Addr().String())
	ctlClients.expect(t, "dialed")
	var servers []net.Conn
	select {
	case servers = <-held:
	case <-time.After(60 * time.Second):
		_ = ctlLn.Close()
		t.Fatal("control listener did not get every connection")
	}
	ctl := measure()
	ctlHeap, ctlStack, _ := perConn(base, ctl)
	ctlClients.stop(t)
	for _, c := range servers {
		_ = c.Close()
	}
	_ = ctlLn.Close()

	m := newTestMux(t, TCPMuxParams{})
	for i := range soakUfrags {
		pc, err := m.GetConnByUfrag(soakUfrag(i), false, net.IPv4(127, 0, 0, 1))
		require.NoError(t, err)
		startEcho(t, pc)
	}
	before := measure()
	start := time.Now()
	clients := startSoakClients(t, m.LocalAddr().String())
	clients.expect(t, "dialed")
	require.Eventually(t, func() bool { return m.Stats().ConnsActive == soakConns }, 60*time.Second, 10*time.Millisecond,
		"not all attached")
	t.Logf("%d connections attached in %v", soakConns, time.Since(start).Round(time.Millisecond))
	idle := measure()
	heap, stack, gor := perConn(before, idle)
	t.Logf("mux process, idle, per connection: heap %.0f B, stack %.0f B, total %.0f B, goroutines %.3f",
		heap, stack, heap+stack, gor)
	t.Logf("bare accept loop, per connection: heap %.0f B, stack %.0f B; the mux's own share: %.0f B",
		ctlHeap, ctlStack, heap+stack-ctlHeap-ctlStack)
	require.LessOrEqual(t, idle.goroutines-before.goroutines, soakConns+10, "at most one goroutine per idle connection")

	clients.send(t, "traffic")
	line := clients.expect(t, "traffic")
	var ok int
	var nanos int64
	_, err = fmt.Sscanf(line, "traffic %d %d", &ok, &nanos)
	require.NoError(t, err, line)
	busy := time.Duration(nanos)
	require.Equal(t, soakSample*soakRounds, ok, "every sample round trip completed")
	t.Logf("%d round trips on %d of %d connections in %v: %.0f round trips/s",
		ok, soakSample, soakConns, busy.Round(time.Millisecond), float64(ok)/busy.Seconds())
	after := measure()
	heap, stack, gor = perConn(before, after)
	t.Logf("after traffic, per connection: heap %.0f B, stack %.0f B, goroutines %.3f; %+v", heap, stack, gor, m.Stats())
	require.LessOrEqual(t, after.goroutines-before.goroutines, soakConns+10, "still at most one goroutine per idle connection")

	start = time.Now()
	clients.stop(t)
	require.Eventually(t, func() bool { return m.Stats().ConnsActive == 0 }, 60*time.Second, 10*time.Millisecond)
	t.Logf("all %d clients left; detached in %v", soakConns, time.Since(start).Round(time.Millisecond))
	// +1: Eventually runs the condition in a goroutine of its own.
	if !assert.Eventually(t, func() bool { return runtime.NumGoroutine() <= before.goroutines+1 }, 10*time.Second, 10*time.Millisecond,
		"the mux's goroutines exit with their connections") {
		buf := make([]byte, 1<<20)
		t.Logf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before.goroutines, buf[:runtime.Stack(buf, true)])
	}
	closeWithin(t, m, 5*time.Second)
}

// soakClients is the child process that plays the soak's clients.
type soakClients struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func startSoakClients(t *testing.T, addr string) *soakClients {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSoakClients$", "-test.count=1", "-test.v", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), "TCPMUX_SOAK_CLIENTS_ADDR="+addr)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c := &soakClients{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "SOAK: "); ok {
				c.lines <- line
			}
		}
	}()
	t.Cleanup(func() { c.stop(t) })
	return c
}

func (c *soakClients) send(t *testing.T, cmd string) {
	t.Helper()
	_, err := fmt.Fprintln(c.stdin, cmd)
	require.NoError(t, err)
}

// expect waits for the child's next report, which must start with word.
func (c *soakClients) expect(t *testing.T, word string) string {
	t.Helper()
	select {
	case line, ok := <-c.lines:
		require.True(t, ok, "the client process ended")
		require.True(t, strings.HasPrefix(line, word), "client process: %s", line)
		return line
	case <-time.After(2 * time.Minute):
		t.Fatalf("no %q from the client process", word)
		return ""
	}
}

// stop closes the child's input, which makes it close its connections and
// exit, and waits for it. Idempotent.
func (c *soakClients) stop(t *testing.T) {
	if c.cmd.ProcessState != nil {
		return
	}
	_ = c.stdin.Close()
	for range c.lines { // drain until the child's stdout closes
	}
	if err := c.cmd.Wait(); err != nil {
		t.Errorf("client process: %v", err)
	}
}

// TestSoakClients is TestSoak's child process: it dials every connection
// with its Binding request, reports "dialed", then runs the sample's round
// trips on "traffic", and closes everything when its input ends.
func TestSoakClients(t *testing.T) {
	addr := os.Getenv("TCPMUX_SOAK_CLIENTS_ADDR")
	if addr == "" {
		t.Skip("the client process of TestSoak")
	}
	report := func(format string, args ...any) { fmt.Printf("SOAK: "+format+"\n", args...) }
	firsts := make([][]byte, soakUfrags)
	for i := range firsts {
		firsts[i] = frame(bindingRequest(t, soakUfrag(i)))
	}
	conns := make([]net.Conn, soakConns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	var wg sync.WaitGroup
	var dialErr atomic.Pointer[error]
	for w := range soakDialers {
		wg.Go(func() {
			for i := w; i < soakConns && dialErr.Load() == nil; i += soakDialers {
				c, err := net.Dial("tcp", addr)
				if err == nil {
					conns[i] = c
					_, err = c.Write(firsts[i%soakUfrags])
				}
				if err != nil {
					dialErr.Store(&err)
				}
			}
		})
	}
	wg.Wait()
	if err := dialErr.Load(); err != nil {
		report("error dialing: %v", *err)
		t.Fatal(*err)
	}
	report("dialed %d", soakConns)

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "traffic" {
			continue
		}
		var done atomic.Int64
		errs := make(chan error, soakSample)
		start := time.Now()
		for i := range soakSample {
			wg.Go(func() {
				for r := range soakRounds {
					if err := roundTrip(conns[i], []byte(fmt.Sprintf("conn %d round %d", i, r))); err != nil {
						errs <- fmt.Errorf("conn %d round %d: %w", i, r, err)
						return
					}
					done.Add(1)
				}
			})
		}
		wg.Wait()
		busy := time.Since(start)
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		report("traffic %d %d", done.Load(), busy.Nanoseconds())
	}
}
