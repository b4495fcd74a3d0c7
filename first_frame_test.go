package tcpmux

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testPassword = "pwd"

// ICE attributes that stun/v3 does not define.
const (
	attrPriority       = 0x0024
	attrUseCandidate   = 0x0025
	attrICEControlling = 0x802A
)

// buildMessage builds a STUN message of type typ with setters applied in
// order and returns a copy of its bytes.
func buildMessage(t testing.TB, typ stun.MessageType, setters ...stun.Setter) []byte {
	t.Helper()
	m, err := stun.Build(append([]stun.Setter{typ, stun.TransactionID}, setters...)...)
	require.NoError(t, err)
	return append([]byte{}, m.Raw...)
}

// iceRequest is what an ICE agent sends first: a Binding request with
// USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
func iceRequest(t testing.TB, username string) []byte {
	t.Helper()
	return buildMessage(t, stun.BindingRequest,
		stun.NewUsername(username), stun.NewShortTermIntegrity(testPassword), stun.Fingerprint)
}

// rawUsername sets USERNAME without stun's length check.
func rawUsername(v string) stun.Setter {
	return stun.RawAttribute{Type: stun.AttrUsername, Value: []byte(v)}
}

// setLength writes len(frame)-20 into the STUN header.
func setLength(frame []byte) []byte {
	binary.BigEndian.PutUint16(frame[2:4], uint16(len(frame)-stunHeaderSize))
	return frame
}

// appendAttr appends one attribute (padded) and fixes the header length.
func appendAttr(frame []byte, typ uint16, value []byte) []byte {
	frame = binary.BigEndian.AppendUint16(frame, typ)
	frame = binary.BigEndian.AppendUint16(frame, uint16(len(value)))
	frame = append(frame, value...)
	for len(frame)%4 != 0 {
		frame = append(frame, 0)
	}
	return setLength(frame)
}

// appendFingerprint appends a FINGERPRINT that is valid for frame as it is.
func appendFingerprint(frame []byte) []byte {
	frame = appendAttr(frame, stunAttrFingerprint, make([]byte, 4))
	crc := crc32.ChecksumIEEE(frame[:len(frame)-8]) ^ stunFingerprintXOR
	binary.BigEndian.PutUint32(frame[len(frame)-4:], crc)
	return frame
}

func clone(b []byte) []byte { return append([]byte{}, b...) }

// parse runs parseBindingRequest and checks that it left frame alone.
func parse(t testing.TB, frame []byte) ([]byte, rejectReason) {
	t.Helper()
	before := clone(frame)
	ufrag, reason := parseBindingRequest(frame)
	require.Equal(t, before, frame, "parseBindingRequest modified the frame")
	if reason == rejectNone {
		require.NotNil(t, ufrag)
	} else {
		require.Nil(t, ufrag, "a rejected frame has no ufrag")
	}
	return ufrag, reason
}

func TestParseBindingRequestUfrag(t *testing.T) {
	long := strings.Repeat("u", 256)
	tests := []struct {
		username, ufrag string
	}{
		{"serverufrag:clientufrag", "serverufrag"},
		{"nocolon", "nocolon"},
		{"a:b:c", "a"},
		{"x:", "x"},
		{"u", "u"},
		{"ufrag with spaces and ünïcode:remote", "ufrag with spaces and ünïcode"},
		{long + ":" + strings.Repeat("r", 256), long}, // 513 bytes: two 256-character ufrags
		{long, long},
		{strings.Repeat("z", maxUsernameSize), strings.Repeat("z", maxUsernameSize)},
	}
	for _, tt := range tests {
		variants := map[string][]byte{
			"ICE":                  iceRequest(t, tt.username),
			"no integrity":         buildMessage(t, stun.BindingRequest, rawUsername(tt.username), stun.Fingerprint),
			"no fingerprint":       buildMessage(t, stun.BindingRequest, rawUsername(tt.username), stun.NewShortTermIntegrity(testPassword)),
			"username only":        buildMessage(t, stun.BindingRequest, rawUsername(tt.username)),
			"ICE attributes first": iceAttributesRequest(t, tt.username),
		}
		for name, frame := range variants {
			ufrag, reason := parse(t, frame)
			require.Equal(t, rejectNone, reason, "%s, username %.40q: %v", name, tt.username, reason)
			assert.Equal(t, tt.ufrag, string(ufrag), "%s, username %.40q", name, tt.username)
		}
	}
}

