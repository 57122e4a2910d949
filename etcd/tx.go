package etcd

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// errRetry makes run start the transaction function again on a fresh read.
var errRetry = errors.New("etcd: retry")

// tx is one optimistic transaction: every key read records a comparison of its ModRevision
// with what was read (0 for a missing key), and commit writes only if none changed, so
// concurrent writers from any number of processes serialize through etcd.
type tx struct {
	ctx    context.Context
	cli    *clientv3.Client
	cmps   []clientv3.Cmp
	seen   map[string]bool
	order  []string
	writes map[string]clientv3.Op
}

// get reads keys in one round trip and returns their values (nil for a missing key).
func (t *tx) get(keys ...string) ([][]byte, error) {
	ops := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		ops[i] = clientv3.OpGet(k)
	}
	resp, err := t.cli.Txn(t.ctx).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("etcd: read: %w", err)
	}
	out := make([][]byte, len(keys))
	for i, k := range keys {
		var mod int64
		if kvs := resp.Responses[i].GetResponseRange().Kvs; len(kvs) > 0 {
			out[i], mod = kvs[0].Value, kvs[0].ModRevision
		}
		if !t.seen[k] {
			t.seen[k] = true
			t.cmps = append(t.cmps, clientv3.Compare(clientv3.ModRevision(k), "=", mod))
		}
	}
	return out, nil
}

func (t *tx) put(key string, val []byte) { t.write(key, clientv3.OpPut(key, string(val))) }
func (t *tx) del(key string)             { t.write(key, clientv3.OpDelete(key)) }

func (t *tx) write(key string, op clientv3.Op) {
	if _, ok := t.writes[key]; !ok {
		t.order = append(t.order, key)
	}
	t.writes[key] = op
}

// run calls fn on a fresh tx and commits what it wrote, again and again while another writer
// changed a key fn read (or fn returns errRetry). An error from fn is returned as is.
func run(ctx context.Context, cli *clientv3.Client, fn func(t *tx) error) (*clientv3.TxnResponse, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t := &tx{ctx: ctx, cli: cli, seen: map[string]bool{}, writes: map[string]clientv3.Op{}}
		err := fn(t)
		if errors.Is(err, errRetry) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(t.order) == 0 {
			return nil, nil
		}
		ops := make([]clientv3.Op, 0, len(t.order))
		for _, k := range t.order {
			ops = append(ops, t.writes[k])
		}
		resp, err := cli.Txn(ctx).If(t.cmps...).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("etcd: commit: %w", err)
		}
		if resp.Succeeded {
			return resp, nil
		}
	}
}
