package wsframe

import "testing"

func TestHeader(t *testing.T) {
	for _, tc := range []struct {
		p      []byte
		hl     int
		length uint64
		ok     bool
		err    bool
	}{
		{nil, 0, 0, false, false},
		{[]byte{0x82}, 0, 0, false, false},
		{[]byte{0x82, 5}, 2, 5, true, false},
		{[]byte{0x82, 0x85, 1, 2, 3}, 0, 0, false, false}, // mask key incomplete
		{[]byte{0x82, 0x85, 1, 2, 3, 4}, 6, 5, true, false},
		{[]byte{0x82, 126, 0x01}, 0, 0, false, false},
		{[]byte{0x82, 126, 0x01, 0x00}, 4, 256, true, false},
		{[]byte{0x82, 0xfe, 0x01, 0x00, 9, 9, 9, 9}, 8, 256, true, false},
		{[]byte{0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0}, 10, 65536, true, false},
		{[]byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, 0, 0, false, true},
	} {
		hl, length, ok, err := Header(tc.p)
		if hl != tc.hl || length != tc.length || ok != tc.ok || (err != nil) != tc.err {
			t.Errorf("Header(%x) = %d, %d, %v, %v; want %d, %d, %v, err %v", tc.p, hl, length, ok, err, tc.hl, tc.length, tc.ok, tc.err)
		}
	}
}
