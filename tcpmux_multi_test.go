package tcpmux

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// Tests of SPEC 5's MultiTCPMuxDefault, with real muxes on loopback and
// with fake muxes that record what reaches them.

// multiFakeMux is a TCPMux that records its calls. GetConnByUfrag fails with
// getErr if set; Close returns closeErr.
type multiFakeMux struct {
	getErr   error
	closeErr error
	addr     net.Addr

	mu      sync.Mutex
	gets    []string
	removed []string
	closes  int
	conns   []*multiFakePacketConn
}

var _ TCPMux = (*multiFakeMux)(nil)

func (f *multiFakeMux) GetConnByUfrag(ufrag string, _ bool, _ net.IP) (net.PacketConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets = append(f.gets, ufrag)
	if f.getErr != nil {
		return nil, f.getErr
	}
	c := &multiFakePacketConn{}
	f.conns = append(f.conns, c)
	return c, nil
}

func (f *multiFakeMux) RemoveConnByUfrag(ufrag string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = append(f.removed, ufrag)
}

func (f *multiFakeMux) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
	return f.closeErr
}

func (f *multiFakeMux) LocalAddr() net.Addr { return f.addr }

func (f *multiFakeMux) snapshot() (gets, removed []string, closes int, conns []*multiFakePacketConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.gets...), append([]string(nil), f.removed...), f.closes, append([]*multiFakePacketConn(nil), f.conns...)
}

// multiFakePacketConn counts its Close calls; its other methods are not used.
type multiFakePacketConn struct {
	net.PacketConn
	closes atomic.Int32
}

func (c *multiFakePacketConn) Close() error {
	c.closes.Add(1)
	return nil
}

// multiListen listens on ip (port 0), skipping the test if ip is not
// available.
func multiListen(t *testing.T, ip string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp4", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Skipf("cannot listen on %s: %v", ip, err)
	}
	return ln
}

func multiNewMux(t *testing.T, ip string) *TCPMuxDefault {
	t.Helper()
	return newTestMux(t, TCPMuxParams{Listener: multiListen(t, ip)})
}

func multiPort(a net.Addr) int { return a.(*net.TCPAddr).Port }

func TestMultiGetConnByUfragUsesFirstMux(t *testing.T) {
	t.Run("real", func(t *testing.T) {
		m1, m2 := multiNewMux(t, "127.0.0.1"), multiNewMux(t, "127.0.0.1")
		multi := NewMultiTCPMuxDefault(m1, m2)
		pc, err := multi.GetConnByUfrag("first", false, net.IPv4(127, 0, 0, 1))
		require.NoError(t, err)
		defer pc.Close()
		require.Equal(t, multiPort(m1.LocalAddr()), multiPort(pc.LocalAddr()))
		require.Equal(t, 1, m1.Stats().PacketConns)
		require.Equal(t, 0, m2.Stats().PacketConns, "the second mux is not asked")

		client := dialUfrag(t, m1, "first")
		got, from := readPacket(t, pc)
		require.Equal(t, bindingRequest(t, "first")[:4], got[:4])
		require.Equal(t, client.LocalAddr().String(), from.String())
	})
	t.Run("fake", func(t *testing.T) {
		f1, f2 := &multiFakeMux{}, &multiFakeMux{}
		multi := NewMultiTCPMuxDefault(f1, f2)
		pc, err := multi.GetConnByUfrag("u", false, net.IPv4(127, 0, 0, 1))
		require.NoError(t, err)
		gets1, _, _, conns1 := f1.snapshot()
		gets2, _, _, _ := f2.snapshot()
		require.Equal(t, []string{"u"}, gets1)
		require.Empty(t, gets2)
		require.Same(t, conns1[0], pc)

		f1.getErr = errors.New("first mux refuses")
		_, err = multi.GetConnByUfrag("v", false, net.IPv4(127, 0, 0, 1))
		require.ErrorIs(t, err, f1.getErr, "the first mux's error is returned, with no fallback to the others")
		gets2, _, _, _ = f2.snapshot()
		require.Empty(t, gets2)
	})
}

