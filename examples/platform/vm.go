package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/placement"
)

// vm is one conman VM: a process runtime, the conman server with its placement agent, and the
// HTTP listener on the VM's own address.
type vm struct {
	id   string
	addr string // conman base URL
	host int    // host number in the cluster's /24

	mu          sync.Mutex // rt, cm and srv: an upgrade in place replaces them
	rt          conman.Runtime
	cm          *conman.Server
	srv         *server
	lease       *etcd.VMLease      // with the etcd store: the VM's liveness in etcd
	leaseCancel context.CancelFunc // ends the lease's keep-alives without revoking it
	crashed     atomic.Bool        // crash was called: the lease was left to expire
	once        sync.Once
	stopping    atomic.Bool
	done        chan struct{}
	err         error
}

// addVM starts a conman VM on the cluster's next VM address and registers it with placement.
func (c *cluster) addVM(ctx context.Context) (*vm, error) {
	c.mu.Lock()
	host := c.nextVM
	c.nextVM++
	c.mu.Unlock()
	return c.addVMAt(ctx, host)
}

// leftVMs returns the host numbers of this cluster's VMs that an earlier run of the platform
// left in the state directory with containers, in order, and removes the empty ones. A restart
// starts them again under the same ids, so their runtimes adopt every container they left.
func (c *cluster) leftVMs() ([]int, error) {
	dir := filepath.Join(c.p.cfg.StateDir, "conman")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var hosts []int
	for _, e := range ents {
		n, ok := strings.CutPrefix(e.Name(), c.id+"-vm")
		num, err := strconv.Atoi(n)
		if !ok || err != nil || num < 1 || num > 244 || !e.IsDir() {
			continue
		}
		sub, _ := os.ReadDir(filepath.Join(dir, e.Name()))
		if len(sub) == 0 {
			_ = os.Remove(filepath.Join(dir, e.Name()))
			continue
		}
		hosts = append(hosts, num+10)
	}
	sort.Ints(hosts)
	return hosts, nil
}

// addVMAt starts the conman VM at host number host (id <cluster>-vm<host-10>).
func (c *cluster) addVMAt(ctx context.Context, host int) (*vm, error) {
	c.mu.Lock()
	c.nextVM = max(c.nextVM, host+1)
	c.mu.Unlock()
	if host > 254 {
		return nil, errors.New("out of VM addresses in the cluster's /24")
	}
	cfg := &c.p.cfg
	v := &vm{id: fmt.Sprintf("%s-vm%d", c.id, host-10), host: host, done: make(chan struct{})}
	v.addr = "http://" + c.hostPort(host, cfg.ConmanPort)
	var err error
	if v.rt, v.cm, err = c.startConman(ctx, v, nil); err != nil {
		return nil, err
	}
	v.srv, err = serve(ctx, "conman "+v.id, c.hostPort(host, cfg.ConmanPort), v.cm, false)
	if err != nil {
		v.cm.Close()
		v.rt.Close()
		return nil, err
	}
	// Placement must know the VM before the cluster takes traffic (or a roll reports success).
	select {
	case <-v.cm.Registered():
	case <-ctx.Done():
		v.stop(context.Background())
		return nil, fmt.Errorf("vm %s did not register with placement: %w", v.id, ctx.Err())
	}
	if cfg.Store == StoreEtcd {
		// The VM's agent holds a lease for as long as it runs; the lease outlives Start's ctx.
		var lctx context.Context
		lctx, v.leaseCancel = context.WithCancel(context.WithoutCancel(ctx))
		v.lease, err = etcd.KeepVMAlive(lctx, etcd.VMLeaseConfig{
			Client: c.p.etcdCli, Prefix: c.alivePrefix(), TTL: cfg.AliveTTL,
		}, v.id)
		if err != nil {
			v.leaseCancel()
			v.stop(context.Background())
			return nil, fmt.Errorf("vm %s: %w", v.id, err)
		}
	}
	c.mu.Lock()
	c.vms = append(c.vms, v)
	c.mu.Unlock()
	return v, nil
}

