package etcd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// CertStorageConfig configures a CertStorage.
type CertStorageConfig struct {
	// Client is the etcd client. Required; the storage does not close it.
	Client *clientv3.Client
	// Prefix is prepended to every key. Empty means "/switchyard/certs/".
	Prefix string
	// LockTTL is how long a lock outlives a holder that stopped renewing it (crashed): the TTL of
	// the etcd session behind each lock, whole seconds. Zero means 30 s.
	LockTTL time.Duration
}

// CertStorage is certmagic.Storage in etcd, for autotls.Config.Storage: every hosting replica
// shares certificates, keys and ACME accounts, and the locks that make only one of them obtain
// a certificate. Keys under Prefix: k/<key> (8 bytes of modification time, Unix nanoseconds,
// then the value) and lock/<name> (an etcd concurrency.Mutex on a session of LockTTL).
type CertStorage struct {
	cli *clientv3.Client
	p   string
	ttl int

	mu    sync.Mutex
	locks map[string]*certLock // held by this process, by name
}

type certLock struct {
	sess *concurrency.Session
	m    *concurrency.Mutex
}

var _ certmagic.Storage = (*CertStorage)(nil)

// NewCertStorage returns a storage over cfg.Client.
func NewCertStorage(cfg CertStorageConfig) (*CertStorage, error) {
	if cfg.Client == nil {
		return nil, errors.New("etcd: CertStorageConfig.Client is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/switchyard/certs/"
	}
	ttl := int(cfg.LockTTL / time.Second)
	if ttl <= 0 {
		ttl = 30
	}
	return &CertStorage{cli: cfg.Client, p: cfg.Prefix, ttl: ttl, locks: map[string]*certLock{}}, nil
}

func (s *CertStorage) key(k string) string { return s.p + "k/" + strings.Trim(k, "/") }

// Store implements certmagic.Storage.
func (s *CertStorage) Store(ctx context.Context, key string, value []byte) error {
	b := make([]byte, 8+len(value))
	binary.BigEndian.PutUint64(b, uint64(time.Now().UnixNano()))
	copy(b[8:], value)
	_, err := s.cli.Put(ctx, s.key(key), string(b))
	return err
}

// Load implements certmagic.Storage; a missing key is fs.ErrNotExist.
func (s *CertStorage) Load(ctx context.Context, key string) ([]byte, error) {
	resp, err := s.cli.Get(ctx, s.key(key))
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 || len(resp.Kvs[0].Value) < 8 {
		return nil, fmt.Errorf("etcd: cert storage key %q: %w", key, fs.ErrNotExist)
	}
	return resp.Kvs[0].Value[8:], nil
}

// Delete implements certmagic.Storage: the key and every key below it.
func (s *CertStorage) Delete(ctx context.Context, key string) error {
	k := s.key(key)
	_, err := s.cli.Txn(ctx).Then(
		clientv3.OpDelete(k),
		clientv3.OpDelete(k+"/", clientv3.WithPrefix()),
	).Commit()
	return err
}

// Exists implements certmagic.Storage.
func (s *CertStorage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// Stat implements certmagic.Storage: a key with a value, or a "directory" (a prefix of keys).
func (s *CertStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	k := s.key(key)
	resp, err := s.cli.Get(ctx, k)
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	if len(resp.Kvs) > 0 && len(resp.Kvs[0].Value) >= 8 {
		v := resp.Kvs[0].Value
		return certmagic.KeyInfo{
			Key: key, IsTerminal: true, Size: int64(len(v) - 8),
			Modified: time.Unix(0, int64(binary.BigEndian.Uint64(v))),
		}, nil
	}
	resp, err = s.cli.Get(ctx, k+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	if resp.Count > 0 {
		return certmagic.KeyInfo{Key: key}, nil
	}
	return certmagic.KeyInfo{}, fmt.Errorf("etcd: cert storage key %q: %w", key, fs.ErrNotExist)
}

// List implements certmagic.Storage: the keys directly below path (files and directories), or
// with recursive every key with a value below it.
func (s *CertStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	dir := s.key(path) + "/"
	if strings.Trim(path, "/") == "" {
		dir = s.p + "k/"
	}
	resp, err := s.cli.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	base := strings.Trim(path, "/")
	seen := map[string]bool{}
	var out []string
	for _, kv := range resp.Kvs {
		rel := strings.TrimPrefix(string(kv.Key), dir)
		if !recursive {
			rel, _, _ = strings.Cut(rel, "/")
		}
		name := rel
		if base != "" {
			name = base + "/" + rel
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("etcd: cert storage path %q: %w", path, fs.ErrNotExist)
	}
	sort.Strings(out)
	return out, nil
}

// Lock implements certmagic.Locker: it blocks until this process holds name, or ctx ends. A
// holder that crashes loses the lock after LockTTL.
func (s *CertStorage) Lock(ctx context.Context, name string) error {
	sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(s.ttl), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return err
	}
	m := concurrency.NewMutex(sess, s.p+"lock/"+name)
	if err := m.Lock(ctx); err != nil {
		sess.Close()
		return err
	}
	s.mu.Lock()
	s.locks[name] = &certLock{sess: sess, m: m}
	s.mu.Unlock()
	return nil
}

// Unlock implements certmagic.Locker.
func (s *CertStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	l, ok := s.locks[name]
	delete(s.locks, name)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("etcd: cert storage lock %q is not held here", name)
	}
	err := l.m.Unlock(ctx)
	return errors.Join(err, l.sess.Close())
}

// Close releases every lock this process holds (their sessions end at once instead of after
// LockTTL).
func (s *CertStorage) Close() error {
	s.mu.Lock()
	locks := s.locks
	s.locks = map[string]*certLock{}
	s.mu.Unlock()
	var errs []error
	for _, l := range locks {
		errs = append(errs, l.sess.Close())
	}
	return errors.Join(errs...)
}
