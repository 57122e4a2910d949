package autotls

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// solver is the DNS-01 solver: it publishes the value in the challenge store dnsauth answers
// from, so the CA's first query already finds it. Values expire by themselves (the store keeps
// the two most recent per name, enough for a name and its wildcard at once), so CleanUp has
// nothing to do.
type solver struct {
	store Challenges
	ttl   time.Duration
}

func (s *solver) Present(ctx context.Context, chal acme.Challenge) error {
	name := strings.ToLower(strings.TrimSuffix(chal.DNS01TXTRecordName(), "."))
	if err := s.store.AddTXT(ctx, name, chal.DNS01KeyAuthorization(), time.Now().Add(s.ttl)); err != nil {
		return fmt.Errorf("autotls: publishing the DNS-01 value at %s: %w", name, err)
	}
	return nil
}

func (s *solver) CleanUp(context.Context, acme.Challenge) error { return nil }