// iceAttributesRequest is a Binding request as pion/ice sends it, with
// PRIORITY, USE-CANDIDATE (empty) and ICE-CONTROLLING around USERNAME, and an
// odd-length SOFTWARE to exercise padding.
func iceAttributesRequest(t testing.TB, username string) []byte {
	t.Helper()
	return buildMessage(t, stun.BindingRequest,
		stun.RawAttribute{Type: attrPriority, Value: []byte{0x6e, 0x7f, 0x1e, 0xff}},
		stun.RawAttribute{Type: attrUseCandidate},
		stun.NewSoftware("odd"),
		rawUsername(username),
		stun.RawAttribute{Type: attrICEControlling, Value: []byte{1, 2, 3, 4, 5, 6, 7, 8}},
		stun.NewShortTermIntegrity(testPassword), stun.Fingerprint)
}

func TestParseBindingRequestFirstUsernameWins(t *testing.T) {
	frame := buildMessage(t, stun.BindingRequest, rawUsername("first:x"), rawUsername("second:y"), stun.Fingerprint)
	ufrag, reason := parse(t, frame)
	require.Equal(t, rejectNone, reason)
	assert.Equal(t, "first", string(ufrag))

	// An oversized second USERNAME does not matter either.
	frame = buildMessage(t, stun.BindingRequest, rawUsername("first:x"), rawUsername(strings.Repeat("s", 600)))
	ufrag, reason = parse(t, frame)
	require.Equal(t, rejectNone, reason)
	assert.Equal(t, "first", string(ufrag))
}

func TestParseBindingRequestRejectsUsername(t *testing.T) {
	tests := map[string][]byte{
		"empty username":               buildMessage(t, stun.BindingRequest, rawUsername(""), stun.Fingerprint),
		"empty ufrag":                  iceRequest(t, ":clientufrag"),
		"only a colon":                 iceRequest(t, ":"),
		"no USERNAME":                  buildMessage(t, stun.BindingRequest, stun.NewShortTermIntegrity(testPassword), stun.Fingerprint),
		"no USERNAME, no integrity":    buildMessage(t, stun.BindingRequest, stun.Fingerprint),
		"no attributes at all":         buildMessage(t, stun.BindingRequest),
		"only other attributes":        buildMessage(t, stun.BindingRequest, stun.NewSoftware("x"), stun.NewRealm("r")),
		"514 bytes, no colon":          buildMessage(t, stun.BindingRequest, rawUsername(strings.Repeat("x", 514)), stun.Fingerprint),
		"514 bytes, short ufrag":       buildMessage(t, stun.BindingRequest, rawUsername("ab:"+strings.Repeat("x", 511)), stun.Fingerprint),
		"1000 bytes":                   buildMessage(t, stun.BindingRequest, rawUsername(strings.Repeat("x", 1000))),
		"USERNAME type in other class": buildMessage(t, stun.BindingRequest, stun.RawAttribute{Type: stun.AttrUsername | 0x8000, Value: []byte("a:b")}),
	}
	for name, frame := range tests {
		_, reason := parse(t, frame)
		assert.Equal(t, rejectUsername, reason, "%s: %v", name, reason)
	}
}

