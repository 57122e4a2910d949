package etcd_test

import (
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/dnsauth/acmedns"
	"github.com/switchyard-dev/switchyard/dnsauth/acmedns/acmednstest"
	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
)

// ACMEStore passes the acmedns conformance suite, written through one client and read through
// another (two DNS replicas see each other's values).
func TestACMEStore(t *testing.T) {
	c := etcdtest.New(t, 1)
	acmednstest.Run(t, func(t *testing.T, now func() time.Time) (w, r acmedns.Store) {
		p := prefix("acme")
		newStore := func() *etcd.ACMEStore {
			s, err := etcd.NewACMEStore(etcd.ACMEStoreConfig{Client: c.Client(t), Prefix: p, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		return newStore(), newStore()
	})
}
