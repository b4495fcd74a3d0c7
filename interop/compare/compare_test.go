package compare

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary serve as the client process.
func TestMain(m *testing.M) {
	if os.Getenv("MUXBENCH_TEST_CLIENT") == "1" {
		if err := RunClient(os.Stdin, os.Stdout); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestBindingRequestUfrag(t *testing.T) {
	for _, ufrag := range []string{"a", "t1-0", strings.Repeat("x", 255)} {
		got, ok := ufragOf(bindingRequest(ufrag, 7))
		if !ok || got != ufrag {
			t.Errorf("ufragOf(bindingRequest(%q)) = %q, %v", ufrag, got, ok)
		}
	}
	if _, ok := ufragOf([]byte("GET / HTTP/1.1\r\n\r\n12345")); ok {
		t.Error("ufragOf accepted a non-STUN message")
	}
}

// TestSmoke runs a tiny comparison end to end: every server admits the
// clients' Binding requests, moves packets, and the report has its rows.
func TestSmoke(t *testing.T) {
	var out, log bytes.Buffer
	cfg := Config{
		Duration:          50 * time.Millisecond,
		Warmup:            20 * time.Millisecond,
		Rounds:            1,
		Quick:             true,
		Only:              "1 conn,accept",
		Params:            MuxParams{ReadBufferSize: 8},
		BufferedWriteSize: 1 << 20,
		IdleConns:         []int{20},
		ClientEnv:         []string{"MUXBENCH_TEST_CLIENT=1"},
		Out:               &out,
		Log:               &log,
	}
	if err := Run(cfg); err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	for _, row := range []string{
		"| ingress 1 conn 64 B | pkts/s |",
		"| egress sync 1 conn 1200 B | pkts/s |",
		"| echo 1 conn 1200 B | RTT p50 |",
		"| accept+idle 20 conns | heap+stack/conn at 200 ms |",
	} {
		if !strings.Contains(out.String(), row) {
			t.Errorf("report lacks %q:\n%s", row, out.String())
		}
	}
}

// TestRefReadFrame checks the floor's frame reader: frames within and
// beyond the bufio buffer, a frame too large for the caller's buffer, and
// streams ending between and inside frames.
func TestRefReadFrame(t *testing.T) {
	var stream []byte
	sizes := []int{0, 1, 13, 14, 15, 100, 3}
	for _, n := range sizes {
		stream = append(stream, frameOf(bytes.Repeat([]byte{byte(n)}, n))...)
	}
	br := bufio.NewReaderSize(bytes.NewReader(stream), 16) // the smallest bufio buffer
	buf := make([]byte, 50)
	for _, n := range sizes {
		p, err := readFrame(br, buf)
		if n > len(buf) {
			if err != io.ErrShortBuffer {
				t.Fatalf("frame of %d B into %d: err %v, want io.ErrShortBuffer", n, len(buf), err)
			}
			continue
		}
		if err != nil || len(p) != n || !bytes.Equal(p, bytes.Repeat([]byte{byte(n)}, n)) {
			t.Fatalf("frame of %d B: got %d B, %v", n, len(p), err)
		}
	}
	if _, err := readFrame(br, buf); err != io.EOF {
		t.Fatalf("at the end: err %v, want io.EOF", err)
	}
	for _, cut := range []int{1, 2, 10, 25} {
		br := bufio.NewReaderSize(bytes.NewReader(frameOf(make([]byte, 30))[:cut]), 16)
		if _, err := readFrame(br, buf); err != io.ErrUnexpectedEOF {
			t.Errorf("stream cut after %d B: err %v, want io.ErrUnexpectedEOF", cut, err)
		}
	}
}

// TestRefServer checks the floor end to end: routing by the Binding
// request, frames arriving with it or later (the idle path, which holds no
// buffer until the next byte), a frame too large for the reader, echoes.
func TestRefServer(t *testing.T) {
	for _, later := range []bool{false, true} {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := newServer(Ref, ln, MuxParams{})
		pc, err := srv.Get("u1")
		if err != nil {
			t.Fatal(err)
		}
		conn, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		var frames []byte
		for _, n := range []int{5, 100, 65535, 7} {
			frames = append(frames, frameOf(bytes.Repeat([]byte{byte(n)}, n))...)
		}
		first := frameOf(bindingRequest("u1", 1))
		if later {
			_, err = conn.Write(first)
		} else {
			_, err = conn.Write(append(first, frames...))
		}
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8192)
		n, from, err := pc.ReadFrom(buf)
		if err != nil || from == nil {
			t.Fatalf("later=%v: Binding request: %v", later, err)
		}
		if u, ok := ufragOf(buf[:n]); !ok || u != "u1" {
			t.Fatalf("later=%v: first packet is not the Binding request", later)
		}
		if later {
			go func() {
				time.Sleep(20 * time.Millisecond)
				_, _ = conn.Write(frames)
			}()
		}
		for _, want := range []int{5, 100, -1, 7} {
			n, _, err := pc.ReadFrom(buf)
			if want < 0 {
				if err != io.ErrShortBuffer {
					t.Fatalf("later=%v: 65535 B frame into 8192: err %v, want io.ErrShortBuffer", later, err)
				}
				continue
			}
			if err != nil || n != want || buf[0] != byte(want) && want > 0 {
				t.Fatalf("later=%v: got %d B, %v; want %d", later, n, err, want)
			}
		}
		if _, err := pc.WriteTo([]byte("pong"), from); err != nil {
			t.Fatal(err)
		}
		echo := make([]byte, 6)
		if _, err := io.ReadFull(conn, echo); err != nil || string(echo) != "\x00\x04pong" {
			t.Fatalf("later=%v: echo %q, %v", later, echo, err)
		}
		_ = conn.Close()
		if _, _, err := pc.ReadFrom(buf); err != io.EOF {
			t.Errorf("later=%v: after close: err %v, want io.EOF", later, err)
		}
		_ = pc.Close()
		_ = srv.Close()
	}
}

// TestGoalsAgainstFloor checks that the goal column judges the ratio to
// ref where issue 12 says so, and to pion elsewhere.
func TestGoalsAgainstFloor(t *testing.T) {
	ws := []Workload{
		{Kind: Ingress, Conns: 1, Size: 64},
		{Kind: Ingress, Conns: 1, Size: 1200},
		{Kind: Egress, Conns: 1, Size: 1200},
		{Kind: Egress, Conns: 1, Size: 1200, Buffered: true},
		{Kind: Echo, Conns: 1, Size: 1200},
	}
	one := func(pion, ours, ref sample) [numImpls][]sample {
		var r [numImpls][]sample
		r[implIndex(Pion)], r[implIndex(Ours)], r[implIndex(Ref)] = []sample{pion}, []sample{ours}, []sample{ref}
		return r
	}
	res := results{
		// 0.6x ref (met at 64 B), 60x pion.
		one(sample{mPktRate: 1}, sample{mPktRate: 60, mAllocsPkt: 0}, sample{mPktRate: 100}),
		// 0.6x ref (not met at 1200 B).
		one(sample{mPktRate: 1}, sample{mPktRate: 60, mAllocsPkt: 0}, sample{mPktRate: 100}),
		// 0.95x ref packets, 1.2x ref CPU (not met), 0.5x pion CPU.
		one(sample{mPktRate: 10, mCPUPerPkt: 240}, sample{mPktRate: 95, mCPUPerPkt: 120, mAllocsPkt: 1}, sample{mPktRate: 100, mCPUPerPkt: 100}),
		// 2x pion, 0.5x ref: judged against pion.
		one(sample{mPktRate: 50}, sample{mPktRate: 100, mAllocsPkt: 0}, sample{mPktRate: 200}),
		// p50 1.05x ref (met), 2x pion.
		one(sample{mP50: 50}, sample{mP50: 105, mAllocsRT: 0}, sample{mP50: 100}),
	}
	var out bytes.Buffer
	report(&Config{Rounds: 1, Out: &out}, ws, res, time.Second)
	for _, want := range []string{
		"| ingress 1 conn 64 B | pkts/s | 1 | 60 | 100 | 60.00x | 0.60x | >= 0.5x ref | yes |",
		"| ingress 1 conn 1200 B | pkts/s | 1 | 60 | 100 | 60.00x | 0.60x | >= 0.9x ref | no |",
		"| egress sync 1 conn 1200 B | pkts/s | 10 | 95 | 100 | 9.50x | 0.95x | >= 0.9x ref | yes |",
		"|  | server CPU/pkt | 240 ns | 120 ns | 100 ns | 0.50x | 1.20x | <= 1.15x ref | no |",
		"|  | allocs/pkt | n/a | 1.000 | n/a |  |  | 0 | no |",
		"| egress buffered 1 conn 1200 B | pkts/s | 50 | 100 | 200 | 2.00x | 0.50x | >= 1.5x pion | yes |",
		"| echo 1 conn 1200 B | RTT p50 | 50 ns | 105 ns | 100 ns | 2.10x | 1.05x | <= 1.1x ref | yes |",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
