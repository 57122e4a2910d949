package lore

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// MaxLabelLength is the longest DNS label, in octets (RFC 1035).
const MaxLabelLength = 63

// maxNameLength is the longest domain name in presentation form without the trailing dot.
const maxNameLength = 253

// IDLabel is the label that introduces repl IDs: <id>.id.<zone> names a repl by ID.
const IDLabel = "id"

// ChallengeLabel is the label under a custom domain where its owner publishes the TXT record
// that proves ownership: _switchyard-challenge.<domain>.
const ChallengeLabel = "_switchyard-challenge"

// reservedLabels may not be used as an owner or a slug. Labels that begin with "_" (service and
// ACME labels such as _acme-challenge) and labels with "--" in the third and fourth positions
// (reserved by RFC 5891 for encodings such as xn-- punycode, which would let names look like
// other names) are refused as well; see Reserved.
var reservedLabels = map[string]bool{
	IDLabel: true, "www": true, "api": true, "admin": true, "lore": true, "eval": true,
	"hosting": true, "static": true, "status": true, "ns": true, "ns1": true, "ns2": true,
	"ns3": true, "ns4": true, "mail": true, "mx": true, "smtp": true, "localhost": true,
	"abuse": true, "postmaster": true, "hostmaster": true, "webmaster": true,
}

// Reserved reports whether label (already lowercase) is reserved and so refused as an owner or
// slug: one of id, www, api, admin, lore, eval, hosting, static, status, ns, ns1-ns4, mail, mx,
// smtp, localhost, abuse, postmaster, hostmaster, webmaster; any label beginning with "_"; and
// any label with "--" in its third and fourth positions (RFC 5891, e.g. "xn--").
func Reserved(label string) bool {
	if reservedLabels[label] {
		return true
	}
	if len(label) > 0 && label[0] == '_' {
		return true
	}
	return len(label) >= 4 && label[2] == '-' && label[3] == '-'
}

// checkLabel reports why s is not a DNS label under the LDH rule: letters, digits and hyphens,
// no leading or trailing hyphen, 1 to 63 octets. Upper case is accepted (labels are
// case-insensitive); callers lowercase. It does not allocate on success.
func checkLabel(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty label", ErrInvalid)
	}
	if len(s) > MaxLabelLength {
		return fmt.Errorf("%w: label %.20q... is %d octets, longer than %d", ErrInvalid, s, len(s), MaxLabelLength)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', 'A' <= c && c <= 'Z':
		case c == '-':
			if i == 0 || i == len(s)-1 {
				return fmt.Errorf("%w: label %q begins or ends with a hyphen", ErrInvalid, s)
			}
		default:
			return fmt.Errorf("%w: label %q has a character other than a letter, digit or hyphen", ErrInvalid, s)
		}
	}
	return nil
}

// NormalizeName checks that s is a DNS label usable as an owner or a slug and returns it in
// lower case. what names the field in the error ("owner", "slug"). Errors wrap ErrInvalid.
func NormalizeName(what, s string) (string, error) {
	if err := checkLabel(s); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	s = lower(s)
	if Reserved(s) {
		return "", fmt.Errorf("%w: %s: %q is a reserved label", ErrInvalid, what, s)
	}
	return s, nil
}

// lower returns s in ASCII lower case, without allocating when s has no upper case letter.
func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

// HostName is a platform hostname taken apart by ParseHost: either a name (Owner and Slug set,
// from <slug>.<owner>.<zone>) or an ID (ID set, from <id>.id.<zone>). Fields are lowercase.
type HostName struct {
	Owner, Slug string
	ID          string
}

