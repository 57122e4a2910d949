package lore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// ACMEDelegation sends the ACME DNS-01 validation of a name elsewhere: dnsauth answers
// _acme-challenge.<Name> with a CNAME to Target, typically an acme-dns account's fulldomain, so
// the owner's own ACME client (lego, certbot, acme.sh with their acme-dns providers) can prove
// control of the name without the platform's help.
type ACMEDelegation struct {
	// Name is the validated name, lowercase, without _acme-challenge: <owner>.<zone> (the
	// validation name of the wildcard *.<owner>.<zone>), <slug>.<owner>.<zone>, or a verified
	// custom domain.
	Name string `json:"name"`
	// Target is the CNAME target, lowercase, without the trailing dot.
	Target string `json:"target"`
	// Owner published the delegation; empty when an admin did. A custom domain's delegation is
	// served only while the domain is verified and points at a repl of Owner.
	Owner   string    `json:"owner,omitempty"`
	Created time.Time `json:"created"`
}

// ACMEStore is the optional part of a Store that keeps ACME delegations. MemStore has it; a
// Directory over a Store without it answers ErrUnavailable to the delegation methods.
type ACMEStore interface {
	// PutACMEDelegation creates or replaces the delegation of d.Name.
	PutACMEDelegation(ctx context.Context, d ACMEDelegation) (ACMEDelegation, error)
	// ACMEDelegation returns the delegation of name, or ErrNotFound.
	ACMEDelegation(ctx context.Context, name string) (ACMEDelegation, error)
	// DeleteACMEDelegation removes the delegation of name and returns it, or ErrNotFound.
	DeleteACMEDelegation(ctx context.Context, name string) (ACMEDelegation, error)
}

// DomainACMELabel is the label under the zone where custom domains' validation names live: the
// owner of shop.example.com publishes, once, _acme-challenge.shop.example.com CNAME
// _acme-challenge.shop.example.com._domains.<zone> (DomainACMEName), and lore's delegation
// decides where that name points. Labels starting with "_" are never owners, so it cannot
// collide with a repl name.
const DomainACMELabel = "_domains"

// DomainACMEName is the CNAME target the owner of a custom domain publishes at
// _acme-challenge.<domain> so that the platform answers its DNS-01 validations.
func DomainACMEName(domain, zone string) string {
	return "_acme-challenge." + strings.TrimSuffix(domain, ".") + "." + DomainACMELabel + "." + strings.TrimSuffix(zone, ".")
}

func (d *Directory) acmeStore() (ACMEStore, error) {
	s, ok := d.store.(ACMEStore)
	if !ok {
		return nil, fmt.Errorf("%w: this directory's store keeps no ACME delegations", ErrUnavailable)
	}
	return s, nil
}

// PutACMEDelegation publishes _acme-challenge.<name> CNAME <target>. owner is who asks: it must
// own name (see ACMEDelegation.Name), else the error wraps ErrNotFound for a name it cannot see
// and ErrInvalid otherwise. An empty owner is an admin, who may delegate any name in the zone
// and any custom domain lore has.
func (d *Directory) PutACMEDelegation(ctx context.Context, owner, name, target string) (ACMEDelegation, error) {
	s, err := d.acmeStore()
	if err != nil {
		return ACMEDelegation{}, err
	}
	n, err := d.checkACMEName(ctx, owner, name)
	if err != nil {
		return ACMEDelegation{}, err
	}
	t, err := normalizeTarget(target)
	if err != nil {
		return ACMEDelegation{}, err
	}
	out, err := s.PutACMEDelegation(ctx, ACMEDelegation{Name: n, Target: t, Owner: lower(owner), Created: d.now().UTC().Truncate(time.Microsecond)})
	if err == nil {
		d.version.Add(1)
	}
	return out, err
}

// ACMEDelegation returns the delegation of name as the given owner sees it (empty: admin).
func (d *Directory) ACMEDelegation(ctx context.Context, owner, name string) (ACMEDelegation, error) {
	s, err := d.acmeStore()
	if err != nil {
		return ACMEDelegation{}, err
	}
	n, err := d.checkACMEName(ctx, owner, name)
	if err != nil {
		return ACMEDelegation{}, err
	}
	return s.ACMEDelegation(ctx, n)
}

// DeleteACMEDelegation removes the delegation of name, as the given owner (empty: admin).
func (d *Directory) DeleteACMEDelegation(ctx context.Context, owner, name string) error {
	s, err := d.acmeStore()
	if err != nil {
		return err
	}
	n, err := d.checkACMEName(ctx, owner, name)
	if err != nil {
		return err
	}
	_, err = s.DeleteACMEDelegation(ctx, n)
	if err == nil {
		d.version.Add(1)
	}
	return err
}

