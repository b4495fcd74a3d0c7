//go:build unix

package tcpmux

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// SPEC 1: the first-frame deadline under a slowloris attack. Unix only:
// the test raises RLIMIT_NOFILE for its hundreds of connections.

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
