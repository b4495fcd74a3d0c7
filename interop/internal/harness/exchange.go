package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"
)

// MaxMessage is the largest message Exchange sends: one typical MTU's worth.
const MaxMessage = 1200

// Stream generates a deterministic sequence of messages of 1 to max bytes.
// The sender and the receiver of a direction each run a Stream with the same
// seed, so the receiver knows every byte, and the order, it must get.
type Stream struct {
	rng *rand.Rand
	max int
	buf []byte
}

// NewStream returns the message sequence for (seed, direction).
func NewStream(seed, direction uint64, maxSize int) *Stream {
	if maxSize <= 0 || maxSize > MaxMessage {
		maxSize = MaxMessage
	}

	return &Stream{rng: rand.New(rand.NewPCG(seed, direction)), max: maxSize, buf: make([]byte, maxSize)}
}

// Next returns the next message; it is valid until the next call.
func (s *Stream) Next() []byte {
	n := 1 + s.rng.IntN(s.max)
	b := s.buf[:n]
	for i := 0; i < n; i += 8 {
		v := s.rng.Uint64()
		for j := i; j < n && j < i+8; j++ {
			b[j] = byte(v)
			v >>= 8
		}
	}
	// pion's ice.Conn refuses to send anything that looks like a STUN
	// message (magic cookie at offset 4); keep application data clear of it.
	if n >= 8 && b[4] == 0x21 {
		b[4] = 0x20
	}

	return b
}

// ExchangeConfig describes a bidirectional transfer.
type ExchangeConfig struct {
	// Messages sent each way.
	Messages int
	// MaxSize of a message, 1..MaxMessage; 0: MaxMessage.
	MaxSize int
	// Seed makes the data of this exchange unique (use a different one per
	// session so that any cross-talk is caught).
	Seed uint64
	// Window is how many messages a sender may have in flight, unread by
	// the receiver; 0: 32. pion's ice.Conn drops packets when its 1 MB
	// receive buffer is full, so the application must pace itself, as a
	// real one does with its own flow control; the window keeps well below
	// that.
	Window int
}

// ExchangeResult reports a finished transfer.
type ExchangeResult struct {
	Messages  int // each way
	BytesAToB uint64
	BytesBToA uint64
	Duration  time.Duration
}

// Exchange sends cfg.Messages messages from a to b and as many from b to a,
// all four loops concurrently, and checks that each side receives exactly
// the other's messages, byte for byte and in order. Each message must
// arrive as one Read (packet semantics, as ice.Conn has). If ctx ends
// first, a and b get a past read deadline and Exchange fails.
func Exchange(ctx context.Context, a, b net.Conn, cfg ExchangeConfig) (ExchangeResult, error) {
	if cfg.Window <= 0 {
		cfg.Window = 32
	}
	res := ExchangeResult{Messages: cfg.Messages}
	start := time.Now()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		cancel()
	}
	direction := func(name string, dir uint64, from, to net.Conn, total *uint64) {
		credits := make(chan struct{}, cfg.Window)
		wg.Add(2)
		go func() { // sender
			defer wg.Done()
			s := NewStream(cfg.Seed, dir, cfg.MaxSize)
			for i := range cfg.Messages {
				select {
				case credits <- struct{}{}:
				case <-ctx.Done():
					return
				}
				m := s.Next()
				if n, err := from.Write(m); err != nil || n != len(m) {
					fail(fmt.Errorf("%s: write of message %d (%d bytes): n=%d: %w", name, i, len(m), n, err))

					return
				}
			}
		}()
		go func() { // receiver
			defer wg.Done()
			s := NewStream(cfg.Seed, dir, cfg.MaxSize)
			buf := make([]byte, 8192)
			for i := range cfg.Messages {
				want := s.Next()
				n, err := to.Read(buf)
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("%s: read of message %d: %w", name, i, err))
					}

					return
				}
				if !bytes.Equal(buf[:n], want) {
					fail(fmt.Errorf("%s: message %d differs: got %d bytes, want %d (first difference at byte %d)",
						name, i, n, len(want), firstDiff(buf[:n], want)))

					return
				}
				*total += uint64(n)
				<-credits
			}
		}()
	}
	direction("a->b", 1, a, b, &res.BytesAToB)
	direction("b->a", 2, b, a, &res.BytesBToA)

	stop := unblockOnDone(ctx, a, b)
	wg.Wait()
	stop()
	res.Duration = time.Since(start)

	mu.Lock()
	defer mu.Unlock()
	if len(errs) == 0 && ctx.Err() != nil {
		return res, fmt.Errorf("exchange: %w", ctx.Err())
	}

	return res, errors.Join(errs...)
}

// unblockOnDone makes blocked Reads on conns fail once ctx ends, by setting
// a past read deadline. The returned stop ends the watch and clears any
// deadline it set.
func unblockOnDone(ctx context.Context, conns ...net.Conn) (stop func()) {
	stopped := make(chan struct{})
	exited := make(chan bool)
	go func() {
		select {
		case <-ctx.Done():
			for _, c := range conns {
				_ = c.SetReadDeadline(time.Unix(1, 0))
			}
			<-stopped
			exited <- true
		case <-stopped:
			exited <- false
		}
	}()

	return func() {
		close(stopped)
		if <-exited {
			for _, c := range conns {
				_ = c.SetReadDeadline(time.Time{})
			}
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}

	return min(len(a), len(b))
}

// RTT measures round trips: client sends a size-byte probe, server echoes
// it, count times, one at a time. It returns the sorted samples.
func RTT(ctx context.Context, client, server net.Conn, count, size int) ([]time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	echoErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 8192)
		for range count {
			n, err := server.Read(buf)
			if err != nil {
				echoErr <- err

				return
			}
			if _, err := server.Write(buf[:n]); err != nil {
				echoErr <- err

				return
			}
		}
		echoErr <- nil
	}()
	stop := unblockOnDone(ctx, client, server)

	s := NewStream(uint64(size), 3, size)
	samples := make([]time.Duration, 0, count)
	buf := make([]byte, 8192)
	var err error
	for i := range count {
		probe := s.Next()
		t0 := time.Now()
		if _, err = client.Write(probe); err != nil {
			err = fmt.Errorf("rtt probe %d: %w", i, err)

			break
		}
		var n int
		if n, err = client.Read(buf); err != nil {
			err = fmt.Errorf("rtt probe %d: %w", i, err)

			break
		}
		samples = append(samples, time.Since(t0))
		if !bytes.Equal(buf[:n], probe) {
			err = fmt.Errorf("rtt probe %d: echo differs", i)

			break
		}
	}
	if err != nil {
		cancel() // unblock the echo loop
	}
	if e := <-echoErr; err == nil && e != nil {
		err = fmt.Errorf("rtt echo: %w", e)
	}
	stop()
	slices.Sort(samples)

	return samples, err
}

// Percentile returns the p-th percentile (0..100) of sorted samples.
func Percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted) - 1) * p / 100

	return sorted[i]
}
