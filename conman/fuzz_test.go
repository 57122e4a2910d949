package conman_test

import (
	"errors"
	"testing"

	"github.com/switchyard-dev/switchyard/conman"
)

func TestParseControl(t *testing.T) {
	tests := []struct {
		in      string
		size    conman.WindowSize
		ok, bad bool
	}{
		{`{"type":"resize","cols":120,"rows":40}`, conman.WindowSize{Cols: 120, Rows: 40}, true, false},
		{`{"type":"ping"}`, conman.WindowSize{}, false, false},
		{`{"type":"resize","cols":0,"rows":40}`, conman.WindowSize{}, false, true},
		{`{"type":"resize","cols":80,"rows":70000}`, conman.WindowSize{}, false, true},
		{`{"type":"resize","cols":-1,"rows":4}`, conman.WindowSize{}, false, true},
		{`{"type":"resize","cols":"80","rows":4}`, conman.WindowSize{}, false, true},
		{`not json`, conman.WindowSize{}, false, true},
		{``, conman.WindowSize{}, false, true},
	}
	for _, tt := range tests {
		size, ok, err := conman.ParseControl([]byte(tt.in))
		if size != tt.size || ok != tt.ok || (err != nil) != tt.bad {
			t.Errorf("ParseControl(%q) = %v %v %v", tt.in, size, ok, err)
		}
		if err != nil && !errors.Is(err, conman.ErrInvalid) {
			t.Errorf("ParseControl(%q) error %v is not ErrInvalid", tt.in, err)
		}
	}
}

func FuzzParseControl(f *testing.F) {
	f.Add([]byte(`{"type":"resize","cols":80,"rows":24}`))
	f.Add([]byte(`{"type":"other"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		size, ok, err := conman.ParseControl(data)
		if err != nil && (ok || size != (conman.WindowSize{})) {
			t.Fatalf("error with a result: %v %v %v", size, ok, err)
		}
		if ok && (size.Cols < 1 || size.Rows < 1 || size.Cols > 10000 || size.Rows > 10000) {
			t.Fatalf("accepted out-of-range size %v", size)
		}
	})
}

func FuzzValidID(f *testing.F) {
	f.Add("blog-7f3a")
	f.Add("../etc")
	f.Fuzz(func(t *testing.T, id string) {
		if !conman.ValidID(id) {
			return
		}
		for _, c := range id {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				t.Fatalf("ValidID(%q) accepted %q", id, c)
			}
		}
		if len(id) > 63 || id[0] == '-' || id[0] == '_' {
			t.Fatalf("ValidID(%q) accepted", id)
		}
	})
}