func TestFirstFrameSizeBound(t *testing.T) {
	// SPEC 1: the bound is at least 1280 and at most 4096 bytes.
	assert.GreaterOrEqual(t, DefaultMaxFirstFrameSize, 1280)
	assert.LessOrEqual(t, DefaultMaxFirstFrameSize, 4096)

	// The largest legal ICE request (a 513-byte USERNAME, two 256-character
	// ufrags) fits, with the attributes pion/ice adds.
	frame := iceAttributesRequest(t, strings.Repeat("u", 256)+":"+strings.Repeat("r", 256))
	assert.LessOrEqual(t, len(frame), DefaultMaxFirstFrameSize)
	_, reason := parse(t, frame)
	assert.Equal(t, rejectNone, reason)
}

func TestParseBindingRequestRejectsNotSTUN(t *testing.T) {
	// base has no FINGERPRINT, so that header mutations are judged on
	// their own; fp has one.
	base := buildMessage(t, stun.BindingRequest, rawUsername("ufrag:remote"), stun.NewShortTermIntegrity(testPassword))
	fp := iceRequest(t, "ufrag:remote")
	for name, frame := range map[string][]byte{"base": base, "fp": fp} {
		_, reason := parse(t, frame)
		require.Equal(t, rejectNone, reason, "%s must be valid for the mutations to mean anything", name)
	}
	mutate := func(frame []byte, f func([]byte) []byte) []byte { return f(clone(frame)) }
	setType := func(typ uint16) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint16(b[0:2], typ); return b }
	}
	fpOff := len(fp) - 8 // FINGERPRINT attribute header

	tests := map[string][]byte{
		"Binding success response": buildMessage(t, stun.BindingSuccess, rawUsername("ufrag:remote"), stun.Fingerprint),
		"Binding error response":   buildMessage(t, stun.BindingError, rawUsername("ufrag:remote"), stun.Fingerprint),
		"Binding indication": buildMessage(t, stun.NewType(stun.MethodBinding, stun.ClassIndication),
			rawUsername("ufrag:remote"), stun.Fingerprint),
		"Allocate request": buildMessage(t, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
			rawUsername("ufrag:remote"), stun.Fingerprint),
		"Refresh request": buildMessage(t, stun.NewType(stun.MethodRefresh, stun.ClassRequest),
			rawUsername("ufrag:remote"), stun.Fingerprint),
		// RFC 8489 section 5: the top two bits are zero. Stun decoders
		// that mask them off would read these as Binding requests.
		"type 0x4001": mutate(base, setType(0x4001)),
		"type 0x8001": mutate(base, setType(0x8001)),
		"type 0xc001": mutate(base, setType(0xc001)),
		"type 0x0101": mutate(base, setType(0x0101)),
		"bad magic cookie": mutate(base, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[4:8], 0x2112A443)
			return b
		}),
		"classic STUN (RFC 3489) header": mutate(base, func(b []byte) []byte {
			copy(b[4:8], []byte{1, 2, 3, 4})
			return b
		}),
		"length 4 short": mutate(base, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[2:4], uint16(len(b)-stunHeaderSize-4))
			return b
		}),
		"length 1 short": mutate(base, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[2:4], uint16(len(b)-stunHeaderSize-1))
			return b
		}),
		"length 4 long": mutate(base, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[2:4], uint16(len(b)-stunHeaderSize+4))
			return b
		}),
		"length zero": mutate(base, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[2:4], 0)
			return b
		}),
		"trailing bytes after the message": append(clone(base), 0, 0, 0, 0),
		"frame truncated":                  base[:len(base)-4],
		"truncated attribute header": mutate(base, func(b []byte) []byte {
			return setLength(append(b, 0x80, 0x22))
		}),
		"truncated attribute value": mutate(base, func(b []byte) []byte {
			b = binary.BigEndian.AppendUint16(b, 0x8022)
			b = binary.BigEndian.AppendUint16(b, 8)
			return setLength(append(b, 'a', 'b', 'c', 'd'))
		}),
		"attribute value past the end": mutate(base, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[stunHeaderSize+2:], 0xfff0) // USERNAME length
			return b
		}),
		"padding overrun, no padding": mutate(base, func(b []byte) []byte {
			b = binary.BigEndian.AppendUint16(b, 0x8022)
			b = binary.BigEndian.AppendUint16(b, 5)
			return setLength(append(b, "abcde"...))
		}),
		"padding overrun, short padding": mutate(base, func(b []byte) []byte {
			b = binary.BigEndian.AppendUint16(b, 0x8022)
			b = binary.BigEndian.AppendUint16(b, 5)
			return setLength(append(b, "abcde\x00\x00"...))
		}),
		"bad FINGERPRINT CRC": mutate(fp, func(b []byte) []byte {
			b[len(b)-1] ^= 1
			return b
		}),
		"FINGERPRINT over tampered bytes": mutate(fp, func(b []byte) []byte {
			b[stunHeaderSize+4] ^= 0x20 // 'u' -> 'U'
			return b
		}),
		"FINGERPRINT over another transaction ID": mutate(fp, func(b []byte) []byte {
			b[8] ^= 0xff
			return b
		}),
		"FINGERPRINT not last": mutate(fp, func(b []byte) []byte {
			// A valid FINGERPRINT for the message with its new length,
			// followed by one more attribute.
			b = appendAttr(b, 0x8022, []byte("late"))
			crc := crc32.ChecksumIEEE(b[:fpOff]) ^ stunFingerprintXOR
			binary.BigEndian.PutUint32(b[fpOff+4:], crc)
			return b
		}),
		"FINGERPRINT not last, other FINGERPRINT last": mutate(base, func(b []byte) []byte {
			return appendFingerprint(appendFingerprint(b))
		}),
		"FINGERPRINT too long": mutate(base, func(b []byte) []byte {
			b = appendAttr(b, stunAttrFingerprint, make([]byte, 8))
			crc := crc32.ChecksumIEEE(b[:len(b)-12]) ^ stunFingerprintXOR
			binary.BigEndian.PutUint32(b[len(b)-8:], crc)
			return b
		}),
		"FINGERPRINT empty": mutate(base, func(b []byte) []byte {
			return appendAttr(b, stunAttrFingerprint, nil)
		}),
		"FINGERPRINT before USERNAME": appendAttr(
			appendFingerprint(buildMessage(t, stun.BindingRequest)), stunAttrUsername, []byte("ufrag:remote")),
		"empty frame":            {},
		"header only, 19 bytes":  base[:19],
		"one byte":               base[:1],
		"HTTP GET":               []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
		"HTTP GET, 20 bytes":     []byte("GET / HTTP/1.1\r\nHost"),
		"TLS ClientHello":        tlsClientHello(),
		"all zeros":              make([]byte, 64),
		"all ones":               bytes.Repeat([]byte{0xff}, 64),
		"STUN header, no cookie": append([]byte{0, 1, 0, 0}, make([]byte, 16)...),
	}
	for name, frame := range tests {
		_, reason := parse(t, frame)
		assert.Equal(t, rejectNotSTUN, reason, "%s: %v", name, reason)
	}

	// Every proper prefix of a valid request is rejected.
	for n := range len(fp) {
		_, reason := parse(t, fp[:n])
		assert.Equal(t, rejectNotSTUN, reason, "prefix of %d bytes", n)
	}
}

