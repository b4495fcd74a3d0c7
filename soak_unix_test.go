//go:build unix

package tcpmux

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An opt-in soak (TCPMUX_SOAK=1): memory and goroutines per connection
// with 10,000 attached. Unix only: it raises RLIMIT_NOFILE.

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
