// Package harness builds real pion/ice ICE-TCP sessions over loopback on top
// of a tcpmux mux, and checks the data they carry. It is shared by the
// interop tests and cmd/tcpmux-demo, and never touches anything but 127.0.0.1
// and ::1.
package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/pion/ice/v4"
	"github.com/pion/logging"
)

// Loopback keeps only loopback addresses (127.0.0.0/8, ::1): agents gather
// and dial nothing else.
func Loopback(ip net.IP) bool { return ip.IsLoopback() }

// TCPNetworkTypes is ICE-TCP over IPv4 and IPv6, and nothing else.
var TCPNetworkTypes = []ice.NetworkType{ice.NetworkTypeTCP4, ice.NetworkTypeTCP6}

// Loggers returns a logger factory for pion's agents and the mux that
// prints messages of level and above only (to stderr).
func Loggers(level logging.LogLevel) logging.LoggerFactory {
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = level

	return lf
}

func baseOptions(lf logging.LoggerFactory, networkTypes []ice.NetworkType) []ice.AgentOption {
	return []ice.AgentOption{
		ice.WithNetworkTypes(networkTypes),
		ice.WithCandidateTypes([]ice.CandidateType{ice.CandidateTypeHost}),
		// The mux listens on loopback: pion only gathers loopback addresses
		// when asked to, and the filter drops every other address.
		ice.WithIncludeLoopback(),
		ice.WithIPFilter(Loopback),
		ice.WithMulticastDNSMode(ice.MulticastDNSModeDisabled),
		ice.WithLoggerFactory(lf),
	}
}

// NewServerAgent returns an agent whose only candidates are the passive
// ICE-TCP candidates of mux (one per port for a mux that implements
// ice.AllConnsGetter).
func NewServerAgent(
	mux ice.TCPMux, lf logging.LoggerFactory, networkTypes []ice.NetworkType, extra ...ice.AgentOption,
) (*ice.Agent, error) {
	opts := append(baseOptions(lf, networkTypes), ice.WithTCPMux(mux))

	return ice.NewAgentWithOptions(append(opts, extra...)...)
}

// NewClientAgent returns an agent without local candidates that connects with
// active ICE-TCP to the passive candidates it is given.
func NewClientAgent(lf logging.LoggerFactory, networkTypes []ice.NetworkType, extra ...ice.AgentOption) (*ice.Agent, error) {
	return ice.NewAgentWithOptions(append(baseOptions(lf, networkTypes), extra...)...)
}

// Gather runs a gathering round and returns the agent's local candidates
// once pion has signalled the end of candidates.
func Gather(ctx context.Context, agent *ice.Agent) ([]ice.Candidate, error) {
	done := make(chan struct{})
	var closed bool
	if err := agent.OnCandidate(func(c ice.Candidate) {
		if c == nil && !closed {
			closed = true
			close(done)
		}
	}); err != nil {
		return nil, err
	}
	if err := agent.GatherCandidates(); err != nil {
		return nil, err
	}
	select {
	case <-done:
	case <-ctx.Done():
		return nil, fmt.Errorf("gathering: %w", ctx.Err())
	}

	return agent.GetLocalCandidates()
}

// Signal hands candidates to agent as a signalling channel would: marshalled
// to SDP attribute form and parsed back. keep, when not nil, chooses which
// candidates are passed on. It returns how many were passed.
func Signal(agent *ice.Agent, candidates []ice.Candidate, keep func(ice.Candidate) bool) (int, error) {
	n := 0
	for _, c := range candidates {
		if keep != nil && !keep(c) {
			continue
		}
		parsed, err := ice.UnmarshalCandidate(c.Marshal())
		if err != nil {
			return n, err
		}
		if err := agent.AddRemoteCandidate(parsed); err != nil {
			return n, err
		}
		n++
	}

	return n, nil
}

