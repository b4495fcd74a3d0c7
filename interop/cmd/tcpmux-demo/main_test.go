package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/pion/logging"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestDemo runs the demo, smaller, as CI would: it succeeds, reports every
// session and the mux's counters, and leaves no goroutine behind.
func TestDemo(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var out bytes.Buffer
	err := run(context.Background(), &out, config{
		sessions: 3, messages: 300, probes: 20, timeout: 30 * time.Second, logLevel: logging.LogLevelError,
	})
	t.Log("\n" + out.String())
	require.NoError(t, err)
	require.Contains(t, out.String(), "OK in ")
	require.Contains(t, out.String(), "connections   accepted 3, rejected 0, active 3, pending 0, PacketConns 3")
	require.Contains(t, out.String(), "after every session closed: PacketConns 0, active 0, pending 0")
}

func TestDemoRejectsBadConfig(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	require.Error(t, run(context.Background(), &bytes.Buffer{}, config{timeout: time.Second}))
}
