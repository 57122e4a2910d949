package switchyard

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coredns/caddy"

	"github.com/switchyard-dev/switchyard/dnsauth"
)

// TestParseRRLAndCookies: the rrl_ and cookies properties reach dnsauth's Config as NSD's
// and Knot's names for them mean; bad input is a clear error.
func TestParseRRLAndCookies(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	previous := filepath.Join(dir, "previous")
	bad := filepath.Join(dir, "bad")
	for f, v := range map[string]string{secret: "000102030405060708090a0b0c0d0e0f\n", previous: "ffeeddccbbaa99887766554433221100", bad: "0001"} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	o, err := parse(caddy.NewTestController("dns", `switchyard {
		lore http://127.0.0.1:8400
		rrl_slip 0
		rrl 50
		rrl_prefix_len 32 64
		rrl_prefix 10.1.2.3/8 0
		rrl_prefix 2001:db8::/32 500
		rrl_table_size 1000
		cookies `+secret+` `+previous+`
	}`))
	if err != nil {
		t.Fatal(err)
	}
	want := dnsauth.RRL{ResponsesPerSecond: 50, Slip: -1, IPv4PrefixLen: 32, IPv6PrefixLen: 64, MaxEntries: 1000,
		Prefixes: []dnsauth.PrefixRate{{Prefix: netip.MustParsePrefix("10.0.0.0/8")}, {Prefix: netip.MustParsePrefix("2001:db8::/32"), ResponsesPerSecond: 500}}}
	if r := o.rrl; r == nil || r.ResponsesPerSecond != want.ResponsesPerSecond || r.Slip != want.Slip || r.IPv4PrefixLen != 32 ||
		r.IPv6PrefixLen != 64 || r.MaxEntries != 1000 || len(r.Prefixes) != 2 || r.Prefixes[0] != want.Prefixes[0] || r.Prefixes[1] != want.Prefixes[1] {
		t.Errorf("rrl %+v, want %+v", o.rrl, want)
	}
	if o.cookies == nil || o.cookies.Secret != [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} ||
		o.cookies.Previous == nil || o.cookies.Previous[0] != 0xff {
		t.Errorf("cookies %+v", o.cookies)
	}

	o, err = parse(caddy.NewTestController("dns", "switchyard {\n lore http://x\n cookies\n}"))
	if err != nil || o.cookies == nil || o.cookies.Secret == [16]byte{} || o.rrl != nil {
		t.Errorf("cookies without a file: %+v, %v (want a random secret, no RRL)", o.cookies, err)
	}

	for _, c := range []struct{ body, err string }{
		{"rrl_slip 2", "without rrl"},
		{"rrl 0", "positive"},
		{"rrl many", "positive"},
		{"rrl 10\n rrl_slip -1", "0 (drop"},
		{"rrl 10\n rrl_prefix_len 33 56", "IPv4"},
		{"rrl 10\n rrl_prefix_len 24", "an IPv4 and an IPv6"},
		{"rrl 10\n rrl_prefix 10.0.0.0/40 5", "10.0.0.0/40"},
		{"rrl 10\n rrl_prefix 10.0.0.0/8 -5", "0 (exempt)"},
		{"rrl 10\n rrl_table_size 0", "positive"},
		{"cookies " + bad, "32 hex digits"},
		{"cookies " + filepath.Join(dir, "missing"), "no such file"},
		{"cookies a b c", "Wrong argument count"},
	} {
		_, err := parse(caddy.NewTestController("dns", "switchyard {\n lore http://x\n "+c.body+"\n}"))
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%q: error %v, want one saying %q", c.body, err, c.err)
		}
	}
}