// Session is one connected pair of agents: Server's candidates come from
// the mux, Client connects to them with active ICE-TCP.
type Session struct {
	Server, Client         *ice.Agent
	ServerConn, ClientConn *ice.Conn
	ServerUfrag            string
	// ServerCandidates are the passive candidates the server advertised.
	ServerCandidates []ice.Candidate
}

// Options tunes Connect.
type Options struct {
	// NetworkTypes of both agents; nil: TCPNetworkTypes.
	NetworkTypes []ice.NetworkType
	// KeepServerCandidate, when not nil, chooses which of the server's
	// candidates are signalled to the client.
	KeepServerCandidate func(ice.Candidate) bool
	// ServerOptions and ClientOptions are appended to the agents' options.
	ServerOptions, ClientOptions []ice.AgentOption
}

// ErrNoCandidates is returned by Connect when the server agent gathered no
// candidate from the mux.
var ErrNoCandidates = errors.New("harness: the server agent gathered no candidate from the mux")

// Connect creates a server agent on mux and a client agent, exchanges
// credentials and candidates in-process, and returns once both ends are
// connected. On error everything it created is closed.
func Connect(ctx context.Context, mux ice.TCPMux, lf logging.LoggerFactory, o Options) (_ *Session, err error) {
	networkTypes := o.NetworkTypes
	if networkTypes == nil {
		networkTypes = TCPNetworkTypes
	}
	s := &Session{}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.Server, err = NewServerAgent(mux, lf, networkTypes, o.ServerOptions...); err != nil {
		return nil, fmt.Errorf("server agent: %w", err)
	}
	if s.Client, err = NewClientAgent(lf, networkTypes, o.ClientOptions...); err != nil {
		return nil, fmt.Errorf("client agent: %w", err)
	}
	if err = s.negotiate(ctx, o.KeepServerCandidate, true); err != nil {
		return nil, err
	}

	return s, nil
}

// negotiate gathers, signals and, the first time, runs Accept and Dial; after
// an ICE restart it waits for both agents to be connected again.
func (s *Session) negotiate(ctx context.Context, keep func(ice.Candidate) bool, first bool) error {
	var err error
	if s.ServerUfrag, _, err = s.Server.GetLocalUserCredentials(); err != nil {
		return err
	}
	if s.ServerCandidates, err = Gather(ctx, s.Server); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if len(s.ServerCandidates) == 0 {
		return ErrNoCandidates
	}
	clientCandidates, err := Gather(ctx, s.Client)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if n, err := Signal(s.Client, s.ServerCandidates, keep); err != nil {
		return fmt.Errorf("signalling to client: %w", err)
	} else if n == 0 {
		return fmt.Errorf("no server candidate was signalled: %w", ErrNoCandidates)
	}
	// An active-only client has no candidate to signal; pass on any it has.
	if _, err := Signal(s.Server, clientCandidates, nil); err != nil {
		return fmt.Errorf("signalling to server: %w", err)
	}

	if !first {
		return s.awaitReconnect(ctx)
	}

	sUfrag, sPwd, cUfrag, cPwd, err := s.credentials()
	if err != nil {
		return err
	}
	type result struct {
		conn *ice.Conn
		err  error
	}
	accepted := make(chan result, 1)
	go func() {
		conn, err := s.Server.Accept(ctx, cUfrag, cPwd)
		accepted <- result{conn, err}
	}()
	var dialErr error
	s.ClientConn, dialErr = s.Client.Dial(ctx, sUfrag, sPwd)
	if dialErr != nil {
		// Unblock Accept before waiting for it.
		_ = s.Server.Close()
	}
	r := <-accepted
	s.ServerConn = r.conn

	return errors.Join(wrap("dial", dialErr), wrap("accept", r.err))
}

// credentials returns the local ufrag and password of the server agent,
// then of the client agent.
func (s *Session) credentials() (sUfrag, sPwd, cUfrag, cPwd string, err error) {
	if sUfrag, sPwd, err = s.Server.GetLocalUserCredentials(); err != nil {
		return "", "", "", "", err
	}
	if cUfrag, cPwd, err = s.Client.GetLocalUserCredentials(); err != nil {
		return "", "", "", "", err
	}
	return sUfrag, sPwd, cUfrag, cPwd, nil
}