// tlsClientHello returns the start of a TLS 1.2 ClientHello record.
func tlsClientHello() []byte {
	hello := []byte{
		0x16, 0x03, 0x01, 0x00, 0xa5, // record: handshake, TLS 1.0, length
		0x01, 0x00, 0x00, 0xa1, // ClientHello, length
		0x03, 0x03, // TLS 1.2
	}
	hello = append(hello, bytes.Repeat([]byte{0x5a}, 32)...) // random
	hello = append(hello, 0x00, 0x00, 0x20, 0xc0, 0x2b, 0xc0, 0x2f)
	return append(hello, make([]byte, 0xa5+5-len(hello))...)
}

func TestParseBindingRequestRejectsGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for i := range 20000 {
		frame := make([]byte, rng.IntN(200))
		for j := range frame {
			frame[j] = byte(rng.Uint32())
		}
		if i%2 == 0 && len(frame) >= stunHeaderSize {
			// Half of them look like STUN up to the attributes.
			binary.BigEndian.PutUint16(frame[0:2], stunBindingRequest)
			setLength(frame)
			binary.BigEndian.PutUint32(frame[4:8], stunMagicCookie)
		}
		ufrag, reason := parse(t, frame)
		wantUfrag, ok := oracleBindingRequest(frame)
		require.Equal(t, ok, reason == rejectNone, "frame %x: %v", frame, reason)
		require.Equal(t, wantUfrag, ufrag)
		if i%2 == 1 {
			assert.Equal(t, rejectNotSTUN, reason, "frame %x", frame)
		}
	}
}