func TestMultiGetAllConnsOnePerMux(t *testing.T) {
	m1, m2 := multiNewMux(t, "127.0.0.1"), multiNewMux(t, "127.0.0.1")
	multi := NewMultiTCPMuxDefault(m1, m2)
	conns, err := multi.GetAllConns("all", false, net.IPv4(127, 0, 0, 1))
	require.NoError(t, err)
	require.Len(t, conns, 2)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	require.Equal(t, multiPort(m1.LocalAddr()), multiPort(conns[0].LocalAddr()), "handles come in mux order")
	require.Equal(t, multiPort(m2.LocalAddr()), multiPort(conns[1].LocalAddr()))

	// Each handle reads the traffic of its own listener, and only that.
	c2 := dialUfrag(t, m2, "all")
	c1 := dialUfrag(t, m1, "all")
	for i, c := range []net.Conn{c1, c2} {
		_, err := c.Write(frame([]byte("data")))
		require.NoError(t, err)
		for _, want := range []string{string(bindingRequest(t, "all")[:2]), "data"} {
			got, from := readPacket(t, conns[i])
			require.Equal(t, c.LocalAddr().String(), from.String(), "handle %d read a packet of another listener", i)
			require.Equal(t, want, string(got[:len(want)]))
		}
	}
	for i, m := range []*TCPMuxDefault{m1, m2} {
		st := m.Stats()
		require.Equal(t, 1, st.PacketConns, "mux %d", i)
		require.Equal(t, 1, st.ConnsActive, "mux %d", i)
		require.Equal(t, uint64(2), st.PacketsReceived, "mux %d", i)
	}
	// And writes go out through the right one.
	_, err = conns[1].WriteTo([]byte("to c2"), c2.LocalAddr())
	require.NoError(t, err)
	require.Equal(t, "to c2", string(readFrame(t, c2)))
	_, err = conns[0].WriteTo([]byte("x"), c2.LocalAddr())
	require.ErrorIs(t, err, ErrNoConnForAddr)
}

func TestMultiGetAllConnsAllOrNothing(t *testing.T) {
	t.Run("fake", func(t *testing.T) {
		errRefused := errors.New("third mux refuses")
		f1, f2, f3, f4 := &multiFakeMux{}, &multiFakeMux{}, &multiFakeMux{getErr: errRefused}, &multiFakeMux{}
		multi := NewMultiTCPMuxDefault(f1, f2, f3, f4)
		conns, err := multi.GetAllConns("u", false, net.IPv4(127, 0, 0, 1))
		require.ErrorIs(t, err, errRefused)
		require.Empty(t, conns)
		for i, f := range []*multiFakeMux{f1, f2} {
			_, _, _, taken := f.snapshot()
			require.Len(t, taken, 1, "mux %d", i)
			require.Equal(t, int32(1), taken[0].closes.Load(), "the handle taken from mux %d is closed once", i)
		}
		gets4, _, _, _ := f4.snapshot()
		require.Empty(t, gets4, "no handle is taken after the failure")
	})
	t.Run("real first mux", func(t *testing.T) {
		m1 := multiNewMux(t, "127.0.0.1")
		errRefused := errors.New("second mux refuses")
		multi := NewMultiTCPMuxDefault(m1, &multiFakeMux{getErr: errRefused})
		conns, err := multi.GetAllConns("u", false, net.IPv4(127, 0, 0, 1))
		require.ErrorIs(t, err, errRefused)
		require.Empty(t, conns)
		require.Equal(t, 0, m1.Stats().PacketConns, "the first mux's PacketConn is released")
	})
}

