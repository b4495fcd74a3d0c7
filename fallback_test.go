package tcpmux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// SPEC 2 (Fallback, FallbackListener): port sharing through the fallback
// listener, with a real HTTP(S) server on it.

// httpRequestBytes is the start of a plain HTTP request: not framed STUN.
const httpRequestBytes = "GET / HTTP/1.1\r\nHost: example\r\n\r\n"

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
