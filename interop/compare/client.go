package compare

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The clients run in a separate process, so that the server's CPU time
// (getrusage) and allocations are the mux's and the application's alone.
// The parent drives it with one JSON command per line on its stdin and
// reads one JSON reply per line from its stdout.

// Client modes, chosen when dialling.
const (
	modeBlast = "blast" // send frames of Size bytes as fast as possible after "go"
	modeDrain = "drain" // read and discard everything
	modeEcho  = "echo"  // after "go": send a frame, wait for its echo, repeat; record RTTs
	modeHold  = "hold"  // send the Binding request and stay idle
)

type command struct {
	Op       string   `json:"op"` // dial, go, mark, stop, exit
	Addr     string   `json:"addr,omitempty"`
	Ufrags   []string `json:"ufrags,omitempty"`
	Mode     string   `json:"mode,omitempty"`
	Size     int      `json:"size,omitempty"`
	Parallel int      `json:"parallel,omitempty"`
}

type reply struct {
	Err string `json:"err,omitempty"`
	// Echo round trips recorded since "mark", and their percentiles.
	Samples int   `json:"samples,omitempty"`
	P50     int64 `json:"p50_ns,omitempty"`
	P99     int64 `json:"p99_ns,omitempty"`
}

// RunClient is the client process: it serves commands from r until "exit"
// or EOF, replying on w.
func RunClient(r io.Reader, w io.Writer) error {
	_, _, _ = raiseFileLimit() // checked by dial, which says what it needs
	in := bufio.NewScanner(r)
	in.Buffer(make([]byte, 64<<10), 64<<20) // a dial command lists every ufrag
	enc := json.NewEncoder(w)
	var s *clientSession
	defer func() {
		if s != nil {
			s.stop()
		}
	}()
	for in.Scan() {
		var cmd command
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			return err
		}
		var rep reply
		var err error
		switch cmd.Op {
		case "dial":
			if s != nil {
				s.stop()
			}
			s, err = dialSession(cmd)
		case "go":
			if s != nil {
				s.start()
			}
		case "mark":
			if s != nil {
				s.mark.Add(1)
			}
		case "stop":
			if s != nil {
				rep = s.stop()
				s = nil
			}
		case "exit":
			return enc.Encode(rep)
		default:
			err = fmt.Errorf("unknown op %q", cmd.Op)
		}
		if err != nil {
			rep.Err = err.Error()
		}
		if err := enc.Encode(rep); err != nil {
			return err
		}
	}
	return in.Err()
}

type clientSession struct {
	cmd     command
	conns   []net.Conn
	goCh    chan struct{}
	goOnce  sync.Once
	stopped atomic.Bool
	mark    atomic.Int64
	wg      sync.WaitGroup

	mu      sync.Mutex
	samples []uint32 // echo RTTs in ns since the last mark, merged at stop
}