func TestMultiRemoveConnByUfragReachesEveryMux(t *testing.T) {
	t.Run("fake", func(t *testing.T) {
		f1, f2, f3 := &multiFakeMux{}, &multiFakeMux{}, &multiFakeMux{}
		NewMultiTCPMuxDefault(f1, f2, f3).RemoveConnByUfrag("gone")
		for i, f := range []*multiFakeMux{f1, f2, f3} {
			_, removed, _, _ := f.snapshot()
			require.Equal(t, []string{"gone"}, removed, "mux %d", i)
		}
	})
	t.Run("real", func(t *testing.T) {
		m1, m2 := multiNewMux(t, "127.0.0.1"), multiNewMux(t, "127.0.0.1")
		multi := NewMultiTCPMuxDefault(m1, m2)
		conns, err := multi.GetAllConns("gone", false, net.IPv4(127, 0, 0, 1))
		require.NoError(t, err)
		keep, err := m2.GetConnByUfrag("kept", false, net.IPv4(127, 0, 0, 1))
		require.NoError(t, err)
		defer keep.Close()
		c1, c2 := dialUfrag(t, m1, "gone"), dialUfrag(t, m2, "gone")
		readPacket(t, conns[0])
		readPacket(t, conns[1])

		multi.RemoveConnByUfrag("gone")
		for i, c := range conns {
			_, _, err := c.ReadFrom(make([]byte, 64))
			pcRequireClosed(t, err, "handle %d after RemoveConnByUfrag", i)
		}
		waitClosedByPeer(t, c1, time.Second)
		waitClosedByPeer(t, c2, time.Second)
		require.Equal(t, 0, m1.Stats().PacketConns)
		require.Equal(t, 1, m2.Stats().PacketConns, "other ufrags are untouched")
		multi.RemoveConnByUfrag("gone") // idempotent
	})
}

func TestMultiCloseReachesEveryMuxAndJoinsErrors(t *testing.T) {
	t.Run("fake", func(t *testing.T) {
		errA, errB := errors.New("close A"), errors.New("close B")
		fA, fOK, fB := &multiFakeMux{closeErr: errA}, &multiFakeMux{}, &multiFakeMux{closeErr: errB}
		err := NewMultiTCPMuxDefault(fA, fOK, fB).Close()
		require.ErrorIs(t, err, errA)
		require.ErrorIs(t, err, errB)
		for i, f := range []*multiFakeMux{fA, fOK, fB} {
			_, _, closes, _ := f.snapshot()
			require.Equal(t, 1, closes, "mux %d is closed once", i)
		}
		require.NoError(t, NewMultiTCPMuxDefault(&multiFakeMux{}, &multiFakeMux{}).Close())
	})
	t.Run("real", func(t *testing.T) {
		m1, m2 := multiNewMux(t, "127.0.0.1"), multiNewMux(t, "127.0.0.1")
		multi := NewMultiTCPMuxDefault(m1, m2)
		conns, err := multi.GetAllConns("u", false, net.IPv4(127, 0, 0, 1))
		require.NoError(t, err)
		require.NoError(t, multi.Close())
		for i, m := range []*TCPMuxDefault{m1, m2} {
			_, err := m.GetConnByUfrag("u", false, net.IPv4(127, 0, 0, 1))
			pcRequireClosed(t, err, "mux %d after the multi mux closed", i)
			_, _, err = conns[i].ReadFrom(make([]byte, 64))
			pcRequireClosed(t, err, "handle %d after the multi mux closed", i)
		}
		_, err = multi.GetConnByUfrag("u", false, net.IPv4(127, 0, 0, 1))
		pcRequireClosed(t, err)
		_, err = multi.GetAllConns("u", false, net.IPv4(127, 0, 0, 1))
		pcRequireClosed(t, err)
	})
}

