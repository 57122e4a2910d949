package placement_test

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"testing"

	"github.com/switchyard-dev/switchyard/placement"
)

// FuzzHandler feeds arbitrary bodies to the API's JSON endpoints. The handler must answer every
// request with a known status and a JSON error body, never a 500, and never push a VM past its
// capacity or onto a non-Active VM whatever the requests say.
func FuzzHandler(f *testing.F) {
	f.Add(byte(0), []byte(`{"repl":"r1"}`))
	f.Add(byte(0), []byte(`{"repl":"r2","pool":"pro","resources":{"containers":2,"cpu_milli":100},"avoid":["vm-1"],"prefer":"vm-2"}`))
	f.Add(byte(1), []byte(`{"id":"vm-9","addr":"http://127.0.0.1:1","capacity":{"containers":1},"usage":{"containers":-5}}`))
	f.Add(byte(2), []byte(`{"running":["r1","r1",""],"used":{"containers":3}}`))
	f.Add(byte(3), []byte(`{"state":"draining"}`))
	f.Add(byte(4), []byte(`{"repl":"r1","resources":{"memory_bytes":9223372036854775807}}`))
	f.Add(byte(0), []byte(`{"repl":"r1","resources":{"containers":-1}}`))
	f.Add(byte(0), []byte(`[]`))
	f.Fuzz(func(t *testing.T, which byte, body []byte) {
		cp, err := placement.New(placement.Config{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		h := placement.NewHandler(placement.HandlerConfig{Controlplane: cp, Credential: "c", Logger: quiet})
		big := vm("vm-3", "", 3)
		big.Capacity.CPUMilli, big.Capacity.MemoryBytes = 1000, 1<<30
		for _, v := range []placement.VM{vm("vm-1", "", 2), vm("vm-2", "pro", 1), big} {
			if _, err := cp.Register(t.Context(), v); err != nil {
				t.Fatal(err)
			}
		}
		routes := []struct{ method, path string }{
			{"POST", "/v1/place"}, {"POST", "/v1/vms"}, {"POST", "/v1/vms/vm-1/heartbeat"},
			{"PUT", "/v1/vms/vm-1/state"}, {"POST", "/v1/explain"},
		}
		r := routes[int(which)%len(routes)]
		// Send the body twice, then a place, so state changes meet later requests.
		for _, req := range []struct{ method, path string }{r, r, {"POST", "/v1/place"}} {
			rec := httptest.NewRecorder()
			hr := httptest.NewRequest(req.method, req.path, bytes.NewReader(body))
			hr.Header.Set("Authorization", "Bearer c")
			h.ServeHTTP(rec, hr)
			switch rec.Code {
			case 200, 204:
			case 400, 404, 409, 413, 503:
				var e struct{ Error, Code string }
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" || e.Code == "" {
					t.Fatalf("%s %s: status %d with body %q", req.method, req.path, rec.Code, rec.Body.Bytes())
				}
			default:
				t.Fatalf("%s %s: unexpected status %d: %s", req.method, req.path, rec.Code, rec.Body.Bytes())
			}
		}
		vms, err := cp.VMs(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vms {
			as, err := cp.Assignments(t.Context(), v.ID)
			if err != nil {
				t.Fatal(err)
			}
			sum := 0
			for _, a := range as {
				sum += a.Resources.Containers
			}
			if v.Usage.Containers != sum {
				t.Fatalf("vm %s usage %d != assignments %d", v.ID, v.Usage.Containers, sum)
			}
			if !fitsIn(v.Usage, v.Capacity) {
				t.Fatalf("vm %s over capacity: %+v", v.ID, v)
			}
		}
	})
}

func fitsIn(used, capa placement.Resources) bool {
	return (capa.Containers == 0 || used.Containers <= capa.Containers) &&
		(capa.CPUMilli == 0 || used.CPUMilli <= capa.CPUMilli) &&
		(capa.MemoryBytes == 0 || used.MemoryBytes <= capa.MemoryBytes) &&
		used.Containers >= 0 && used.CPUMilli >= 0 && used.MemoryBytes >= 0
}
