//go:build linux

package oci

import "testing"

func TestGVisorDate(t *testing.T) {
	for v, want := range map[string]string{
		"runsc version 0.0~20221219.0":     "20221219",
		"runsc version release-20260901.0": "20260901",
		"runsc version 20260905.0":         "20260905",
		"runsc version VERSION_MISSING":    "",
		"runsc version 120221219":          "",
		"runsc version go1.26 spec 1.2.1":  "",
	} {
		if got := gvisorDate(v); got != want {
			t.Errorf("gvisorDate(%q) = %q, want %q", v, got, want)
		}
	}
}