func TestVerifyIntegrity(t *testing.T) {
	frame := iceRequest(t, "ufrag:remote")
	noFP := buildMessage(t, stun.BindingRequest, rawUsername("ufrag:remote"), stun.NewShortTermIntegrity(testPassword))
	before := clone(frame)

	assert.True(t, verifyIntegrity(frame, testPassword), "correct password")
	assert.True(t, verifyIntegrity(noFP, testPassword), "correct password, no FINGERPRINT")
	assert.True(t, verifyIntegrity(iceAttributesRequest(t, "ufrag:remote"), testPassword), "correct password, ICE attributes")
	assert.Equal(t, before, frame, "verifyIntegrity must not modify the frame")

	assert.False(t, verifyIntegrity(frame, "wrong"), "wrong password")
	assert.False(t, verifyIntegrity(frame, ""), "empty password")
	assert.False(t, verifyIntegrity(frame, testPassword+"x"), "longer password")

	noMI := buildMessage(t, stun.BindingRequest, rawUsername("ufrag:remote"), stun.Fingerprint)
	assert.False(t, verifyIntegrity(noMI, testPassword), "no MESSAGE-INTEGRITY")
	assert.False(t, verifyIntegrity(noMI, ""), "no MESSAGE-INTEGRITY, empty password")

	// Tamper with every byte MESSAGE-INTEGRITY covers: the header, but
	// the length (which decides where the message ends), and the
	// attributes up to and including the HMAC.
	miEnd := len(noFP) // MESSAGE-INTEGRITY is the last attribute of noFP
	for i := range miEnd {
		if i == 2 || i == 3 {
			continue
		}
		tampered := clone(frame)
		tampered[i] ^= 0x01
		assert.False(t, verifyIntegrity(tampered, testPassword), "byte %d tampered", i)
	}
	// The FINGERPRINT is not covered by MESSAGE-INTEGRITY.
	tampered := clone(frame)
	tampered[len(tampered)-1] ^= 1
	assert.True(t, verifyIntegrity(tampered, testPassword), "FINGERPRINT value is outside MESSAGE-INTEGRITY")

	assert.False(t, verifyIntegrity(nil, testPassword), "empty frame")
	assert.False(t, verifyIntegrity([]byte("GET / HTTP/1.1\r\n\r\n"), testPassword), "garbage")
	assert.False(t, verifyIntegrity(frame[:len(frame)-9], testPassword), "truncated")
}

func TestParseBindingRequestAllocs(t *testing.T) {
	frames := map[string][]byte{
		"ICE request":   iceAttributesRequest(t, "serverufrag:clientufrag"),
		"long username": iceRequest(t, strings.Repeat("u", 256)+":"+strings.Repeat("r", 255)),
		"rejected":      iceRequest(t, ":x"),
		"bad CRC":       append(iceRequest(t, "a:b")[:40], make([]byte, 8)...),
		"garbage":       []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
	}
	for name, frame := range frames {
		allocs := testing.AllocsPerRun(1000, func() {
			parseBindingRequest(frame)
		})
		assert.Zero(t, allocs, "%s: parseBindingRequest allocates", name)
	}
}

