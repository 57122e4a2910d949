package placement

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/switchyard-dev/switchyard/internal/httpjson"
)

// Client is the Go client of the Controlplane's HTTP API (NewHandler). It has the same methods,
// and errors, as *Controlplane: the API's error codes come back as errors wrapping ErrInvalid,
// ErrNotFound, ErrConflict or ErrNoCapacity, inside an *APIError. It is safe for concurrent use.
type Client struct {
	base string
	auth string
	vm   string // with NewVMClient: the VM it authenticates as
	hc   *http.Client
}

// NewClient returns a client of the API at baseURL (e.g. "http://127.0.1.1:8500") that
// authenticates with the shared credential. A nil httpClient means http.DefaultClient; bound
// each call with its context.
func NewClient(baseURL, credential string, httpClient *http.Client) *Client {
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), auth: "Bearer " + credential, hc: httpClient}
}

// NewVMClient returns a client for VM id's agent, authenticating as that VM with
// VMCredential(secret, id) (see HandlerConfig.VMSecret): it may register, heartbeat and
// drain its own VM, release its own assignments and look assignments up.
func NewVMClient(baseURL, id, credential string, httpClient *http.Client) *Client {
	c := NewClient(baseURL, credential, httpClient)
	c.vm = id
	return c
}

// APIError is an error answered by the API: its HTTP status, error code and message. Unwrap
// returns the matching sentinel (ErrInvalid, ErrNotFound, ErrConflict, ErrNoCapacity) or nil.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	if e.Message != "" {
		return e.Message
	}
	return fmt.Sprintf("placement: HTTP %d", e.Status)
}

func (e *APIError) Unwrap() error {
	switch e.Code {
	case "invalid", "too_large":
		return ErrInvalid
	case "not_found":
		return ErrNotFound
	case "conflict":
		return ErrConflict
	case "no_capacity":
		return ErrNoCapacity
	}
	switch e.Status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return ErrInvalid
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrConflict
	}
	return nil
}

// maxResponse bounds what the client reads from one response.
const maxResponse = 64 << 20

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%w: encoding request: %v", ErrInvalid, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("placement: %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", c.auth)
	if c.vm != "" {
		req.Header.Set(HeaderVM, c.vm)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("placement: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("placement: %s %s: reading response: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		e := &APIError{Status: resp.StatusCode}
		var eb httpjson.ErrorBody
		if json.Unmarshal(data, &eb) == nil {
			e.Code, e.Message = eb.Code, eb.Error
		}
		if e.Message == "" {
			e.Message = fmt.Sprintf("placement: %s %s: HTTP %d", method, path, resp.StatusCode)
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("placement: %s %s: decoding response: %w", method, path, err)
	}
	return nil
}

// pathID checks an id like the Controlplane does (so a bad id is ErrInvalid, not a 404 from a
// different route) and escapes it for a path.
func pathID(kind, id string) (string, error) {
	if err := checkID(kind, id); err != nil {
		return "", err
	}
	return url.PathEscape(id), nil
}

func (c *Client) Place(ctx context.Context, req Request) (Assignment, error) {
	var a Assignment
	err := c.do(ctx, http.MethodPost, "/v1/place", req, &a)
	return a, err
}

func (c *Client) Explain(ctx context.Context, req Request) (Decision, error) {
	var d Decision
	err := c.do(ctx, http.MethodPost, "/v1/explain", req, &d)
	return d, err
}

func (c *Client) Lookup(ctx context.Context, repl string) (Assignment, error) {
	p, err := pathID("repl", repl)
	if err != nil {
		return Assignment{}, err
	}
	var a Assignment
	err = c.do(ctx, http.MethodGet, "/v1/assignments/"+p, nil, &a)
	return a, err
}

func (c *Client) Release(ctx context.Context, repl, vm string) error {
	p, err := pathID("repl", repl)
	if err != nil {
		return err
	}
	if vm != "" {
		p += "?vm=" + url.QueryEscape(vm)
	}
	return c.do(ctx, http.MethodDelete, "/v1/assignments/"+p, nil, nil)
}

func (c *Client) Register(ctx context.Context, vm VM) (VM, error) {
	var out VM
	err := c.do(ctx, http.MethodPost, "/v1/vms", vm, &out)
	return out, err
}

func (c *Client) Heartbeat(ctx context.Context, hb Heartbeat) error {
	p, err := pathID("vm", hb.VM)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, "/v1/vms/"+p+"/heartbeat", hb, nil)
}

func (c *Client) SetState(ctx context.Context, vm string, s State) error {
	p, err := pathID("vm", vm)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPut, "/v1/vms/"+p+"/state", stateBody{State: s}, nil)
}

func (c *Client) VM(ctx context.Context, id string) (VM, error) {
	p, err := pathID("vm", id)
	if err != nil {
		return VM{}, err
	}
	var vm VM
	err = c.do(ctx, http.MethodGet, "/v1/vms/"+p, nil, &vm)
	return vm, err
}

func (c *Client) VMs(ctx context.Context) ([]VM, error) {
	var out struct {
		VMs []VM `json:"vms"`
	}
	err := c.do(ctx, http.MethodGet, "/v1/vms", nil, &out)
	return out.VMs, err
}

func (c *Client) Deregister(ctx context.Context, id string) error {
	p, err := pathID("vm", id)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, "/v1/vms/"+p, nil, nil)
}

func (c *Client) Assignments(ctx context.Context, vm string) ([]Assignment, error) {
	path := "/v1/assignments"
	if vm != "" {
		p, err := pathID("vm", vm)
		if err != nil {
			return nil, err
		}
		path = "/v1/vms/" + p + "/assignments"
	}
	var out assignmentsBody
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out.Assignments, err
}

func (c *Client) Autoscale(ctx context.Context) ([]PoolScale, error) {
	var out struct {
		Pools []PoolScale `json:"pools"`
	}
	err := c.do(ctx, http.MethodGet, "/v1/autoscale", nil, &out)
	return out.Pools, err
}

// IsUnauthorized reports whether err is the API's 401 (a missing or wrong credential).
func IsUnauthorized(err error) bool {
	var e *APIError
	return errors.As(err, &e) && e.Status == http.StatusUnauthorized
}
