package dnsauth

import (
	"encoding/binary"
	"testing"
)

// The reference vectors of the SipHash paper (appendix A) and its implementation: key
// 00 01 … 0f, messages 00 01 … (n-1).
func TestSipHash24(t *testing.T) {
	var key [16]byte
	for i := range key {
		key[i] = byte(i)
	}
	k0, k1 := binary.LittleEndian.Uint64(key[:8]), binary.LittleEndian.Uint64(key[8:])
	msg := make([]byte, 64)
	for i := range msg {
		msg[i] = byte(i)
	}
	for n, want := range map[int]uint64{
		0:  0x726fdb47dd0e0e31,
		1:  0x74f839c593dc67fd,
		8:  0x93f5f5799a932462,
		15: 0xa129ca6149be45e5,
		63: 0x958a324ceb064572,
	} {
		if got := siphash24(k0, k1, msg[:n]); got != want {
			t.Errorf("siphash24(%d bytes) = %#x, want %#x", n, got, want)
		}
	}
}