func dialSession(cmd command) (*clientSession, error) {
	if err := checkFileLimit(len(cmd.Ufrags)); err != nil {
		return nil, fmt.Errorf("client process: %w", err)
	}
	s := &clientSession{cmd: cmd, conns: make([]net.Conn, len(cmd.Ufrags)), goCh: make(chan struct{})}
	parallel := max(1, cmd.Parallel)
	next := make(chan int)
	errs := make(chan error, parallel)
	var dialers sync.WaitGroup
	for range parallel {
		dialers.Add(1)
		go func() {
			defer dialers.Done()
			for i := range next {
				conn, err := net.Dial("tcp", cmd.Addr)
				if err == nil {
					s.conns[i] = conn
					_, err = conn.Write(frameOf(bindingRequest(cmd.Ufrags[i], uint64(i))))
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := range cmd.Ufrags {
		next <- i
	}
	close(next)
	dialers.Wait()
	select {
	case err := <-errs:
		s.stop()
		return nil, err
	default:
	}
	for _, conn := range s.conns {
		s.wg.Add(1)
		go s.run(conn)
	}
	return s, nil
}

func (s *clientSession) start() { s.goOnce.Do(func() { close(s.goCh) }) }

func (s *clientSession) run(conn net.Conn) {
	defer s.wg.Done()
	switch s.cmd.Mode {
	case modeDrain:
		buf := make([]byte, 256<<10)
		for {
			if _, err := conn.Read(buf); err != nil {
				return
			}
		}
	case modeHold:
		return
	}
	<-s.goCh // closed by "go", or by stop
	switch s.cmd.Mode {
	case modeBlast:
		s.blast(conn)
	case modeEcho:
		s.echo(conn)
	}
}

// blastBatch is about 64 KiB of frames of size bytes, sent with one Write:
// 993 frames of 64 B. That is enough for one sender per connection to keep
// the server's socket full: measured on 2 shared cores against ref at
// 64 B, the client process used under 40% of a core (its softirq share
// included) while the server's receive queue never drained, and 256 KiB
// batches or a second sender per connection moved no more packets.
func blastBatch(size int) []byte {
	frame := frameOf(make([]byte, size))
	count := max(1, (64<<10)/len(frame))
	batch := make([]byte, 0, count*len(frame))
	for range count {
		batch = append(batch, frame...)
	}
	return batch
}

func (s *clientSession) blast(conn net.Conn) {
	batch := blastBatch(s.cmd.Size)
	for !s.stopped.Load() {
		if _, err := conn.Write(batch); err != nil {
			return
		}
	}
}

const maxEchoSamples = 1 << 18

func (s *clientSession) echo(conn net.Conn) {
	out := frameOf(make([]byte, s.cmd.Size))
	in := make([]byte, len(out))
	samples := make([]uint32, 0, maxEchoSamples)
	gen := s.mark.Load()
	for !s.stopped.Load() {
		t0 := time.Now()
		if _, err := conn.Write(out); err != nil {
			break
		}
		if _, err := io.ReadFull(conn, in); err != nil {
			break
		}
		rtt := time.Since(t0)
		if g := s.mark.Load(); g != gen {
			gen, samples = g, samples[:0]
		}
		if len(samples) < cap(samples) {
			samples = append(samples, uint32(min(rtt, time.Duration(1<<32-1))))
		}
	}
	if gen == 0 {
		return // never marked: warm-up only
	}
	s.mu.Lock()
	s.samples = append(s.samples, samples...)
	s.mu.Unlock()
}

func (s *clientSession) stop() reply {
	s.stopped.Store(true)
	s.start() // releases runners still waiting for "go"
	for _, conn := range s.conns {
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // reset: drop unsent frames, leave no TIME_WAIT
		}
		if conn != nil {
			_ = conn.Close()
		}
	}
	s.wg.Wait()
	var rep reply
	if len(s.samples) > 0 {
		slices.Sort(s.samples)
		rep.Samples = len(s.samples)
		rep.P50 = int64(s.samples[len(s.samples)/2])
		rep.P99 = int64(s.samples[len(s.samples)*99/100])
	}
	return rep
}

// clientProc is the parent's handle on the client process.
type clientProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
	enc   *json.Encoder
}

// startClient starts the client process: this executable with args and
// env added to the environment.
func startClient(args, env []string) (*clientProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Stderr = os.Stderr
	cmd.Env = append(os.Environ(), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	out := bufio.NewScanner(stdout)
	out.Buffer(make([]byte, 64<<10), 1<<20)
	return &clientProc{cmd: cmd, stdin: stdin, out: out, enc: json.NewEncoder(stdin)}, nil
}

var errClientTimeout = errors.New("client process did not reply in time")

// do sends a command and waits for its reply.
func (p *clientProc) do(cmd command) (reply, error) {
	if err := p.enc.Encode(cmd); err != nil {
		return reply{}, fmt.Errorf("client %s: %w", cmd.Op, err)
	}
	type result struct {
		rep reply
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		if !p.out.Scan() {
			r.err = p.out.Err()
			if r.err == nil {
				r.err = io.ErrUnexpectedEOF
			}
		} else {
			r.err = json.Unmarshal(p.out.Bytes(), &r.rep)
		}
		ch <- r
	}()
	select {
	case r := <-ch:
		if r.err == nil && r.rep.Err != "" {
			r.err = errors.New(r.rep.Err)
		}
		if r.err != nil {
			r.err = fmt.Errorf("client %s: %w", cmd.Op, r.err)
		}
		return r.rep, r.err
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		return reply{}, fmt.Errorf("client %s: %w", cmd.Op, errClientTimeout)
	}
}

// pid is the client process's id.
func (p *clientProc) pid() int { return p.cmd.Process.Pid }

func (p *clientProc) close() error {
	_, _ = p.do(command{Op: "exit"})
	_ = p.stdin.Close()
	return p.cmd.Wait()
}
