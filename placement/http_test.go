package placement_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/placement"
)

const testCredential = "s3cret-credential"

// serve runs the API of cp on a loopback server and returns its URL.
func serve(t *testing.T, cp *placement.Controlplane, maxBody int64) string {
	t.Helper()
	srv := httptest.NewServer(placement.NewHandler(placement.HandlerConfig{
		Controlplane: cp, Credential: testCredential, MaxBodyBytes: maxBody, Logger: quiet,
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// apis returns the same fresh control plane, in process and through a loopback HTTP client.
func apis(t *testing.T, cfg placement.Config) map[string]func(t *testing.T) placement.API {
	return map[string]func(t *testing.T) placement.API{
		"inprocess": func(t *testing.T) placement.API { return newCP(t, cfg) },
		"http": func(t *testing.T) placement.API {
			cp := newCP(t, cfg)
			return placement.NewClient(serve(t, cp, 0), testCredential, nil)
		},
	}
}

// TestAPIParity runs one scenario against the Controlplane and against the Client over HTTP:
// results and errors must match.
func TestAPIParity(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	for name, mk := range apis(t, placement.Config{Now: clk.Now, HeartbeatTimeout: time.Minute}) {
		t.Run(name, func(t *testing.T) {
			p := mk(t)
			got, err := p.Register(ctx, vm("vm-1", "pro", 1))
			require.NoError(t, err)
			assert.Equal(t, placement.Active, got.State)
			assert.Equal(t, clk.Now(), got.LastHeartbeat.UTC())
			register(t, p, vm("vm-2", "pro", 5))

			a, err := p.Place(ctx, placement.Request{Repl: "r1", Pool: "pro", Prefer: "vm-1"})
			require.NoError(t, err)
			assert.Equal(t, "vm-1", a.VM)
			l, err := p.Lookup(ctx, "r1")
			require.NoError(t, err)
			assert.Equal(t, a.VM, l.VM)
			assert.True(t, a.Created.Equal(l.Created))

			d, err := p.Explain(ctx, placement.Request{Repl: "r2", Pool: "pro"})
			require.NoError(t, err)
			assert.Equal(t, "vm-2", d.Chosen)
			assert.Len(t, d.Candidates, 2)

			as, err := p.Assignments(ctx, "vm-1")
			require.NoError(t, err)
			require.Len(t, as, 1)
			as, err = p.Assignments(ctx, "")
			require.NoError(t, err)
			require.Len(t, as, 1)

			require.NoError(t, p.Heartbeat(ctx, placement.Heartbeat{VM: "vm-1", Build: "b2", Running: []string{"r1"}}))
			v, err := p.VM(ctx, "vm-1")
			require.NoError(t, err)
			assert.Equal(t, "b2", v.Build)
			assert.Equal(t, 1, v.Usage.Containers)

			require.NoError(t, p.SetState(ctx, "vm-2", placement.Draining))
			_, err = p.Place(ctx, placement.Request{Repl: "r2", Pool: "pro"})
			require.ErrorIs(t, err, placement.ErrNoCapacity)
			require.NoError(t, p.SetState(ctx, "vm-2", placement.Active))

			vms, err := p.VMs(ctx)
			require.NoError(t, err)
			require.Len(t, vms, 2)
			assert.Equal(t, "vm-1", vms[0].ID)

			s, err := p.Autoscale(ctx)
			require.NoError(t, err)
			require.Len(t, s, 1)
			assert.Equal(t, "pro", s[0].Pool)

			// Errors map to the same sentinels.
			require.ErrorIs(t, p.Release(ctx, "r1", "vm-2"), placement.ErrConflict)
			require.NoError(t, p.Release(ctx, "r1", "vm-1"))
			require.ErrorIs(t, p.Release(ctx, "r1", ""), placement.ErrNotFound)
			_, err = p.Lookup(ctx, "r1")
			require.ErrorIs(t, err, placement.ErrNotFound)
			_, err = p.VM(ctx, "nope")
			require.ErrorIs(t, err, placement.ErrNotFound)
			_, err = p.Assignments(ctx, "nope")
			require.ErrorIs(t, err, placement.ErrNotFound)
			_, err = p.Place(ctx, placement.Request{})
			require.ErrorIs(t, err, placement.ErrInvalid)
			_, err = p.Lookup(ctx, "")
			require.ErrorIs(t, err, placement.ErrInvalid)
			require.ErrorIs(t, p.SetState(ctx, "vm-1", "bogus"), placement.ErrInvalid)
			require.ErrorIs(t, p.Heartbeat(ctx, placement.Heartbeat{VM: "ghost"}), placement.ErrNotFound)
			_, err = p.Register(ctx, placement.VM{ID: "x", Addr: "ftp://x"})
			require.ErrorIs(t, err, placement.ErrInvalid)
			require.NoError(t, p.SetState(ctx, "vm-2", placement.Dead))
			require.ErrorIs(t, p.Heartbeat(ctx, placement.Heartbeat{VM: "vm-2"}), placement.ErrNotFound)
			require.ErrorIs(t, p.Deregister(ctx, "ghost"), placement.ErrNotFound)
			require.NoError(t, p.Deregister(ctx, "vm-2"))
		})
	}
}

func TestHTTPStatuses(t *testing.T) {
	cp := newCP(t, placement.Config{})
	register(t, cp, vm("vm-1", "", 1))
	base := serve(t, cp, 256)
	auth := "Bearer " + testCredential
	for _, tc := range []struct {
		name, method, path, auth, body string
		status                         int
		code                           string
	}{
		{"health without credential", "GET", "/healthz", "", "", 200, ""},
		{"no credential", "GET", "/v1/vms", "", "", 401, "unauthorized"},
		{"wrong credential", "GET", "/v1/vms", "Bearer nope", "", 401, "unauthorized"},
		{"credential without Bearer", "GET", "/v1/vms", testCredential, "", 401, "unauthorized"},
		{"credential prefix", "GET", "/v1/vms", "Bearer " + testCredential[:5], "", 401, "unauthorized"},
		{"unknown route needs credential", "GET", "/nope", "", "", 401, "unauthorized"},
		{"unknown route", "GET", "/nope", auth, "", 404, "not_found"},
		{"list", "GET", "/v1/vms", auth, "", 200, ""},
		{"method", "PATCH", "/v1/vms", auth, "", 405, "method"},
		{"place get", "GET", "/v1/place", auth, "", 405, "method"},
		{"bad json", "POST", "/v1/place", auth, "{", 400, "invalid"},
		{"empty body", "POST", "/v1/place", auth, "", 400, "invalid"},
		{"trailing data", "POST", "/v1/place", auth, `{"repl":"a"} {}`, 400, "invalid"},
		{"wrong type", "POST", "/v1/place", auth, `{"repl":5}`, 400, "invalid"},
		{"too large", "POST", "/v1/place", auth, `{"repl":"` + strings.Repeat("a", 300) + `"}`, 413, "too_large"},
		{"place", "POST", "/v1/place", auth, `{"repl":"r1"}`, 200, ""},
		{"no capacity", "POST", "/v1/place", auth, `{"repl":"r2"}`, 503, "no_capacity"},
		{"lookup missing", "GET", "/v1/assignments/zz", auth, "", 404, "not_found"},
		{"release conflict", "DELETE", "/v1/assignments/r1?vm=other", auth, "", 409, "conflict"},
		{"heartbeat mismatch", "POST", "/v1/vms/vm-1/heartbeat", auth, `{"vm":"vm-2"}`, 400, "invalid"},
		{"heartbeat", "POST", "/v1/vms/vm-1/heartbeat", auth, `{}`, 204, ""},
		{"bad state", "PUT", "/v1/vms/vm-1/state", auth, `{"state":"asleep"}`, 400, "invalid"},
		{"cordon", "POST", "/v1/vms/vm-1/cordon", auth, ``, 204, ""},
		{"drain", "POST", "/v1/vms/vm-1/drain", auth, ``, 204, ""},
		{"activate", "POST", "/v1/vms/vm-1/activate", auth, ``, 204, ""},
		{"state", "PUT", "/v1/vms/vm-1/state", auth, `{"state":"cordoned"}`, 204, ""},
		{"deregister busy", "DELETE", "/v1/vms/vm-1", auth, "", 409, "conflict"},
		{"release", "DELETE", "/v1/assignments/r1", auth, "", 204, ""},
		{"escaped slash", "GET", "/v1/assignments/a%2Fb", auth, "", 400, "invalid"},
		{"autoscale", "GET", "/v1/autoscale", auth, "", 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, err := http.NewRequestWithContext(ctx, tc.method, base+tc.path, body)
			require.NoError(t, err)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			data, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, tc.status, resp.StatusCode, "body %s", data)
			if tc.status >= 400 {
				assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
				var e struct{ Error, Code string }
				require.NoError(t, json.Unmarshal(data, &e), "%s", data)
				assert.Equal(t, tc.code, e.Code)
				assert.NotEmpty(t, e.Error)
			}
			if tc.status == 401 {
				assert.NotEmpty(t, resp.Header.Get("WWW-Authenticate"))
			}
			if tc.status == 405 {
				assert.NotEmpty(t, resp.Header.Get("Allow"))
			}
		})
	}
}

func TestClientUnauthorized(t *testing.T) {
	cp := newCP(t, placement.Config{})
	base := serve(t, cp, 0)
	for _, cred := range []string{"", "wrong"} {
		c := placement.NewClient(base, cred, nil)
		_, err := c.VMs(context.Background())
		require.Error(t, err)
		assert.True(t, placement.IsUnauthorized(err), "%v", err)
		var apiErr *placement.APIError
		require.True(t, errors.As(err, &apiErr))
		assert.Equal(t, 401, apiErr.Status)
	}
	// A handler without a credential refuses everything.
	srv := httptest.NewServer(placement.NewHandler(placement.HandlerConfig{Controlplane: cp, Logger: quiet}))
	defer srv.Close()
	_, err := placement.NewClient(srv.URL, "", nil).VMs(context.Background())
	assert.True(t, placement.IsUnauthorized(err), "%v", err)
}

func TestClientContextCancel(t *testing.T) {
	cp := newCP(t, placement.Config{})
	c := placement.NewClient(serve(t, cp, 0), testCredential, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.Place(ctx, placement.Request{Repl: "r"})
	require.ErrorIs(t, err, context.Canceled)
}

// TestHTTPConcurrentPlace places from many goroutines through the HTTP client and checks no VM
// goes past capacity.
func TestHTTPConcurrentPlace(t *testing.T) {
	cp := newCP(t, placement.Config{})
	for i := range 5 {
		register(t, cp, vm(fmt.Sprint("vm-", i), "", 7))
	}
	c := placement.NewClient(serve(t, cp, 0), testCredential, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok, full int
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				_, err := c.Place(ctx, placement.Request{Repl: fmt.Sprintf("w%d-%d", w, i)})
				mu.Lock()
				if err == nil {
					ok++
				} else if errors.Is(err, placement.ErrNoCapacity) {
					full++
				} else {
					t.Error(err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, 35, ok)
	assert.Equal(t, 45, full)
	vms, err := c.VMs(ctx)
	require.NoError(t, err)
	for _, v := range vms {
		assert.Equal(t, 7, v.Usage.Containers)
	}
	http.DefaultClient.CloseIdleConnections()
}

// TestHTTPVMCredentials: a VM's agent authenticates as itself and can act only on its own VM.
// A VM that is taken over cannot impersonate another, place repls, revive or drain others, or
// release what runs elsewhere.
func TestHTTPVMCredentials(t *testing.T) {
	ctx := context.Background()
	cp := newCP(t, placement.Config{HeartbeatTimeout: time.Minute})
	const vmSecret = "vm-secret-of-the-cluster"
	srv := httptest.NewServer(placement.NewHandler(placement.HandlerConfig{
		Controlplane: cp, Credential: testCredential, VMSecret: vmSecret, Logger: quiet,
	}))
	t.Cleanup(srv.Close)
	admin := placement.NewClient(srv.URL, testCredential, nil)
	vm1 := placement.NewVMClient(srv.URL, "vm-1", placement.VMCredential(vmSecret, "vm-1"), nil)
	vm2 := placement.NewVMClient(srv.URL, "vm-2", placement.VMCredential(vmSecret, "vm-2"), nil)

	// Each VM registers and heartbeats as itself.
	_, err := vm1.Register(ctx, vm("vm-1", "", 5))
	require.NoError(t, err)
	_, err = vm2.Register(ctx, vm("vm-2", "", 5))
	require.NoError(t, err)
	require.NoError(t, vm1.Heartbeat(ctx, placement.Heartbeat{VM: "vm-1"}))
	a, err := admin.Place(ctx, placement.Request{Repl: "r2", Prefer: "vm-2"})
	require.NoError(t, err)
	require.Equal(t, "vm-2", a.VM)
	got, err := vm1.Lookup(ctx, "r2")
	require.NoError(t, err, "a VM may look assignments up")
	require.Equal(t, "vm-2", got.VM)

	forbidden := func(what string, err error) {
		t.Helper()
		var ae *placement.APIError
		require.ErrorAs(t, err, &ae, what)
		require.Equal(t, http.StatusForbidden, ae.Status, what)
	}
	forbidden("register another VM", func() error { _, err := vm1.Register(ctx, vm("vm-2", "", 50)); return err }())
	forbidden("heartbeat another VM", vm1.Heartbeat(ctx, placement.Heartbeat{VM: "vm-2"}))
	forbidden("drain another VM", vm1.SetState(ctx, "vm-2", placement.Draining))
	forbidden("set itself active", vm1.SetState(ctx, "vm-1", placement.Active))
	forbidden("place", func() error { _, err := vm1.Place(ctx, placement.Request{Repl: "r9"}); return err }())
	forbidden("release another VM's repl", vm1.Release(ctx, "r2", "vm-2"))
	forbidden("release without naming itself", vm1.Release(ctx, "r2", ""))
	forbidden("list VMs", func() error { _, err := vm1.VMs(ctx); return err }())
	// Releasing its own name for another VM's assignment is refused by the controlplane.
	require.ErrorIs(t, vm1.Release(ctx, "r2", "vm-1"), placement.ErrConflict)
	// What it may do about itself, it can.
	require.NoError(t, vm1.SetState(ctx, "vm-1", placement.Draining))
	require.NoError(t, vm2.Release(ctx, "r2", "vm-2"))

	// A VM's credential is worthless under another name, and a guessed one is refused.
	impostor := placement.NewVMClient(srv.URL, "vm-2", placement.VMCredential(vmSecret, "vm-1"), nil)
	var ae *placement.APIError
	require.ErrorAs(t, impostor.Heartbeat(ctx, placement.Heartbeat{VM: "vm-2"}), &ae)
	require.Equal(t, http.StatusUnauthorized, ae.Status)
	require.NotEqual(t, placement.VMCredential(vmSecret, "vm-1"), placement.VMCredential(vmSecret, "vm-2"))
	require.NotEqual(t, placement.VMCredential(vmSecret, "vm-1"), placement.VMCredential("other-secret", "vm-1"))
}