func TestRejectReasonString(t *testing.T) {
	seen := map[string]rejectReason{}
	for r := rejectNone; r <= rejectOther; r++ {
		s := r.String()
		assert.NotEmpty(t, s, "reason %d", r)
		prev, dup := seen[s]
		assert.False(t, dup, "reasons %d and %d are both %q", prev, r, s)
		seen[s] = r
	}
	assert.Len(t, rejectNames, int(rejectOther)+1, "one name per reason")
	for r := rejectTimeout; r <= rejectOther; r++ {
		var stats RejectedStats
		field := reflect.ValueOf(&stats).Elem().FieldByName(r.String())
		require.True(t, field.IsValid(), "reason %q is not a RejectedStats field", r)
		field.SetUint(7)
		assert.Equal(t, uint64(7), rejectedCount(stats, r), "reason %q", r)
	}
}

// oracleBindingRequest judges frame with pion/stun's decoder and the rules
// of SPEC section 1, independently of parseBindingRequest.
func oracleBindingRequest(frame []byte) ([]byte, bool) {
	m := &stun.Message{Raw: clone(frame)}
	if err := m.Decode(); err != nil {
		return nil, false
	}
	if stunHeaderSize+int(m.Length) != len(frame) {
		return nil, false
	}
	// pion/stun ignores the two most significant bits of the type, which
	// RFC 8489 section 5 requires to be zero: check them on the raw bytes.
	if m.Type != stun.BindingRequest || frame[0]&0xc0 != 0 {
		return nil, false
	}
	username, err := m.Get(stun.AttrUsername)
	if err != nil || len(username) > maxUsernameSize {
		return nil, false
	}
	ufrag := username
	if i := bytes.IndexByte(ufrag, ':'); i >= 0 {
		ufrag = ufrag[:i]
	}
	if len(ufrag) == 0 {
		return nil, false
	}
	for i, a := range m.Attributes {
		if a.Type != stun.AttrFingerprint {
			continue
		}
		if i != len(m.Attributes)-1 || stun.Fingerprint.Check(m) != nil {
			return nil, false
		}
		break
	}
	return ufrag, true
}

func FuzzParseBindingRequest(f *testing.F) {
	long := strings.Repeat("u", 256) + ":" + strings.Repeat("r", 255)
	seeds := [][]byte{
		iceRequest(f, "serverufrag:clientufrag"),
		iceRequest(f, "nocolon"),
		iceRequest(f, long),
		iceRequest(f, long+"r"),
		iceAttributesRequest(f, "a:b"),
		buildMessage(f, stun.BindingRequest, rawUsername("u:v")),
		buildMessage(f, stun.BindingRequest, rawUsername("u:v"), stun.Fingerprint),
		buildMessage(f, stun.BindingRequest, rawUsername("u:v"), stun.NewShortTermIntegrity(testPassword)),
		buildMessage(f, stun.BindingRequest, rawUsername(strings.Repeat("x", 514)), stun.Fingerprint),
		buildMessage(f, stun.BindingRequest, rawUsername(":v"), stun.Fingerprint),
		buildMessage(f, stun.BindingRequest, stun.Fingerprint),
		buildMessage(f, stun.BindingSuccess, rawUsername("u:v"), stun.Fingerprint),
		appendFingerprint(appendFingerprint(buildMessage(f, stun.BindingRequest, rawUsername("u:v")))),
		appendAttr(iceRequest(f, "u:v"), 0x8022, []byte("after")),
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		tlsClientHello(),
		{},
	}
	for _, s := range seeds {
		f.Add(s)
		// A few mutations of each: a flipped bit in the header, in the
		// attributes, a truncation and an extension.
		for _, i := range []int{0, 1, 3, 7, stunHeaderSize + 1, len(s) - 1} {
			if i >= 0 && i < len(s) {
				m := clone(s)
				m[i] ^= 0x40
				f.Add(m)
			}
		}
		if len(s) > 4 {
			f.Add(clone(s[:len(s)-4]))
		}
		f.Add(append(clone(s), 0, 0, 0, 0))
	}

	f.Fuzz(func(t *testing.T, frame []byte) {
		ufrag, reason := parse(t, frame)
		wantUfrag, ok := oracleBindingRequest(frame)
		require.Equal(t, ok, reason == rejectNone, "parser says %v, oracle says %v, frame %x", reason, ok, frame)
		if ok {
			require.Equal(t, string(wantUfrag), string(ufrag))
		} else {
			require.Contains(t, []rejectReason{rejectNotSTUN, rejectUsername}, reason)
		}
		// Neither must verifyIntegrity panic on anything.
		verifyIntegrity(frame, testPassword)
	})
}

