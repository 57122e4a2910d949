package etcd_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
	"github.com/switchyard-dev/switchyard/placement"
)

func newControlplane(t *testing.T, s placement.Store) *placement.Controlplane {
	t.Helper()
	cp, err := placement.New(placement.Config{Store: s, HeartbeatTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// An agent that stops keeping its lease alive (its process died: no revoke) makes its VM
// vanish from placement within TTL + 1 s, and its repl becomes placeable on another VM.
func TestAgentStopsVMGone(t *testing.T) {
	c := etcdtest.New(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := etcd.NewPlacementStore(etcd.PlacementStoreConfig{Client: c.Client(t), Prefix: prefix("placement")})
	if err != nil {
		t.Fatal(err)
	}
	cp := newControlplane(t, store)
	alive := prefix("alive")
	lv, err := etcd.WatchLiveness(etcd.LivenessConfig{Client: c.Client(t), Prefix: alive, Placement: cp, Deregister: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lv.Close() })
	<-lv.Ready()

	vm := func(id string) placement.VM {
		return placement.VM{ID: id, Addr: "http://127.0.0.1:1", Capacity: placement.Resources{Containers: 1}, State: placement.Active}
	}
	// The agent has its own client, as it would in its own process.
	agentCli, err := c.NewClient()
	if err != nil {
		t.Fatal(err)
	}
	const ttl = time.Second
	lease, err := etcd.KeepVMAlive(ctx, etcd.VMLeaseConfig{Client: agentCli, Prefix: alive, TTL: ttl}, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Register(ctx, vm("vm1")); err != nil {
		t.Fatal(err)
	}
	a, err := cp.Place(ctx, placement.Request{Repl: "r1"})
	if err != nil || a.VM != "vm1" {
		t.Fatalf("place: %+v %v", a, err)
	}
	// Keep-alives work: after 2 TTLs the VM is still there.
	select {
	case <-lease.Done():
		t.Fatal("lease lost while the agent runs")
	case <-time.After(2 * ttl):
	}
	if v, err := cp.VM(ctx, "vm1"); err != nil || v.State != placement.Active {
		t.Fatalf("vm with a live lease: %+v %v", v, err)
	}

	// The agent dies: its client closes without revoking the lease.
	stopped := time.Now()
	agentCli.Close()
	<-lease.Done()
	deadline := stopped.Add(ttl + time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := cp.VM(ctx, "vm1")
		if errors.Is(err, placement.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm still registered %v after its agent stopped (TTL %v): %v", time.Since(stopped), ttl, err)
		}
		<-tick.C
	}
	t.Logf("vm gone %v after its agent stopped (TTL %v)", time.Since(stopped).Round(time.Millisecond), ttl)
	if _, err := cp.Lookup(ctx, "r1"); !errors.Is(err, placement.ErrNotFound) {
		t.Fatalf("repl of the dead vm still assigned: %v", err)
	}
	if _, err := cp.Register(ctx, vm("vm2")); err != nil {
		t.Fatal(err)
	}
	if a, err := cp.Place(ctx, placement.Request{Repl: "r1"}); err != nil || a.VM != "vm2" {
		t.Fatalf("repl of the dead vm not placeable: %+v %v", a, err)
	}
	if err := lease.Close(ctx); err == nil {
		t.Log("revoking an expired lease succeeded")
	}
}
