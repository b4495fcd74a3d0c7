package compare

import (
	"bytes"
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
		IdleConns:         20,
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
		"| accept+idle 20 conns | heap+stack/conn |",
	} {
		if !strings.Contains(out.String(), row) {
			t.Errorf("report lacks %q:\n%s", row, out.String())
		}
	}
}