// admissionVerdict is what the mux must decide for a connection whose whole
// stream is stream, followed by EOF: the reason it is rejected, or, when
// admitted, its ufrag, first frame and the complete frames after it.
func admissionVerdict(stream []byte, lookup func(string) (string, bool)) (reason rejectReason, ufrag string, first []byte, rest [][]byte) {
	if len(stream) < FrameHeaderSize {
		return rejectOther, "", nil, nil // EOF before or inside the header
	}
	n := int(binary.BigEndian.Uint16(stream))
	if n > DefaultMaxFirstFrameSize {
		return rejectTooLarge, "", nil, nil
	}
	if len(stream)-FrameHeaderSize < n {
		return rejectOther, "", nil, nil // EOF inside the first frame
	}
	first = stream[FrameHeaderSize : FrameHeaderSize+n]
	u, reason := parseBindingRequest(first)
	if reason != rejectNone {
		return reason, "", nil, nil
	}
	password, ok := lookup(string(u))
	if !ok || !verifyIntegrity(first, password) {
		return rejectAuth, "", nil, nil
	}
	rest, _ = referenceFrames(stream[FrameHeaderSize+n:], MaxFramePayload)
	return rejectNone, string(u), first, rest
}

func rejectedCount(r RejectedStats, reason rejectReason) uint64 {
	switch reason {
	case rejectTimeout:
		return r.Timeout
	case rejectNotSTUN:
		return r.NotSTUN
	case rejectUsername:
		return r.Username
	case rejectTooLarge:
		return r.TooLarge
	case rejectLimit:
		return r.Limit
	case rejectAuth:
		return r.Auth
	case rejectEvicted:
		return r.Evicted
	case rejectOther:
		return r.Other
	}
	return 0
}

