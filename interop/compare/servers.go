package compare

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // STUN MESSAGE-INTEGRITY is HMAC-SHA1 by definition
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/icetcp/tcpmux"
	"github.com/pion/ice/v4"
	"github.com/pion/logging"
)

// Impl names the three servers compared.
type Impl string

const (
	Pion Impl = "pion" // pion/ice v4's ice.TCPMuxDefault
	Ours Impl = "ours" // github.com/icetcp/tcpmux
	Ref  Impl = "ref"  // plain framed TCP, no mux: the floor
)

// Impls is the order of the table's columns.
var Impls = []Impl{Pion, Ours, Ref}

// server is what a workload needs from a mux: per-ufrag PacketConns, as an
// ICE agent gets them with GetConnByUfrag.
type server interface {
	Get(ufrag string) (net.PacketConn, error)
	Close() error
}

// MuxParams are the TCPMuxParams given to both muxes, like a drop-in
// replacement keeps the application's settings.
type MuxParams struct {
	ReadBufferSize  int
	WriteBufferSize int
}

var loopback = net.IPv4(127, 0, 0, 1)

func quietLogger() logging.LeveledLogger {
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelError
	return lf.NewLogger("muxbench")
}

func newServer(impl Impl, ln net.Listener, p MuxParams) server {
	switch impl {
	case Pion:
		return &pionServer{ice.NewTCPMuxDefault(ice.TCPMuxParams{
			Listener:        ln,
			Logger:          quietLogger(),
			ReadBufferSize:  p.ReadBufferSize,
			WriteBufferSize: p.WriteBufferSize,
		})}
	case Ours:
		return &oursServer{tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{
			Listener:        ln,
			Logger:          quietLogger(),
			ReadBufferSize:  p.ReadBufferSize,
			WriteBufferSize: p.WriteBufferSize,
		})}
	case Ref:
		return newRefServer(ln)
	}
	panic("unknown impl " + impl)
}

type pionServer struct{ m *ice.TCPMuxDefault }

func (s *pionServer) Get(ufrag string) (net.PacketConn, error) {
	return s.m.GetConnByUfrag(ufrag, false, loopback)
}
func (s *pionServer) Close() error { return s.m.Close() }

type oursServer struct{ m *tcpmux.TCPMuxDefault }

func (s *oursServer) Get(ufrag string) (net.PacketConn, error) {
	return s.m.GetConnByUfrag(ufrag, false, loopback)
}
func (s *oursServer) Close() error { return s.m.Close() }

// isDrop tells a frame dropped by a full write buffer (buffered mode) from
// a real failure.
func isDrop(err error) bool {
	return errors.Is(err, tcpmux.ErrWriteBufferFull) ||
		err.Error() == "packetio.Buffer is full, discarding write" // pion's packetio.ErrFull
}

// refServer is the reference: plain framed TCP without a mux, the floor.
// Each accepted connection's first frame names the ufrag whose PacketConn
// it becomes; that PacketConn then reads frames straight from the socket
// through a bufio.Reader of refReadBuffer bytes in the caller's goroutine
// (no hand-off; a frame is copied once, into the caller's buffer) and
// writes each frame with one Write. A connection holds its bufio.Reader
// only from its first byte after the Binding request on: an idle one holds
// its goroutine, blocked in a 1-byte Read, and no buffer, as a frugal
// plain server would.
type refServer struct {
	ln      net.Listener
	mu      sync.Mutex
	closed  bool
	waiting map[string]*refConn
	wg      sync.WaitGroup
}

// refReadBuffer is the floor's bufio.Reader size. 16 KiB and 64 KiB were
// measured side by side (ingress, 1 and 16 connections, 64 to 8000 B);
// see the package doc.
const refReadBuffer = 64 << 10

// refReaders recycles the bufio.Readers that admit reads first frames
// with, so that accepting costs no buffer per connection.
var refReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, refReadBuffer) }}

func newRefServer(ln net.Listener) *refServer {
	s := &refServer{ln: ln, waiting: make(map[string]*refConn)}
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

func (s *refServer) Get(ufrag string) (net.PacketConn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, net.ErrClosed
	}
	c := &refConn{ready: make(chan struct{}), done: make(chan struct{}), local: s.ln.Addr()}
	s.waiting[ufrag] = c
	return c, nil
}

func (s *refServer) Close() error {
	s.mu.Lock()
	s.closed = true
	conns := s.waiting
	s.waiting = nil
	s.mu.Unlock()
	err := s.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	s.wg.Wait()
	return err
}