// ACMETarget is dnsauth.Zone.ACMEDelegate for the platform zone: given the name below
// _acme-challenge (<name>.<zone>, lowercase, as dnsauth passes it) it returns the delegation's
// target, or "" when there is none (dnsauth then serves its challenge store). A custom domain's
// validation name is <domain>._domains.<zone> (DomainACMEName); its delegation is served only
// while the domain is verified and still belongs to the delegation's owner.
func (d *Directory) ACMETarget(ctx context.Context, name string) (string, error) {
	s, ok := d.store.(ACMEStore)
	if !ok {
		return "", nil
	}
	name = lower(strings.TrimSuffix(name, "."))
	if name != d.zone && !strings.HasSuffix(name, "."+d.zone) {
		return "", nil
	}
	domain, isDomain := strings.CutSuffix(name, "."+DomainACMELabel+"."+d.zone)
	key := name
	if isDomain {
		key = domain
	}
	del, err := s.ACMEDelegation(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if isDomain && del.Owner != "" {
		r, err := d.store.ReplByDomain(ctx, domain)
		if errors.Is(err, ErrNotFound) || err == nil && r.Owner != del.Owner {
			return "", nil // the domain changed hands or lost its verification
		}
		if err != nil {
			return "", err
		}
	}
	return del.Target, nil
}

// checkACMEName normalizes name and checks that owner (empty: admin) may delegate it.
func (d *Directory) checkACMEName(ctx context.Context, owner, name string) (string, error) {
	n, err := NormalizeDomain(name)
	if err != nil {
		return "", err
	}
	if rel, ok := strings.CutSuffix(n, "."+d.zone); ok {
		labels := strings.Split(rel, ".")
		if len(labels) > 2 {
			return "", fmt.Errorf("%w: %q is not <owner>.%s or <slug>.<owner>.%s", ErrInvalid, n, d.zone, d.zone)
		}
		if owner == "" {
			return n, nil
		}
		nameOwner := labels[len(labels)-1]
		if nameOwner != lower(owner) {
			return "", fmt.Errorf("%w: %q belongs to owner %q, not %q", ErrInvalid, n, nameOwner, lower(owner))
		}
		if len(labels) == 2 {
			if _, err := d.store.ReplByName(ctx, nameOwner, labels[0]); err != nil {
				return "", err
			}
		}
		return n, nil
	}
	if n == d.zone {
		if owner != "" {
			return "", fmt.Errorf("%w: only an admin may delegate the zone apex", ErrInvalid)
		}
		return n, nil
	}
	dom, err := d.store.Domain(ctx, n)
	if err != nil {
		return "", err
	}
	if owner == "" {
		return n, nil
	}
	if !dom.Verified {
		return "", fmt.Errorf("%w: custom domain %q is not verified yet", ErrInvalid, n)
	}
	r, err := d.store.Repl(ctx, dom.Repl)
	if err != nil {
		return "", err
	}
	if r.Owner != lower(owner) {
		return "", fmt.Errorf("%w: custom domain %q (no such domain of owner %q)", ErrNotFound, n, lower(owner))
	}
	return n, nil
}

// normalizeTarget checks a CNAME target: a DNS name of letters, digits, hyphens and
// underscores (acme-dns challenge zones may use "_" labels), at least two labels.
func normalizeTarget(s string) (string, error) {
	t := lower(strings.TrimSuffix(strings.TrimSpace(s), "."))
	if t == "" {
		return "", fmt.Errorf("%w: empty target", ErrInvalid)
	}
	if len(t) > maxNameLength {
		return "", fmt.Errorf("%w: target longer than %d octets", ErrInvalid, maxNameLength)
	}
	labels := strings.Split(t, ".")
	if len(labels) < 2 {
		return "", fmt.Errorf("%w: target %q needs at least two labels", ErrInvalid, t)
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", fmt.Errorf("%w: target %q has a bad label %q", ErrInvalid, t, l)
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("%w: target %q has a bad character %q", ErrInvalid, t, c)
			}
		}
	}
	return t, nil
}

// acmeTable is MemStore's ACMEStore: a map under its own lock (delegations are few and
// written rarely, and not part of the directory's watch stream).
type acmeTable struct {
	mu sync.RWMutex
	m  map[string]ACMEDelegation
}

// PutACMEDelegation implements ACMEStore.
func (s *MemStore) PutACMEDelegation(ctx context.Context, d ACMEDelegation) (ACMEDelegation, error) {
	if err := ctx.Err(); err != nil {
		return ACMEDelegation{}, err
	}
	s.acme.mu.Lock()
	defer s.acme.mu.Unlock()
	if s.acme.m == nil {
		s.acme.m = map[string]ACMEDelegation{}
	}
	s.acme.m[d.Name] = d
	return d, nil
}

// ACMEDelegation implements ACMEStore.
func (s *MemStore) ACMEDelegation(ctx context.Context, name string) (ACMEDelegation, error) {
	if err := ctx.Err(); err != nil {
		return ACMEDelegation{}, err
	}
	s.acme.mu.RLock()
	defer s.acme.mu.RUnlock()
	d, ok := s.acme.m[name]
	if !ok {
		return ACMEDelegation{}, errNotFound("acme delegation", name)
	}
	return d, nil
}

// DeleteACMEDelegation implements ACMEStore.
func (s *MemStore) DeleteACMEDelegation(ctx context.Context, name string) (ACMEDelegation, error) {
	if err := ctx.Err(); err != nil {
		return ACMEDelegation{}, err
	}
	s.acme.mu.Lock()
	defer s.acme.mu.Unlock()
	d, ok := s.acme.m[name]
	if !ok {
		return ACMEDelegation{}, errNotFound("acme delegation", name)
	}
	delete(s.acme.m, name)
	return d, nil
}

var _ ACMEStore = (*MemStore)(nil)