func wrap(what string, err error) error {
	if err == nil {
		return nil
	}

	return fmt.Errorf("%s: %w", what, err)
}

// Restart runs an ICE restart on both agents: new credentials for both,
// the server gathers anew from the mux under its new ufrag, candidates are
// signalled again, and Restart returns once both agents are connected
// again. The session's Conns stay valid.
func (s *Session) Restart(ctx context.Context, keep func(ice.Candidate) bool) error {
	if err := s.Server.Restart("", ""); err != nil {
		return fmt.Errorf("server restart: %w", err)
	}
	if err := s.Client.Restart("", ""); err != nil {
		return fmt.Errorf("client restart: %w", err)
	}
	sUfrag, sPwd, cUfrag, cPwd, err := s.credentials()
	if err != nil {
		return err
	}
	if err := s.Server.SetRemoteCredentials(cUfrag, cPwd); err != nil {
		return err
	}
	if err := s.Client.SetRemoteCredentials(sUfrag, sPwd); err != nil {
		return err
	}

	return s.negotiate(ctx, keep, false)
}

// awaitReconnect waits until both agents have a selected pair again.
func (s *Session) awaitReconnect(ctx context.Context) error {
	for _, a := range []*ice.Agent{s.Server, s.Client} {
		connected := make(chan struct{}, 1)
		if err := a.OnConnectionStateChange(func(st ice.ConnectionState) {
			if st == ice.ConnectionStateConnected {
				select {
				case connected <- struct{}{}:
				default:
				}
			}
		}); err != nil {
			return err
		}
		if err := a.OnSelectedCandidatePairChange(func(ice.Candidate, ice.Candidate) {
			select {
			case connected <- struct{}{}:
			default:
			}
		}); err != nil {
			return err
		}
		for {
			if p, err := a.GetSelectedCandidatePair(); err == nil && p != nil {
				break
			}
			select {
			case <-connected:
			case <-ctx.Done():
				return fmt.Errorf("reconnecting after restart: %w", ctx.Err())
			}
		}
	}

	return nil
}

// Close closes both agents and waits for their goroutines.
func (s *Session) Close() error {
	var errs []error
	for _, a := range []*ice.Agent{s.Client, s.Server} {
		if a != nil {
			errs = append(errs, a.GracefulClose())
		}
	}

	return errors.Join(errs...)
}

// SelectedPair describes the server's selected candidate pair.
type SelectedPair struct {
	Local, Remote ice.Candidate
}

// ServerPair returns the server's selected pair.
func (s *Session) ServerPair() (SelectedPair, error) {
	p, err := s.Server.GetSelectedCandidatePair()
	if err != nil {
		return SelectedPair{}, err
	}
	if p == nil {
		return SelectedPair{}, errors.New("harness: no selected pair")
	}

	return SelectedPair{Local: p.Local, Remote: p.Remote}, nil
}

// CheckServerPair verifies that the server's selected pair is ICE-TCP, its
// local candidate a passive host candidate on one of ports.
func (s *Session) CheckServerPair(ports ...int) error {
	p, err := s.ServerPair()
	if err != nil {
		return err
	}
	if !p.Local.NetworkType().IsTCP() || !p.Remote.NetworkType().IsTCP() {
		return fmt.Errorf("harness: selected pair is not TCP: %s <-> %s", p.Local, p.Remote)
	}
	if p.Local.TCPType() != ice.TCPTypePassive || p.Local.Type() != ice.CandidateTypeHost {
		return fmt.Errorf("harness: server's local candidate is not a passive host candidate: %s", p.Local)
	}
	if !slices.Contains(ports, p.Local.Port()) {
		return fmt.Errorf("harness: server's local candidate %s is not on a mux port %v", p.Local, ports)
	}

	return nil
}
