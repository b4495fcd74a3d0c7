// Package interop proves that github.com/icetcp/tcpmux is a drop-in for
// pion/ice v4's TCPMuxDefault and MultiTCPMuxDefault: real pion/ice agents and
// pion/webrtc PeerConnections gather their passive ICE-TCP candidates from the
// library's mux and carry traffic through it.
//
// It is a separate module so that the library itself does not depend on
// pion/ice or pion/webrtc. Its tests are in this directory; the one-command
// demo is cmd/tcpmux-demo.
package interop

import (
	"github.com/icetcp/tcpmux"
	"github.com/pion/ice/v4"
)

// Compile-time proof that the library's muxes satisfy pion/ice's interfaces
// structurally, so ice.WithTCPMux, AgentConfig.TCPMux and pion/webrtc's
// SettingEngine.SetICETCPMux accept them unchanged.
var (
	_ ice.TCPMux         = (*tcpmux.TCPMuxDefault)(nil)
	_ ice.TCPMux         = (*tcpmux.MultiTCPMuxDefault)(nil)
	_ ice.AllConnsGetter = (*tcpmux.MultiTCPMuxDefault)(nil)

	// The library's own interface types are interchangeable with pion's.
	_ ice.TCPMux            = tcpmux.TCPMux(nil)
	_ tcpmux.TCPMux         = ice.TCPMux(nil)
	_ ice.AllConnsGetter    = tcpmux.AllConnsGetter(nil)
	_ tcpmux.AllConnsGetter = ice.AllConnsGetter(nil)

	// A pion mux can be combined by the library's multi mux, and the other way round.
	_ tcpmux.TCPMux = (*ice.TCPMuxDefault)(nil)
)
