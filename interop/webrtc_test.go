package interop_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/icetcp/tcpmux/interop/internal/harness"
	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
	"github.com/stretchr/testify/require"
)

// webrtcTCPOnly returns a pion/webrtc API that gathers and dials ICE-TCP on
// loopback only; with mux it takes its passive candidates from it.
func webrtcTCPOnly(mux ice.TCPMux) *webrtc.API {
	var se webrtc.SettingEngine
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeTCP4, webrtc.NetworkTypeTCP6})
	se.SetIncludeLoopbackCandidate(true)
	se.SetIPFilter(harness.Loopback)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.LoggerFactory = loggers
	if mux != nil {
		se.SetICETCPMux(mux)
	}

	return webrtc.NewAPI(webrtc.WithSettingEngine(se))
}

// receiver checks the messages of one DataChannel direction as they arrive.
type receiver struct {
	stream *harness.Stream
	want   int
	got    int
	bytes  uint64
	done   chan error
}

func newReceiver(seed, dir uint64, want int) *receiver {
	return &receiver{stream: harness.NewStream(seed, dir, 0), want: want, done: make(chan error, 1)}
}

// onMessage runs on the DataChannel's single read goroutine.
func (r *receiver) onMessage(msg webrtc.DataChannelMessage) {
	if r.got >= r.want {
		return
	}
	want := r.stream.Next()
	if !bytes.Equal(msg.Data, want) {
		r.done <- fmt.Errorf("message %d: got %d bytes, want %d", r.got, len(msg.Data), len(want))
		r.got = r.want

		return
	}
	r.got++
	r.bytes += uint64(len(msg.Data))
	if r.got == r.want {
		r.done <- nil
	}
}

func send(dc *webrtc.DataChannel, seed, dir uint64, count int) error {
	s := harness.NewStream(seed, dir, 0)
	for i := range count {
		if err := dc.Send(s.Next()); err != nil {
			return fmt.Errorf("send %d: %w", i, err)
		}
	}

	return nil
}

func wait(ctx context.Context, t *testing.T, what string, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		require.NoError(t, err, what)
	case <-ctx.Done():
		t.Fatalf("%s: %v", what, ctx.Err())
	}
}

func waitClosed(ctx context.Context, t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatalf("%s: %v", what, ctx.Err())
	}
}

// TestWebRTCDataChannel: two pion/webrtc PeerConnections, TCP network types
// only. The answerer's SettingEngine.SetICETCPMux takes the library's mux
// unchanged, so its only candidate is the mux's passive one; the offerer
// connects with active ICE-TCP. DTLS and SCTP run over the mux, and a
// DataChannel carries a thousand checked messages each way. The selected
// candidate pair is TCP on the mux's port; after both close, the mux holds
// nothing.
func TestWebRTCDataChannel(t *testing.T) {
	const messages = 1000
	leakCheck(t)
	ctx := testContext(t)
	mux := newMux(t, "tcp4", "127.0.0.1")
	port := muxPort(t, mux)

	offerer, err := webrtcTCPOnly(nil).NewPeerConnection(webrtc.Configuration{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = offerer.GracefulClose() })
	answerer, err := webrtcTCPOnly(mux).NewPeerConnection(webrtc.Configuration{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = answerer.GracefulClose() })

	toAnswerer := newReceiver(7, 1, messages)
	toOfferer := newReceiver(7, 2, messages)

	dc, err := offerer.CreateDataChannel("interop", nil)
	require.NoError(t, err)
	offererOpen := make(chan error, 1)
	dc.OnOpen(func() { offererOpen <- nil })
	dc.OnMessage(toOfferer.onMessage)

	answererDC := make(chan *webrtc.DataChannel, 1)
	answerer.OnDataChannel(func(d *webrtc.DataChannel) {
		d.OnMessage(toAnswerer.onMessage)
		d.OnOpen(func() { answererDC <- d })
	})

	// Signalling, in-process, with complete candidate lists.
	offer, err := offerer.CreateOffer(nil)
	require.NoError(t, err)
	gathered := webrtc.GatheringCompletePromise(offerer)
	require.NoError(t, offerer.SetLocalDescription(offer))
	waitClosed(ctx, t, "offerer's gathering", gathered)
	require.NoError(t, answerer.SetRemoteDescription(*offerer.LocalDescription()))
	answer, err := answerer.CreateAnswer(nil)
	require.NoError(t, err)
	gathered = webrtc.GatheringCompletePromise(answerer)
	require.NoError(t, answerer.SetLocalDescription(answer))
	waitClosed(ctx, t, "answerer's gathering", gathered)
	require.Contains(t, answerer.LocalDescription().SDP, fmt.Sprintf("%d typ host tcptype passive", port))
	require.NoError(t, offerer.SetRemoteDescription(*answerer.LocalDescription()))

	wait(ctx, t, "offerer's DataChannel open", offererOpen)
	var remote *webrtc.DataChannel
	select {
	case remote = <-answererDC:
	case <-ctx.Done():
		t.Fatal("answerer's DataChannel did not open")
	}

	// The selected pair is ICE-TCP, passive on the mux's port.
	pair, err := answerer.SCTP().Transport().ICETransport().GetSelectedCandidatePair()
	require.NoError(t, err)
	require.NotNil(t, pair)
	require.Equal(t, webrtc.ICEProtocolTCP, pair.Local.Protocol)
	require.Equal(t, webrtc.ICEProtocolTCP, pair.Remote.Protocol)
	require.Equal(t, "passive", pair.Local.TCPType)
	require.Equal(t, uint16(port), pair.Local.Port)
	require.Equal(t, "127.0.0.1", pair.Local.Address)
	opair, err := offerer.SCTP().Transport().ICETransport().GetSelectedCandidatePair()
	require.NoError(t, err)
	require.NotNil(t, opair)
	require.Equal(t, webrtc.ICEProtocolTCP, opair.Local.Protocol)
	require.Equal(t, "active", opair.Local.TCPType)
	require.Equal(t, uint16(port), opair.Remote.Port)

	before := mux.Stats()
	sendErrs := make(chan error, 2)
	go func() { sendErrs <- send(dc, 7, 1, messages) }()
	go func() { sendErrs <- send(remote, 7, 2, messages) }()
	wait(ctx, t, "send", sendErrs)
	wait(ctx, t, "send", sendErrs)
	wait(ctx, t, "offerer->answerer", toAnswerer.done)
	wait(ctx, t, "answerer->offerer", toOfferer.done)
	// DTLS and SCTP add overhead: the mux carried at least the payload.
	after := requireCarried(t, mux, before, 1, toAnswerer.bytes+1, toOfferer.bytes+1)
	require.Equal(t, 1, after.PacketConns)
	require.Equal(t, 1, after.ConnsActive)
	require.Zero(t, after.ConnsRejected, "rejections: %+v", after.Rejected)

	require.NoError(t, offerer.GracefulClose())
	require.NoError(t, answerer.GracefulClose())
	requireIdle(t, mux)
}
