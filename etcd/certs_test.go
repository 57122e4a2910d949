package etcd_test

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
)

// CertStorage behaves as certmagic's FileStorage: values, directories, listings, and a lock
// that two replicas (two clients) cannot hold at once.
func TestCertStorage(t *testing.T) {
	c := etcdtest.New(t, 1)
	ctx := context.Background()
	p := prefix("certs")
	newStorage := func() *etcd.CertStorage {
		s, err := etcd.NewCertStorage(etcd.CertStorageConfig{Client: c.Client(t), Prefix: p, LockTTL: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := newStorage(), newStorage()
	if _, err := b.Load(ctx, "certificates/ca/x/x.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing key: %v", err)
	}
	for k, v := range map[string]string{
		"certificates/ca/x/x.crt": "cert", "certificates/ca/x/x.key": "key", "certificates/ca/y/y.crt": "y", "acme/ca/users/u.json": "u",
	} {
		if err := a.Store(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := b.Load(ctx, "certificates/ca/x/x.crt"); err != nil || string(v) != "cert" {
		t.Fatalf("load through another client: %q %v", v, err)
	}
	if info, err := b.Stat(ctx, "certificates/ca/x/x.key"); err != nil || !info.IsTerminal || info.Size != 3 || time.Since(info.Modified) > time.Minute {
		t.Fatalf("stat: %+v %v", info, err)
	}
	if info, err := b.Stat(ctx, "certificates/ca"); err != nil || info.IsTerminal {
		t.Fatalf("stat of a directory: %+v %v", info, err)
	}
	if !b.Exists(ctx, "certificates") || b.Exists(ctx, "certificates/ca/z") || b.Exists(ctx, "certif") {
		t.Fatal("Exists")
	}
	if got, err := b.List(ctx, "certificates/ca", false); err != nil || !slices.Equal(got, []string{"certificates/ca/x", "certificates/ca/y"}) {
		t.Fatalf("list: %q %v", got, err)
	}
	if got, err := b.List(ctx, "certificates", true); err != nil || !slices.Equal(got, []string{"certificates/ca/x/x.crt", "certificates/ca/x/x.key", "certificates/ca/y/y.crt"}) {
		t.Fatalf("recursive list: %q %v", got, err)
	}
	if err := b.Delete(ctx, "certificates/ca/x"); err != nil {
		t.Fatal(err)
	}
	if a.Exists(ctx, "certificates/ca/x/x.crt") || !a.Exists(ctx, "certificates/ca/y/y.crt") {
		t.Fatal("Delete of a directory")
	}

	// The lock: b waits while a holds it, and gets it when a unlocks.
	if err := a.Lock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := b.Lock(short, "issue_cert_x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second holder: %v", err)
	}
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx, "issue_cert_x") }()
	if err := a.Unlock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(ctx, "issue_cert_x"); err == nil {
		t.Fatal("unlocking a lock not held")
	}
	// A holder that goes away without unlocking (Close: its session ends) frees the lock.
	if err := a.Lock(ctx, "issue_cert_y"); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if err := b.Lock(ctx, "issue_cert_y"); err != nil {
		t.Fatal(err)
	}
	_ = b.Unlock(ctx, "issue_cert_y")
}