// FuzzFirstFrameAdmission feeds arbitrary bytes, then EOF, as a
// connection's stream into a mux with PasswordLookup, and checks that the
// mux admits exactly the connections whose first frame is a valid Binding
// request with valid credentials, delivering that frame and every complete
// later one, and otherwise counts exactly one rejection and keeps no state.
func FuzzFirstFrameAdmission(f *testing.F) {
	valid := frame(bindingRequest(f, "srv"))
	f.Add(valid)
	f.Add(append(append([]byte{}, valid...), append(frame([]byte("next")), frame(nil)...)...))
	f.Add(append(append([]byte{}, valid...), 0x00, 0x05, 'x')) // then a partial frame
	f.Add(frame(bindingRequest(f, "stranger")))                // unknown ufrag
	f.Add(frame(bindingRequestWith(f, stun.NewUsername("srv:peer"), stun.NewShortTermIntegrity("wrong"), stun.Fingerprint)))
	f.Add(frame(bindingRequestWith(f, stun.NewUsername("srv:peer"), stun.Fingerprint))) // no integrity
	badFingerprint := frame(bindingRequest(f, "srv"))
	badFingerprint[len(badFingerprint)-1] ^= 1
	f.Add(badFingerprint)
	f.Add(frame(bindingRequestWith(f, stun.Fingerprint)))                     // no USERNAME
	f.Add(valid[:len(valid)/2])                                               // truncated
	f.Add([]byte(httpRequestBytes))                                           // garbage
	f.Add([]byte{0xff, 0xff, 0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42}) // oversize header
	f.Add([]byte{0x08, 0x01})                                                 // just over the bound
	f.Add([]byte{})
	f.Add([]byte{0x00})

	lookup := func(ufrag string) (string, bool) { return "pwd", ufrag != "stranger" }
	f.Fuzz(func(t *testing.T, stream []byte) {
		ln := newPipeListener("127.0.0.1:443")
		m := NewTCPMuxDefault(TCPMuxParams{
			Listener:               ln,
			Logger:                 quietLogger(),
			PasswordLookup:         lookup,
			MaxConnectionsPerUfrag: 1,
			FirstStunBindTimeout:   2 * time.Second, // every stream ends with EOF well before
		})
		// An unclaimed PacketConn closes with its last connection (SPEC 3),
		// and the stream ends with EOF, so an admitted ufrag is claimed
		// first.
		wantReason, ufrag, first, rest := admissionVerdict(stream, lookup)
		var pc net.PacketConn
		if wantReason == rejectNone {
			var err error
			pc, err = m.GetConnByUfrag(ufrag, false, net.IPv4(127, 0, 0, 1))
			require.NoError(t, err)
			defer pc.Close()
		}
		client := ln.dial(t, "127.0.0.1:443", "192.0.2.1:1000")
		written := make(chan struct{})
		go func() {
			defer close(written)
			if len(stream) > 0 {
				_, _ = client.Write(stream) // fails once the mux closes its end
			}
			_ = client.Close()
		}()
		defer func() {
			require.NoError(t, m.Close())
			<-written
		}()

		require.Eventually(t, func() bool {
			s := m.Stats()
			return s.ConnsRejected > 0 || s.PacketsReceived > 0
		}, 5*time.Second, 100*time.Microsecond, "no verdict")

		s := m.Stats()
		admitted := s.ConnsRejected == 0
		require.Equal(t, wantReason == rejectNone, admitted, "want %v, stats %+v, stream %x", wantReason, s, stream)
		if !admitted {
			require.Equal(t, uint64(1), s.ConnsRejected)
			require.Equal(t, uint64(1), rejectedCount(s.Rejected, wantReason), "want %v, got %+v", wantReason, s.Rejected)
			require.Zero(t, s.PacketsReceived)
			require.Zero(t, s.ConnsActive)
			require.Zero(t, s.PacketConns, "no per-ufrag state for a rejected connection")
			require.Zero(t, s.UnclaimedExpired)
			return
		}
		_, reason := parseBindingRequest(first)
		require.Equal(t, rejectNone, reason)
		require.True(t, verifyIntegrity(first, "pwd"))
		oracleUfrag, ok := oracleBindingRequest(first)
		require.True(t, ok)
		require.Equal(t, string(oracleUfrag), ufrag)
		require.Equal(t, 1, m.Stats().PacketConns, "the connection joined the claimed PacketConn")
		buf := make([]byte, MaxFramePayload)
		want := 0
		for i, p := range append([][]byte{first}, rest...) {
			require.NoError(t, pc.SetReadDeadline(time.Now().Add(5*time.Second)))
			n, from, err := pc.ReadFrom(buf)
			require.NoError(t, err, "packet %d", i)
			require.Equal(t, p, buf[:n], "packet %d", i)
			require.Equal(t, "192.0.2.1:1000", from.String())
			want += len(p)
		}
		<-written
		eventually(t, func() bool { return m.Stats().ConnsActive == 0 }, "removed at EOF")
		s = m.Stats()
		require.Equal(t, uint64(1+len(rest)), s.PacketsReceived)
		require.Equal(t, uint64(want), s.BytesReceived)
	})
}