func (s *refServer) acceptLoop() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.admit(conn)
		}()
	}
}

// admit reads the first frame and hands the connection to the PacketConn
// of its ufrag, with the bufio.Reader if that holds more bytes already.
func (s *refServer) admit(conn net.Conn) {
	br := refReaders.Get().(*bufio.Reader)
	br.Reset(conn)
	first, err := readFrame(br, nil)
	var ufrag string
	ok := err == nil
	if ok {
		ufrag, ok = ufragOf(first)
	}
	var c *refConn
	if ok {
		s.mu.Lock()
		c = s.waiting[ufrag]
		s.mu.Unlock()
	}
	keep := br.Buffered() > 0
	if !keep {
		br.Reset(nil)
		refReaders.Put(br)
		br = nil
	}
	if c == nil || !c.attach(conn, br, first) {
		_ = conn.Close()
	}
}

// readFrame reads one frame from br into b, or into a new slice if b is
// nil. A frame within the buffer is peeked and copied, one copy; a larger
// one is read through. A frame too large for b is skipped and reported
// with io.ErrShortBuffer; a stream ending inside a frame gives
// io.ErrUnexpectedEOF.
func readFrame(br *bufio.Reader, b []byte) ([]byte, error) {
	hdr, err := br.Peek(2)
	if err != nil {
		if err == io.EOF && br.Buffered() > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	size := int(binary.BigEndian.Uint16(hdr))
	if b == nil {
		b = make([]byte, size)
	}
	if size > len(b) {
		if _, err := br.Discard(2 + size); err != nil {
			return nil, noEOF(err)
		}
		return nil, io.ErrShortBuffer
	}
	if 2+size <= br.Size() {
		p, err := br.Peek(2 + size)
		if err != nil {
			return nil, noEOF(err)
		}
		copy(b, p[2:])
		_, _ = br.Discard(2 + size)
		return b[:size], nil
	}
	_, _ = br.Discard(2)
	if _, err := io.ReadFull(br, b[:size]); err != nil {
		return nil, noEOF(err)
	}
	return b[:size], nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

type refConn struct {
	ready    chan struct{} // closed once conn is attached
	attached atomic.Bool   // set just before ready is closed
	done     chan struct{}
	local    net.Addr

	mu        sync.Mutex
	conn      net.Conn
	closed    bool
	br        *bufio.Reader // nil until the connection's first byte after the Binding request
	first     []byte
	remote    *net.TCPAddr
	remoteAP  netip.AddrPort
	probe     [1]byte
	wmu       sync.Mutex
	wbuf      []byte
	closeOnce sync.Once
}

func (c *refConn) attach(conn net.Conn, br *bufio.Reader, first []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.conn != nil {
		return false
	}
	c.conn, c.br, c.first = conn, br, first
	c.remote = conn.RemoteAddr().(*net.TCPAddr)
	c.remoteAP = c.remote.AddrPort()
	c.attached.Store(true)
	close(c.ready)
	return true
}

// wait waits until the connection is attached or the PacketConn closed;
// once attached it costs one atomic load, not a select.
func (c *refConn) wait() error {
	if c.attached.Load() {
		return nil
	}
	select {
	case <-c.ready:
		return nil
	case <-c.done:
		return net.ErrClosed
	}
}

func (c *refConn) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	if err := c.wait(); err != nil {
		return 0, netip.AddrPort{}, err
	}
	if c.first != nil {
		n := copy(b, c.first)
		c.first = nil
		return n, c.remoteAP, nil
	}
	if c.br == nil {
		return c.readFirstBuffered(b)
	}
	p, err := readFrame(c.br, b)
	switch {
	case err == io.ErrShortBuffer:
		return 0, c.remoteAP, err
	case err != nil:
		return 0, netip.AddrPort{}, err
	}
	return len(p), c.remoteAP, nil
}

// readFirstBuffered reads the frame after the Binding request of a
// connection that had nothing more buffered: it waits for the frame's
// first byte without a buffer, then takes one for good.
func (c *refConn) readFirstBuffered(b []byte) (int, netip.AddrPort, error) {
	if _, err := io.ReadFull(c.conn, c.probe[:]); err != nil {
		return 0, netip.AddrPort{}, err
	}
	c.br = refReaders.Get().(*bufio.Reader)
	c.br.Reset(c.conn)
	lo, err := c.br.ReadByte()
	if err != nil {
		return 0, netip.AddrPort{}, noEOF(err)
	}
	size := int(c.probe[0])<<8 | int(lo)
	if size > len(b) {
		if _, err := c.br.Discard(size); err != nil {
			return 0, netip.AddrPort{}, noEOF(err)
		}
		return 0, c.remoteAP, io.ErrShortBuffer
	}
	if _, err := io.ReadFull(c.br, b[:size]); err != nil {
		return 0, netip.AddrPort{}, noEOF(err)
	}
	return size, c.remoteAP, nil
}

func (c *refConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, _, err := c.ReadFromAddrPort(b)
	if err != nil {
		return n, nil, err
	}
	return n, c.remote, nil
}

func (c *refConn) WriteToAddrPort(b []byte, _ netip.AddrPort) (int, error) {
	if err := c.wait(); err != nil {
		return 0, err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = binary.BigEndian.AppendUint16(c.wbuf[:0], uint16(len(b)))
	c.wbuf = append(c.wbuf, b...)
	if _, err := c.conn.Write(c.wbuf); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (c *refConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	return c.WriteToAddrPort(b, netip.AddrPort{})
}

func (c *refConn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		conn := c.conn
		c.mu.Unlock()
		close(c.done)
		if conn != nil {
			_ = conn.Close()
		}
	})
	return nil
}

func (c *refConn) LocalAddr() net.Addr                { return c.local }
func (c *refConn) SetDeadline(t time.Time) error      { return c.SetReadDeadline(t) }
func (c *refConn) SetReadDeadline(time.Time) error    { return nil }
func (c *refConn) SetWriteDeadline(t time.Time) error { return nil }

// STUN, just enough for the clients to open an ICE-TCP connection and for
// the reference server to route it.
const (
	stunMagicCookie  = 0x2112A442
	stunHeaderSize   = 20
	attrUsername     = 0x0006
	attrIntegrity    = 0x0008
	attrFingerprint  = 0x8028
	fingerprintXOR   = 0x5354554e
	stunBindingClass = 0x0001
)

// bindingRequest builds an ICE Binding request whose USERNAME is
// "ufrag:peer", with MESSAGE-INTEGRITY (password "password") and
// FINGERPRINT, as a pion agent sends it.
func bindingRequest(ufrag string, txID uint64) []byte {
	m := make([]byte, stunHeaderSize, 128)
	binary.BigEndian.PutUint16(m[0:], stunBindingClass)
	binary.BigEndian.PutUint32(m[4:], stunMagicCookie)
	binary.BigEndian.PutUint64(m[8:], txID)
	binary.BigEndian.PutUint32(m[16:], 0x6d757862) // "muxb"
	addAttr := func(typ uint16, v []byte) {
		m = binary.BigEndian.AppendUint16(m, typ)
		m = binary.BigEndian.AppendUint16(m, uint16(len(v)))
		m = append(m, v...)
		for len(m)%4 != 0 {
			m = append(m, 0)
		}
	}
	setLength := func(extra int) {
		binary.BigEndian.PutUint16(m[2:], uint16(len(m)-stunHeaderSize+extra))
	}
	addAttr(attrUsername, []byte(ufrag+":peer"))
	setLength(24)
	mac := hmac.New(sha1.New, []byte("password"))
	mac.Write(m)
	addAttr(attrIntegrity, mac.Sum(nil))
	setLength(8)
	var fp [4]byte
	binary.BigEndian.PutUint32(fp[:], crc32.ChecksumIEEE(m)^fingerprintXOR)
	addAttr(attrFingerprint, fp[:])
	return m
}

// ufragOf returns the ufrag of a Binding request's USERNAME.
func ufragOf(msg []byte) (string, bool) {
	if len(msg) < stunHeaderSize || binary.BigEndian.Uint32(msg[4:]) != stunMagicCookie {
		return "", false
	}
	for p := msg[stunHeaderSize:]; len(p) >= 4; {
		typ, n := binary.BigEndian.Uint16(p), int(binary.BigEndian.Uint16(p[2:]))
		if 4+n > len(p) {
			return "", false
		}
		if typ == attrUsername {
			v := string(p[4 : 4+n])
			for i := range len(v) {
				if v[i] == ':' {
					return v[:i], i > 0
				}
			}
			return v, v != ""
		}
		p = p[min(len(p), 4+(n+3)&^3):]
	}
	return "", false
}

func frameOf(p []byte) []byte {
	f, err := tcpmux.AppendFrame(nil, p)
	if err != nil {
		panic(fmt.Sprint("frame: ", err))
	}
	return f
}
