package placement

import (
	"errors"
	"time"
)

// State is a VM's lifecycle state. Only Active VMs receive new repls; the repls already on a
// Cordoned or Draining VM stay until they are released.
type State string

const (
	Active   State = "active"
	Cordoned State = "cordoned" // no new repls; existing ones keep running
	Draining State = "draining" // no new repls; the VM is stopping its containers
	Dead     State = "dead"     // heartbeats stopped; its assignments are void
)

// Resources is an amount of VM capacity or usage. A zero field means "not constrained" in a
// capacity and "none" in a request or usage.
type Resources struct {
	Containers  int   `json:"containers,omitempty"`
	CPUMilli    int64 `json:"cpu_milli,omitempty"`
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
}

// VM is one container-manager (conman) VM of a cluster.
type VM struct {
	ID      string `json:"id"`
	Cluster string `json:"cluster,omitempty"`
	// Addr is the base URL of the VM's conman server, e.g. "http://127.0.1.11:8600".
	Addr  string `json:"addr"`
	Pool  string `json:"pool,omitempty"`
	Build string `json:"build,omitempty"`
	// Capacity is what the VM may hold; Usage is what placement has committed to it.
	Capacity      Resources `json:"capacity"`
	Usage         Resources `json:"usage"`
	State         State     `json:"state"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	// Observed is the resource use the VM last reported in a heartbeat (Heartbeat.Used), for
	// operators and autoscaling; placement decisions use Usage, not Observed.
	Observed Resources `json:"observed,omitempty"`
	// Registered is when the VM last registered (or re-registered after being Dead).
	Registered time.Time `json:"registered,omitempty"`
}

// Request asks where a repl runs, or should run. Resources.Containers 0 means 1: every repl is
// one container.
type Request struct {
	Repl string `json:"repl"`
	// Pool selects the VM pool (e.g. from the repl's plan); empty means the default pool.
	Pool      string    `json:"pool,omitempty"`
	Resources Resources `json:"resources,omitempty"`
	// Prefer names a VM to favour while it is feasible.
	Prefer string `json:"prefer,omitempty"`
	// Avoid lists VMs not to place on, e.g. the VM whose dial just failed. A live assignment on
	// an avoided VM is released and the repl placed again.
	Avoid []string `json:"avoid,omitempty"`
}

// Assignment binds a repl to the VM that runs it.
type Assignment struct {
	Repl string `json:"repl"`
	VM   string `json:"vm"`
	// Addr is the VM's conman base URL, copied so callers can dial without another lookup.
	Addr      string    `json:"addr"`
	Container string    `json:"container,omitempty"`
	Resources Resources `json:"resources,omitempty"`
	Created   time.Time `json:"created"`
}

// Errors. Match them with errors.Is.
var (
	ErrNotFound = errors.New("placement: not found")
	// ErrNoCapacity: no feasible VM in the pool (all full, draining, cordoned, dead or avoided).
	ErrNoCapacity = errors.New("placement: no capacity")
	ErrInvalid    = errors.New("placement: invalid")
	// ErrConflict: a concurrent change won (e.g. a release naming a VM the repl is no longer on).
	ErrConflict = errors.New("placement: conflict")
)

// Heartbeat is what a VM's conman agent reports periodically. A VM whose heartbeats stop for the
// configured timeout is marked Dead and its assignments released.
type Heartbeat struct {
	VM    string `json:"vm"`
	Build string `json:"build,omitempty"`
	// Running lists the repls with a running container on the VM.
	Running []string `json:"running"`
	// Used is the VM's observed resource use, for operators and autoscaling.
	Used Resources `json:"used"`
}
