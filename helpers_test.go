package tcpmux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// quietLogger keeps test output readable; set TCPMUX_TEST_LOG=debug to see
// the mux's logs.
func quietLogger() logging.LeveledLogger {
	f := logging.NewDefaultLoggerFactory()
	f.DefaultLogLevel = logging.LogLevelError
	if os.Getenv("TCPMUX_TEST_LOG") == "debug" {
		f.DefaultLogLevel = logging.LogLevelDebug
	}
	return f.NewLogger("tcpmux")
}

// newTestMux starts a mux on a fresh loopback listener (network "tcp4" on
// 127.0.0.1 unless addr says otherwise) and closes it when the test ends.
func newTestMux(t testing.TB, params TCPMuxParams) *TCPMuxDefault {
	t.Helper()
	if params.Listener == nil {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		params.Listener = ln
	}
	if params.Logger == nil {
		params.Logger = quietLogger()
	}
	m := NewTCPMuxDefault(params)
	t.Cleanup(func() { require.NoError(t, m.Close()) })
	return m
}

// bindingRequest builds a valid ICE Binding request whose USERNAME is
// "ufrag:peer", with MESSAGE-INTEGRITY (password "pwd") and FINGERPRINT.
func bindingRequest(t testing.TB, ufrag string) []byte {
	t.Helper()
	return bindingRequestWith(t, stun.NewUsername(ufrag+":peer"), stun.NewShortTermIntegrity("pwd"), stun.Fingerprint)
}

func bindingRequestWith(t testing.TB, setters ...stun.Setter) []byte {
	t.Helper()
	all := append([]stun.Setter{stun.BindingRequest, stun.TransactionID}, setters...)
	msg, err := stun.Build(all...)
	require.NoError(t, err)
	return msg.Raw
}

func frame(p []byte) []byte {
	f, err := AppendFrame(nil, p)
	if err != nil {
		panic(err)
	}
	return f
}

// dial connects to the mux and sends first as its first frame.
func dial(t testing.TB, m *TCPMuxDefault, first []byte) net.Conn {
	t.Helper()
	return dialFrom(t, m, nil, first)
}

// dialFrom is dial from source address ip (nil: the system's choice;
// loopback accepts any 127.x source).
func dialFrom(t testing.TB, m *TCPMuxDefault, ip net.IP, first []byte) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 3 * time.Second}
	if ip != nil {
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	conn, err := d.Dial("tcp", m.LocalAddr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	if first != nil {
		_, err = conn.Write(frame(first))
		require.NoError(t, err)
	}
	return conn
}

// dialUfrag connects a client that announces ufrag.
func dialUfrag(t testing.TB, m *TCPMuxDefault, ufrag string) net.Conn {
	t.Helper()
	return dial(t, m, bindingRequest(t, ufrag))
}

// getConn claims (ufrag, IPv4, 127.0.0.1) and closes the handle at the end.
func getConn(t testing.TB, m *TCPMuxDefault, ufrag string) net.PacketConn {
	t.Helper()
	pc, err := m.GetConnByUfrag(ufrag, false, net.IPv4(127, 0, 0, 1))
	require.NoError(t, err)
	t.Cleanup(func() { _ = pc.Close() })
	return pc
}

// readPacket reads one packet with a generous deadline.
func readPacket(t testing.TB, pc net.PacketConn) ([]byte, net.Addr) {
	t.Helper()
	require.NoError(t, pc.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, MaxFramePayload)
	n, addr, err := pc.ReadFrom(buf)
	require.NoError(t, err)
	return buf[:n], addr
}

// readFrame reads one RFC 4571 frame from a client connection.
func readFrame(t testing.TB, conn net.Conn) []byte {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	var hdr [2]byte
	_, err := io.ReadFull(conn, hdr[:])
	require.NoError(t, err)
	p := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	_, err = io.ReadFull(conn, p)
	require.NoError(t, err)
	return p
}

// waitClosedByPeer waits until the mux closes conn, and fails the test if
// it takes longer than within.
func waitClosedByPeer(t testing.TB, conn net.Conn, within time.Duration) {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(within)); err != nil {
		return // net.Pipe refuses deadlines once the other end closed
	}
	_, err := io.Copy(io.Discard, conn)
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		t.Fatalf("connection still open after %v", within)
	}
}

// eventually polls cond, for observing counters that settle asynchronously.
func eventually(t testing.TB, cond func() bool, msg string) {
	t.Helper()
	require.Eventually(t, cond, 5*time.Second, time.Millisecond, msg)
}

// pipeListener is an in-memory net.Listener whose connections carry chosen
// addresses, for routing tests that need addresses loopback cannot give
// (other local IPs, IPv4-mapped IPv6, duplicates).
type pipeListener struct {
	addr   net.Addr
	conns  chan net.Conn
	once   sync.Once
	closed chan struct{}
}

func newPipeListener(addr string) *pipeListener {
	return &pipeListener{
		addr:   net.TCPAddrFromAddrPort(mustAddrPort(addr)),
		conns:  make(chan net.Conn),
		closed: make(chan struct{}),
	}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return l.addr }

// dial returns the client end of a connection from remote to local.
func (l *pipeListener) dial(t testing.TB, local, remote string) net.Conn {
	t.Helper()
	client, server := net.Pipe()
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	conn := &addrConn{Conn: server, local: net.TCPAddrFromAddrPort(mustAddrPort(local)), remote: net.TCPAddrFromAddrPort(mustAddrPort(remote))}
	select {
	case l.conns <- conn:
	case <-time.After(5 * time.Second):
		t.Fatal("mux did not accept")
	}
	return client
}

type addrConn struct {
	net.Conn
	local, remote net.Addr
}

func (c *addrConn) LocalAddr() net.Addr  { return c.local }
func (c *addrConn) RemoteAddr() net.Addr { return c.remote }

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

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
