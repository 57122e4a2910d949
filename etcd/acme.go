package etcd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/dnsauth/acmedns"
)

// ACMEStoreConfig configures an ACMEStore.
type ACMEStoreConfig struct {
	// Client is the etcd client. Required; the store does not close it.
	Client *clientv3.Client
	// Prefix is prepended to every key. Empty means "/switchyard/acmedns/".
	Prefix string
	// Keep is how many values a name holds at once; adding one more drops the oldest. Zero
	// means 2, as acmedns.MemStore.
	Keep int
	// Now is the clock that decides expiry. Nil means time.Now.
	Now func() time.Time
}

// ACMEStore is an acmedns.Store (and dnsauth.Challenges) in etcd, so every DNS replica serves
// the same challenge values. Keys under Prefix: account/<username>, subdomain/<subdomain>
// (uniqueness) and txt/<name>\x00<random> (a value and its expiry; newest is highest create
// revision).
type ACMEStore struct {
	cli  *clientv3.Client
	p    string
	keep int
	now  func() time.Time
}

var _ acmedns.Store = (*ACMEStore)(nil)

// NewACMEStore returns a store over cfg.Client.
func NewACMEStore(cfg ACMEStoreConfig) (*ACMEStore, error) {
	if cfg.Client == nil {
		return nil, errors.New("etcd: ACMEStoreConfig.Client is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/switchyard/acmedns/"
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 2
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &ACMEStore{cli: cfg.Client, p: cfg.Prefix, keep: cfg.Keep, now: cfg.Now}, nil
}

// CreateAccount implements acmedns.Store in one transaction.
func (s *ACMEStore) CreateAccount(ctx context.Context, a acmedns.Account) error {
	uk, sk := s.p+"account/"+a.Username, s.p+"subdomain/"+a.Subdomain
	resp, err := s.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(uk), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(sk), "=", 0),
	).Then(clientv3.OpPut(uk, string(encode(a))), clientv3.OpPut(sk, a.Username)).
		Else(clientv3.OpGet(uk, clientv3.WithCountOnly())).Commit()
	if err != nil {
		return fmt.Errorf("etcd: create account: %w", err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().Count > 0 {
			return fmt.Errorf("account username %q: %w", a.Username, acmedns.ErrExists)
		}
		return fmt.Errorf("account subdomain %q: %w", a.Subdomain, acmedns.ErrExists)
	}
	return nil
}

// Account implements acmedns.Store.
func (s *ACMEStore) Account(ctx context.Context, username string) (acmedns.Account, error) {
	resp, err := s.cli.Get(ctx, s.p+"account/"+username)
	if err != nil {
		return acmedns.Account{}, fmt.Errorf("etcd: get account: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return acmedns.Account{}, fmt.Errorf("account %q: %w", username, acmedns.ErrNotFound)
	}
	return decode[acmedns.Account](resp.Kvs[0].Value)
}

type txtValue struct {
	Value   string    `json:"value"`
	Expires time.Time `json:"expires"`
}

func normName(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }

func (s *ACMEStore) txtPrefix(name string) string { return s.p + "txt/" + normName(name) + "\x00" }

// values returns name's values newest first, with their keys.
func (s *ACMEStore) values(ctx context.Context, name string) ([]txtValue, []string, error) {
	resp, err := s.cli.Get(ctx, s.txtPrefix(name), clientv3.WithPrefix())
	if err != nil {
		return nil, nil, fmt.Errorf("etcd: get txt: %w", err)
	}
	kvs := resp.Kvs
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].CreateRevision > kvs[j].CreateRevision })
	vals := make([]txtValue, len(kvs))
	keys := make([]string, len(kvs))
	for i, kv := range kvs {
		if vals[i], err = decode[txtValue](kv.Value); err != nil {
			return nil, nil, err
		}
		keys[i] = string(kv.Key)
	}
	return vals, keys, nil
}

// AddTXT implements acmedns.Store. It also removes the name's expired values and its oldest
// live ones beyond Keep.
func (s *ACMEStore) AddTXT(ctx context.Context, name, value string, expires time.Time) error {
	var id [8]byte
	rand.Read(id[:])
	key := s.txtPrefix(name) + hex.EncodeToString(id[:])
	if _, err := s.cli.Put(ctx, key, string(encode(txtValue{Value: value, Expires: expires}))); err != nil {
		return fmt.Errorf("etcd: add txt: %w", err)
	}
	vals, keys, err := s.values(ctx, name)
	if err != nil {
		return err
	}
	now := s.now()
	live := 0
	var ops []clientv3.Op
	for i, v := range vals {
		if v.Expires.After(now) && live < s.keep {
			live++
			continue
		}
		ops = append(ops, clientv3.OpDelete(keys[i]))
	}
	if len(ops) > 0 {
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("etcd: trim txt: %w", err)
		}
	}
	return nil
}

// TXT implements acmedns.Store and dnsauth.Challenges.
func (s *ACMEStore) TXT(ctx context.Context, name string) ([]string, error) {
	vals, _, err := s.values(ctx, name)
	if err != nil {
		return nil, err
	}
	now := s.now()
	var out []string
	for _, v := range vals {
		if v.Expires.After(now) && len(out) < s.keep {
			out = append(out, v.Value)
		}
	}
	return out, nil
}
