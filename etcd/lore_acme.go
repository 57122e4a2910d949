package etcd

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/lore"
)

// ACME delegations (lore.ACMEStore) live at <prefix>acme/<name>, outside the event stream: they
// are read by dnsauth on _acme-challenge queries only, through the Directory.

var _ lore.ACMEStore = (*LoreStore)(nil)

func (s *LoreStore) acmeKey(name string) string { return s.p + "acme/" + name }

// PutACMEDelegation implements lore.ACMEStore.
func (s *LoreStore) PutACMEDelegation(ctx context.Context, d lore.ACMEDelegation) (lore.ACMEDelegation, error) {
	if _, err := s.cli.Put(ctx, s.acmeKey(d.Name), string(encode(d))); err != nil {
		return lore.ACMEDelegation{}, fmt.Errorf("etcd: put: %w", err)
	}
	return d, nil
}

// ACMEDelegation implements lore.ACMEStore.
func (s *LoreStore) ACMEDelegation(ctx context.Context, name string) (lore.ACMEDelegation, error) {
	b, err := s.getOne(ctx, s.acmeKey(name))
	if err != nil {
		return lore.ACMEDelegation{}, err
	}
	return decodeFound[lore.ACMEDelegation](b, "acme delegation %q", name)
}

// DeleteACMEDelegation implements lore.ACMEStore.
func (s *LoreStore) DeleteACMEDelegation(ctx context.Context, name string) (lore.ACMEDelegation, error) {
	resp, err := s.cli.Delete(ctx, s.acmeKey(name), clientv3.WithPrevKV())
	if err != nil {
		return lore.ACMEDelegation{}, fmt.Errorf("etcd: delete: %w", err)
	}
	if len(resp.PrevKvs) == 0 {
		return lore.ACMEDelegation{}, fmt.Errorf("%w: acme delegation %q", lore.ErrNotFound, name)
	}
	return decode[lore.ACMEDelegation](resp.PrevKvs[0].Value)
}
