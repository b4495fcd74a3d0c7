package tcpmux

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// paramCheck says what the tests know of one TCPMuxParams field. In the
// spirit of quic-go's config_test.go, TestParamsEveryFieldKnown fails for a
// field missing from paramChecks: whoever adds a field must say what its
// zero value becomes and which values Validate refuses.
type paramCheck struct {
	// zero checks the field of populateDefaults(TCPMuxParams{}).
	zero func(t *testing.T, got reflect.Value)
	// kept, unless nil, is a valid non-zero value that populateDefaults
	// keeps and Validate accepts.
	kept any
	// invalid are values for which Validate returns a ParamError naming
	// the field. A numeric field needs some, or a reason in anyValid.
	invalid []any
	// anyValid says why a numeric field has no invalid value.
	anyValid string
}

// newParamChecks returns the table. It is built per test, as its values
// include listeners and loggers.
func newParamChecks() map[string]paramCheck {
	return map[string]paramCheck{
		"Listener": {zero: isNil, kept: newPipeListener("127.0.0.1:2")},
		"Logger":   {zero: notNil, kept: quietLogger()},

		"ReadBufferSize":               {zero: equals(DefaultReadBufferSize), kept: 1, invalid: []any{-1}},
		"WriteBufferSize":              {zero: equals(0), kept: 4096, invalid: []any{-1}},
		"FirstStunBindTimeout":         {zero: equals(DefaultFirstStunBindTimeout), kept: time.Second, invalid: []any{-time.Nanosecond}},
		"AliveDurationForConnFromStun": {zero: equals(DefaultAliveDurationForConnFromStun), kept: time.Second, invalid: []any{-time.Nanosecond}},
		"MaxConnections":               {zero: equals(0), kept: 10, invalid: []any{-1}},
		"MaxPendingConnections":        {zero: equals(DefaultMaxPendingConnections), kept: -1, anyValid: "negative means no limit"},
		"MaxConnectionsPerUfrag":       {zero: equals(0), kept: 2, invalid: []any{-1}},
		"MaxConnectionsPerIP":          {zero: equals(0), kept: 3, invalid: []any{-1}},
		"MaxFirstFrameSize": {
			zero:    equals(DefaultMaxFirstFrameSize),
			kept:    MinMaxFirstFrameSize,
			invalid: []any{-1, 1, MinMaxFirstFrameSize - 1, MaxMaxFirstFrameSize + 1},
		},
		"FallbackQueueSize": {zero: equals(DefaultFallbackQueueSize), kept: 1, invalid: []any{-1}},

		"PasswordLookup": {zero: isNil}, // a func: kept cannot be compared
		"Fallback":       {zero: equals(false), kept: true},
	}
}

func equals(want any) func(*testing.T, reflect.Value) {
	return func(t *testing.T, got reflect.Value) {
		t.Helper()
		require.Equal(t, reflect.ValueOf(want).Convert(got.Type()).Interface(), got.Interface())
	}
}

func isNil(t *testing.T, got reflect.Value) {
	t.Helper()
	require.True(t, got.IsNil(), "want nil, got %v", got)
}

func notNil(t *testing.T, got reflect.Value) {
	t.Helper()
	require.False(t, got.IsNil(), "want a default")
}

// setParam sets params field name to x, converted to the field's type.
func setParam(p *TCPMuxParams, name string, x any) {
	f := reflect.ValueOf(p).Elem().FieldByName(name)
	f.Set(reflect.ValueOf(x).Convert(f.Type()))
}

func paramField(p TCPMuxParams, name string) reflect.Value {
	return reflect.ValueOf(p).FieldByName(name)
}

func isNumeric(typ reflect.Type) bool {
	switch typ.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

func TestParamsEveryFieldKnown(t *testing.T) {
	checks := newParamChecks()
	typ := reflect.TypeFor[TCPMuxParams]()
	fields := make(map[string]bool, typ.NumField())
	for i := range typ.NumField() {
		f := typ.Field(i)
		fields[f.Name] = true
		c, ok := checks[f.Name]
		if !ok {
			t.Errorf("TCPMuxParams.%s is not in paramChecks: say what its zero value means and which values Validate refuses", f.Name)
			continue
		}
		require.NotNil(t, c.zero, "%s: no check of its default", f.Name)
		if isNumeric(f.Type) && len(c.invalid) == 0 && c.anyValid == "" {
			t.Errorf("TCPMuxParams.%s is numeric: give values Validate refuses, or say in anyValid why there are none", f.Name)
		}
	}
	for name := range checks {
		if !fields[name] {
			t.Errorf("paramChecks has %s, which TCPMuxParams no longer has", name)
		}
	}
}

func TestParamsDefaults(t *testing.T) {
	p := TCPMuxParams{}.populateDefaults()
	for name, c := range newParamChecks() {
		t.Run(name, func(t *testing.T) {
			c.zero(t, paramField(p, name))
		})
	}
}

// Values that are set stay as they are, and Validate accepts them.
func TestParamsKeepSetValues(t *testing.T) {
	for name, c := range newParamChecks() {
		if c.kept == nil {
			continue
		}
		t.Run(name, func(t *testing.T) {
			p := TCPMuxParams{Listener: newPipeListener("127.0.0.1:1")}
			setParam(&p, name, c.kept)
			require.NoError(t, p.Validate())
			got := paramField(p.populateDefaults(), name)
			require.Equal(t, paramField(p, name).Interface(), got.Interface())
		})
	}
}

func TestParamsValidateNamesField(t *testing.T) {
	for name, c := range newParamChecks() {
		for _, x := range c.invalid {
			t.Run(fmt.Sprintf("%s=%v", name, x), func(t *testing.T) {
				p := TCPMuxParams{Listener: newPipeListener("127.0.0.1:1")}
				setParam(&p, name, x)
				err := p.Validate()
				var perr ParamError
				require.ErrorAs(t, err, &perr, "%s = %v", name, x)
				require.Equal(t, name, perr.Field)
				require.Equal(t, paramField(p, name).Convert(reflect.TypeFor[int64]()).Int(), perr.Value, "nanoseconds for durations")
				require.ErrorIs(t, err, ErrInvalidParams)
				require.Contains(t, err.Error(), name)
			})
		}
	}
}

func TestParamsValidateNoListener(t *testing.T) {
	err := (&TCPMuxParams{}).Validate()
	require.ErrorIs(t, err, ErrNoListener)
	require.False(t, errors.As(err, new(ParamError)), "a missing listener is not a range error")
}
