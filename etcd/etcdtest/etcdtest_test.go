package etcdtest_test

import (
	"context"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
)

func TestThreeMembersSurviveOneStop(t *testing.T) {
	c := etcdtest.New(t, 3)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	c.Stop(0)
	if _, err := cli.Put(ctx, "k", "v2"); err != nil {
		t.Fatalf("put with 2 of 3 members: %v", err)
	}
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v2" {
		t.Fatalf("get: %v %v", resp, err)
	}
}