func TestMultiLocalAddr(t *testing.T) {
	t.Run("same IP", func(t *testing.T) {
		m1, m2 := multiNewMux(t, "127.0.0.1"), multiNewMux(t, "127.0.0.1")
		addr, ok := NewMultiTCPMuxDefault(m1, m2).LocalAddr().(*net.TCPAddr)
		require.True(t, ok)
		require.True(t, addr.IP.Equal(net.IPv4(127, 0, 0, 1)), "got %v", addr)
		require.Equal(t, multiPort(m1.LocalAddr()), addr.Port)
	})
	t.Run("different loopback IPs", func(t *testing.T) {
		m1, m2 := multiNewMux(t, "127.0.0.1"), multiNewMux(t, "127.0.0.2")
		addr, ok := NewMultiTCPMuxDefault(m1, m2).LocalAddr().(*net.TCPAddr)
		require.True(t, ok)
		require.True(t, addr.IP.IsUnspecified(), "got %v", addr)
		require.Equal(t, multiPort(m1.LocalAddr()), addr.Port)
	})
	for _, tc := range []struct {
		name  string
		addrs []string
		want  string // "" when only unspecified-ness is checked
	}{
		{"one mux", []string{"10.0.0.1:4000"}, "10.0.0.1:4000"},
		{"same IPv4", []string{"10.0.0.1:4000", "10.0.0.1:4001", "10.0.0.1:4002"}, "10.0.0.1:4000"},
		{"different IPv4", []string{"10.0.0.1:4000", "10.0.0.2:4001"}, "0.0.0.0:4000"},
		{"differs last", []string{"10.0.0.1:4000", "10.0.0.1:4001", "10.0.0.3:4002"}, "0.0.0.0:4000"},
		{"same IPv6", []string{"[fd00::1]:4000", "[fd00::1]:4001"}, "[fd00::1]:4000"},
		{"different IPv6", []string{"[fd00::1]:4000", "[fd00::2]:4001"}, "[::]:4000"},
		{"IPv4 and IPv4-mapped", []string{"10.0.0.1:4000", "[::ffff:10.0.0.1]:4001"}, "10.0.0.1:4000"},
		{"mixed families", []string{"10.0.0.1:4000", "[fd00::1]:4001"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var muxes []TCPMux
			for _, a := range tc.addrs {
				muxes = append(muxes, newTestMux(t, TCPMuxParams{Listener: newPipeListener(a)}))
			}
			addr, ok := NewMultiTCPMuxDefault(muxes...).LocalAddr().(*net.TCPAddr)
			require.True(t, ok, "LocalAddr is a *net.TCPAddr")
			require.Equal(t, 4000, addr.Port, "the first mux's port")
			if tc.want == "" {
				require.True(t, addr.IP.IsUnspecified(), "got %v", addr)
				return
			}
			require.Equal(t, tc.want, addr.String())
		})
	}
}

func TestMultiNoMuxes(t *testing.T) {
	multi := NewMultiTCPMuxDefault()
	_, err := multi.GetConnByUfrag("u", false, net.IPv4(127, 0, 0, 1))
	require.ErrorIs(t, err, ErrNoMuxes)
	conns, err := multi.GetAllConns("u", false, net.IPv4(127, 0, 0, 1))
	require.ErrorIs(t, err, ErrNoMuxes)
	require.Empty(t, conns)
	multi.RemoveConnByUfrag("u")
	require.NoError(t, multi.Close())
}

// The multi mux's handles are the muxes' own: pion's agent type-asserts them.
func TestMultiHandlesImplementAddrPort(t *testing.T) {
	m1 := multiNewMux(t, "127.0.0.1")
	conns, err := NewMultiTCPMuxDefault(m1).GetAllConns("ap", false, net.IPv4(127, 0, 0, 1))
	require.NoError(t, err)
	defer conns[0].Close()
	_, ok := conns[0].(pcAddrPortConn)
	require.True(t, ok)
}

// A PasswordLookup may close the MultiTCPMuxDefault holding its mux: Close
// reaches every mux and returns, and nothing is left running.
func TestMultiCloseFromPasswordLookup(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	var multi atomic.Pointer[MultiTCPMuxDefault]
	closed := make(chan error, 1)
	first := lookupMux(t, func(*TCPMuxDefault) (string, bool) {
		closed <- multi.Load().Close()
		return "pwd", true
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	second := NewTCPMuxDefault(TCPMuxParams{Listener: ln, Logger: quietLogger()})
	multi.Store(NewMultiTCPMuxDefault(first, second))

	client := dialUfrag(t, first, "srv")
	waitCloseFromLookup(t, closed)
	waitClosedByPeer(t, client, time.Second)
	goleak.VerifyNone(t, leaks)
	for _, m := range []*TCPMuxDefault{first, second} {
		_, err := m.GetConnByUfrag("srv", false, nil)
		require.ErrorIs(t, err, net.ErrClosed)
	}
	require.Equal(t, uint64(1), multi.Load().Stats().Rejected.Other)
}