// ParseHost takes apart a platform hostname: <slug>.<owner>.<zone> or <id>.id.<zone>, in any
// case, with an optional :port (as in an HTTP Host header) and an optional trailing dot (as in a
// DNS question). zone is the platform zone, e.g. "repl.test" (case and trailing dot ignored).
//
// Every error wraps ErrInvalid: a host outside the zone (the caller may then try it as a custom
// domain), the zone itself, the wrong number of labels, a label that breaks the DNS rules, or a
// reserved owner or slug. ParseHost does not allocate when host is already lowercase.
func ParseHost(host, zone string) (HostName, error) {
	h, err := stripPort(host)
	if err != nil {
		return HostName{}, err
	}
	h = strings.TrimSuffix(h, ".")
	zone = strings.TrimSuffix(zone, ".")
	if zone == "" {
		return HostName{}, fmt.Errorf("%w: empty zone", ErrInvalid)
	}
	if len(h) > maxNameLength {
		return HostName{}, fmt.Errorf("%w: host name longer than %d octets", ErrInvalid, maxNameLength)
	}
	if len(h) <= len(zone)+1 || h[len(h)-len(zone)-1] != '.' || !strings.EqualFold(h[len(h)-len(zone):], zone) {
		return HostName{}, fmt.Errorf("%w: host %q is not under zone %q", ErrInvalid, h, zone)
	}
	rest := h[:len(h)-len(zone)-1]
	first, second, ok := strings.Cut(rest, ".")
	if !ok {
		return HostName{}, fmt.Errorf("%w: host %q has one label under the zone; want <slug>.<owner> or <id>.id", ErrInvalid, h)
	}
	if strings.IndexByte(second, '.') >= 0 {
		return HostName{}, fmt.Errorf("%w: host %q has more than two labels under the zone", ErrInvalid, h)
	}
	if err := checkLabel(first); err != nil {
		return HostName{}, err
	}
	if err := checkLabel(second); err != nil {
		return HostName{}, err
	}
	first, second = lower(first), lower(second)
	if second == IDLabel {
		return HostName{ID: first}, nil
	}
	if Reserved(second) {
		return HostName{}, fmt.Errorf("%w: owner %q is a reserved label", ErrInvalid, second)
	}
	if Reserved(first) {
		return HostName{}, fmt.Errorf("%w: slug %q is a reserved label", ErrInvalid, first)
	}
	return HostName{Owner: second, Slug: first}, nil
}

// stripPort removes a :port suffix. A bracketed IPv6 literal or any other colon is an error.
func stripPort(host string) (string, error) {
	i := strings.IndexByte(host, ':')
	if i < 0 {
		return host, nil
	}
	port := host[i+1:]
	if port == "" || len(port) > 5 {
		return "", fmt.Errorf("%w: host %q has a bad port", ErrInvalid, host)
	}
	n := 0
	for j := 0; j < len(port); j++ {
		c := port[j]
		if c < '0' || c > '9' {
			return "", fmt.Errorf("%w: host %q has a bad port", ErrInvalid, host)
		}
		n = n*10 + int(c-'0')
	}
	if n > 65535 {
		return "", fmt.Errorf("%w: host %q has a port above 65535", ErrInvalid, host)
	}
	return host[:i], nil
}

// Hostname returns the repl's platform hostname <slug>.<owner>.<zone>.
func Hostname(r Repl, zone string) string {
	return r.Slug + "." + r.Owner + "." + strings.TrimSuffix(lower(zone), ".")
}

// IDHostname returns the repl's ID hostname <id>.id.<zone>, the target custom domains CNAME to.
func IDHostname(r Repl, zone string) string {
	return r.ID + "." + IDLabel + "." + strings.TrimSuffix(lower(zone), ".")
}

// NormalizeDomain checks that s is a fully qualified domain name usable as a custom domain and
// returns it lowercase without a trailing dot: at least two labels, each a DNS label, at most
// 253 octets, a top-level label that is not all digits, and not an IP address. It does not
// check the platform zone (the Directory does). Errors wrap ErrInvalid.
func NormalizeDomain(s string) (string, error) {
	d := lower(strings.TrimSuffix(s, "."))
	if d == "" {
		return "", fmt.Errorf("%w: empty domain", ErrInvalid)
	}
	if len(d) > maxNameLength {
		return "", fmt.Errorf("%w: domain longer than %d octets", ErrInvalid, maxNameLength)
	}
	if _, err := netip.ParseAddr(d); err == nil {
		return "", fmt.Errorf("%w: domain %q is an IP address", ErrInvalid, d)
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return "", fmt.Errorf("%w: domain %q needs at least two labels", ErrInvalid, d)
	}
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return "", fmt.Errorf("domain %q: %w", d, err)
		}
	}
	tld := labels[len(labels)-1]
	if strings.Trim(tld, "0123456789") == "" {
		return "", fmt.Errorf("%w: domain %q has an all-numeric top-level label", ErrInvalid, d)
	}
	return d, nil
}

// idEncoding is lowercase base32 (a-z, 2-7) without padding: every ID is a DNS label.
var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// idBytes random bytes make 16 characters, 80 bits: collisions are negligible at any scale, and
// the store refuses the rare one (the Directory then draws again).
const idBytes = 10

// newID draws a repl ID from r: 16 lowercase base32 characters beginning with a letter, never a
// reserved label.
func newID(r io.Reader) (string, error) {
	var b [idBytes]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return "", fmt.Errorf("lore: reading random ID: %w", err)
		}
		id := idEncoding.EncodeToString(b[:])
		if id[0] >= 'a' && id[0] <= 'z' && !Reserved(id) {
			return id, nil
		}
	}
}

// NewReplID returns a fresh random repl ID from crypto/rand.
func NewReplID() (string, error) { return newID(rand.Reader) }