// startConman creates the VM's runtime and conman Server (the successor of an upgrade in place
// with in).
func (c *cluster) startConman(ctx context.Context, v *vm, in *conman.Inheritance) (conman.Runtime, *conman.Server, error) {
	cfg := &c.p.cfg
	log := c.log // conman and the runtime name the VM in their own lines
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	rt, err := newRuntime(cfg.Runtime, cfg.Isolation, filepath.Join(cfg.StateDir, "conman", v.id), cfg.StateDir,
		cgroupParent(cfg.StateDir, v.id), log.With("component", "runtime", "vm", v.id))
	if err != nil {
		return nil, nil, err
	}
	vmAddr := cfg.clusterAddr(c.n, v.host)
	reg := c.p.vmRegisterer(c.id, v.id) // a handoff unregistered the predecessor's
	cm, err := conman.New(ctx, conman.Config{
		Runtime:           rt,
		Credential:        c.conmanCredential(v.id),
		ReplHost:          vmAddr.String(),
		Spec:              demoSpec(exe, cfg.StateDir, c.id, v.id, c.p.dir.Repl),
		StopGrace:         3 * time.Second,
		Placement:         placement.NewVMClient(c.controlplaneURL(), v.id, placement.VMCredential(c.vmSecret, v.id), nil),
		VM:                placement.VM{ID: v.id, Cluster: c.id, Addr: v.addr, Build: "platform", Capacity: placement.Resources{Containers: 100}},
		HeartbeatInterval: time.Second,
		Registerer:        reg,
		Inherit:           in,
		Logger:            log.With("component", "conman"),
	})
	if err != nil {
		rt.Close()
		return nil, nil, err
	}
	return rt, cm, nil
}

// upgradeVM upgrades VM id's conman in place within this process: a new runtime and Server take
// over the old ones' listener, shells and live attach connections through a socket pair, as a
// new conman process does through the VM's handoff socket (runConman -inherit).
func (c *cluster) upgradeVM(ctx context.Context, id string) error {
	var v *vm
	for _, x := range c.liveVMs() {
		if x.id == id {
			v = x
		}
	}
	if v == nil {
		return fmt.Errorf("%w %q", errNoSuchVM, id)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stopped() {
		return fmt.Errorf("%w %q", errNoSuchVM, id)
	}
	lnFile, err := v.srv.listenerFile()
	if err != nil {
		return err
	}
	defer lnFile.Close()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if err := v.srv.Shutdown(sctx); err != nil {
		c.log.Warn("upgrade in place: requests still in flight were cut", "vm", id, "err", err)
	}
	cancel()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	ends := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "handoff")
		nc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return err
		}
		ends[i] = nc.(*net.UnixConn)
		defer nc.Close()
	}
	handed := make(chan error, 1)
	oldCM, oldRT := v.cm, v.rt
	go func() {
		if err := conman.AcceptSuccessor(ctx, ends[0]); err != nil {
			handed <- err
			return
		}
		handed <- oldCM.Handoff(ctx, ends[0], lnFile)
	}()
	in, err := conman.ReceiveHandoff(ctx, ends[1])
	if herr := <-handed; herr != nil || err != nil {
		if in != nil {
			in.Close()
		}
		return errors.Join(herr, err)
	}
	oldRT.Close()
	ln, err := net.FileListener(in.Files[0])
	in.Files[0].Close()
	if err != nil {
		in.Close()
		return err
	}
	rt, cm, err := c.startConman(ctx, v, in)
	if err != nil {
		in.Close()
		ln.Close()
		return err
	}
	v.rt, v.cm, v.srv = rt, cm, serveOn("conman "+v.id, ln, cm, nil)
	return nil
}

func (v *vm) conman() *conman.Server {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.cm
}

// crash stops the VM as a dead machine would: its conman stops answering and heartbeating at
// once (containers are left as they are) and its etcd lease is no longer kept alive, so it
// expires after AliveTTL and the controlplane's liveness watcher removes the VM. stop still
// releases what is left.
func (v *vm) crash() error {
	v.stopping.Store(true)
	v.crashed.Store(true)
	if v.leaseCancel != nil {
		v.leaseCancel()
	}
	return v.conman().Close()
}

// stop drains the VM as a rollout does: placement marks it draining, its containers stop, its
// attached sessions close with 1012, then its listener and runtime close.
func (v *vm) stop(ctx context.Context) error {
	v.stopping.Store(true)
	v.once.Do(func() {
		v.mu.Lock()
		cm, srv, rt := v.cm, v.srv, v.rt
		v.mu.Unlock()
		v.err = errors.Join(cm.Shutdown(ctx), srv.Shutdown(ctx), rt.Close())
		if v.lease != nil {
			// Revoking ends the VM in placement at once (a graceful stop). A crashed VM's lease
			// may already have expired, and then there is nothing to revoke.
			if err := v.lease.Close(ctx); err != nil && !v.crashed.Load() {
				v.err = errors.Join(v.err, err)
			}
			v.leaseCancel()
		}
		close(v.done)
	})
	<-v.done
	return v.err
}

// stopped reports whether the VM is stopping or stopped.
func (v *vm) stopped() bool { return v.stopping.Load() }

// cgroupParent is the cgroup of a VM's containers: one tree per platform instance (by its
// state directory), so two platforms on a host never kill each other's containers.
func cgroupParent(stateDir, vm string) string {
	sum := sha256.Sum256([]byte(stateDir))
	return "switchyard-platform-" + hex.EncodeToString(sum[:4]) + "/" + vm
}
