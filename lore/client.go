package lore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/switchyard-dev/switchyard/internal/httpjson"
)

// Client speaks lore's HTTP API. It has the same lookup and mutation methods as *Directory, so
// a service in another region (a DNS server, a hosting proxy) can use lore over the network
// through the same small interfaces. It is safe for concurrent use.
type Client struct {
	base string
	key  string
	hc   *http.Client
}

// NewClient returns a client of the lore API at baseURL (e.g. "http://127.0.0.1:8400"), sending
// key as its bearer token (the admin key, or the read key for lookups and Watch only). A nil
// httpClient means http.DefaultClient; give it timeouts of your own, but note that Watch streams
// for as long as its context lives, so a Client used for Watch needs no overall Timeout.
func NewClient(baseURL, key string, httpClient *http.Client) *Client {
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	return &Client{base: strings.TrimSuffix(baseURL, "/"), key: key, hc: httpClient}
}

// APIError is an error answer of the lore API. It unwraps to the sentinel matching its status
// (ErrInvalid 400, ErrNotFound 404, ErrExists 409, ErrUnavailable 503), so errors.Is works the
// same on the Client as on the Directory.
type APIError struct {
	StatusCode int
	// Message is the server's {"error": ...} text, or the status text when the body had none.
	Message string
}

func (e *APIError) Error() string { return e.Message }

// Unwrap returns the sentinel for the status, or nil.
func (e *APIError) Unwrap() error {
	switch e.StatusCode {
	case http.StatusBadRequest:
		return ErrInvalid
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrExists
	case http.StatusServiceUnavailable:
		return ErrUnavailable
	}
	return nil
}

// maxResponseBytes bounds the non-streaming answers the client reads.
const maxResponseBytes = 64 << 20

func (c *Client) request(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("lore: encoding request: %w", err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("lore: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("lore: %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var eb httpjson.ErrorBody
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(raw, &eb) != nil || eb.Error == "" {
			eb.Error = fmt.Sprintf("lore: %s %s: %s", method, path, resp.Status)
		}
		return nil, &APIError{StatusCode: resp.StatusCode, Message: eb.Error}
	}
	return resp, nil
}

// do sends a request and decodes a JSON answer into out (nil: discard).
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.request(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBytes))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponseBytes)).Decode(out); err != nil {
		return fmt.Errorf("lore: %s %s: decoding answer: %w", method, path, err)
	}
	return nil
}

func esc(s string) string { return url.PathEscape(s) }

// label checks a path parameter before it goes into a URL, so no input can reach another
// endpoint.
func label(what, s string) error {
	if err := checkLabel(s); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func (c *Client) getRepl(ctx context.Context, path string) (Repl, error) {
	var ri ReplInfo
	if err := c.do(ctx, http.MethodGet, path, nil, &ri); err != nil {
		return Repl{}, err
	}
	return ri.Repl, nil
}

// Repl returns the repl with the given ID.
func (c *Client) Repl(ctx context.Context, id string) (Repl, error) {
	if err := label("repl id", id); err != nil {
		return Repl{}, err
	}
	return c.getRepl(ctx, "/v1/repls/"+esc(id))
}

// ReplByName returns the repl named <slug>.<owner>.
func (c *Client) ReplByName(ctx context.Context, owner, slug string) (Repl, error) {
	if err := label("owner", owner); err != nil {
		return Repl{}, err
	}
	if err := label("slug", slug); err != nil {
		return Repl{}, err
	}
	return c.getRepl(ctx, "/v1/names/"+esc(owner)+"/"+esc(slug))
}

// ReplByHost returns the repl a platform hostname names.
func (c *Client) ReplByHost(ctx context.Context, host string) (Repl, error) {
	if host == "" || strings.ContainsAny(host, "/?#%") {
		return Repl{}, fmt.Errorf("%w: host %q", ErrInvalid, host)
	}
	return c.getRepl(ctx, "/v1/hosts/"+esc(host))
}

// ReplByDomain returns the repl a verified custom domain points at.
func (c *Client) ReplByDomain(ctx context.Context, domain string) (Repl, error) {
	name, err := NormalizeDomain(domain)
	if err != nil {
		return Repl{}, err
	}
	return c.getRepl(ctx, "/v1/domains/"+esc(name)+"/repl")
}

// Repls lists one page of repls; see Directory.Repls.
func (c *Client) Repls(ctx context.Context, q ReplQuery) (ReplPage, error) {
	v := url.Values{}
	if q.Owner != "" {
		v.Set("owner", q.Owner)
	}
	if q.After != "" {
		v.Set("after", q.After)
	}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	path := "/v1/repls"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var body replsJSON
	if err := c.do(ctx, http.MethodGet, path, nil, &body); err != nil {
		return ReplPage{}, err
	}
	page := ReplPage{Repls: make([]Repl, len(body.Repls)), Next: body.Next}
	for i, ri := range body.Repls {
		page.Repls[i] = ri.Repl
	}
	return page, nil
}

// CreateRepl creates a repl; see Directory.CreateRepl.
func (c *Client) CreateRepl(ctx context.Context, r Repl) (Repl, error) {
	var ri ReplInfo
	err := c.do(ctx, http.MethodPost, "/v1/repls",
		CreateReplRequest{ID: r.ID, Owner: r.Owner, Slug: r.Slug, Cluster: r.Cluster, Plan: r.Plan}, &ri)
	return ri.Repl, err
}

// MoveRepl moves a repl to another cluster.
func (c *Client) MoveRepl(ctx context.Context, id, cluster string) (Repl, error) {
	if err := label("repl id", id); err != nil {
		return Repl{}, err
	}
	var ri ReplInfo
	err := c.do(ctx, http.MethodPost, "/v1/repls/"+esc(id)+"/move", MoveRequest{Cluster: cluster}, &ri)
	return ri.Repl, err
}

// DeleteRepl deletes a repl and its custom domains.
func (c *Client) DeleteRepl(ctx context.Context, id string) error {
	if err := label("repl id", id); err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, "/v1/repls/"+esc(id), nil, nil)
}

// Connect returns the Eval URL of the repl's cluster and a fresh token for it.
func (c *Client) Connect(ctx context.Context, replID string) (ConnectInfo, error) {
	if err := label("repl id", replID); err != nil {
		return ConnectInfo{}, err
	}
	var info ConnectInfo
	err := c.do(ctx, http.MethodPost, "/v1/repls/"+esc(replID)+"/connect", nil, &info)
	return info, err
}

// Cluster returns one cluster.
func (c *Client) Cluster(ctx context.Context, id string) (Cluster, error) {
	if err := label("cluster id", id); err != nil {
		return Cluster{}, err
	}
	var out Cluster
	err := c.do(ctx, http.MethodGet, "/v1/clusters/"+esc(id), nil, &out)
	return out, err
}

// Clusters returns every cluster, ordered by ID.
func (c *Client) Clusters(ctx context.Context) ([]Cluster, error) {
	var out []Cluster
	err := c.do(ctx, http.MethodGet, "/v1/clusters", nil, &out)
	return out, err
}

// PutCluster creates or replaces a cluster.
func (c *Client) PutCluster(ctx context.Context, cl Cluster) (Cluster, error) {
	if err := label("cluster id", cl.ID); err != nil {
		return Cluster{}, err
	}
	var out Cluster
	err := c.do(ctx, http.MethodPut, "/v1/clusters/"+esc(cl.ID), cl, &out)
	return out, err
}

// Domain returns a custom domain, verified or not.
func (c *Client) Domain(ctx context.Context, domain string) (Domain, error) {
	name, err := NormalizeDomain(domain)
	if err != nil {
		return Domain{}, err
	}
	var di DomainInfo
	err = c.do(ctx, http.MethodGet, "/v1/domains/"+esc(name), nil, &di)
	return di.Domain, err
}

// AddDomain registers a custom domain for a repl; publish the returned challenge as a TXT
// record at ChallengeName(domain), then call VerifyDomain.
func (c *Client) AddDomain(ctx context.Context, domain, repl string) (Domain, error) {
	var di DomainInfo
	err := c.do(ctx, http.MethodPost, "/v1/domains", AddDomainRequest{Domain: domain, Repl: repl}, &di)
	return di.Domain, err
}

// VerifyDomain asks lore to check the domain's TXT record and mark it verified.
func (c *Client) VerifyDomain(ctx context.Context, domain string) (Domain, error) {
	name, err := NormalizeDomain(domain)
	if err != nil {
		return Domain{}, err
	}
	var di DomainInfo
	err = c.do(ctx, http.MethodPost, "/v1/domains/"+esc(name)+"/verify", nil, &di)
	return di.Domain, err
}

// DeleteDomain removes a custom domain.
func (c *Client) DeleteDomain(ctx context.Context, domain string) error {
	name, err := NormalizeDomain(domain)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, "/v1/domains/"+esc(name), nil, nil)
}

// Keys returns the public keys lore publishes (GET /v1/keys, no key needed).
func (c *Client) Keys(ctx context.Context) ([]PublicKey, error) {
	var set JWKS
	if err := c.do(ctx, http.MethodGet, "/v1/keys", nil, &set); err != nil {
		return nil, err
	}
	return set.PublicKeys()
}

// maxEventBytes bounds one line of the watch stream.
const maxEventBytes = 1 << 20

// Watch streams every change committed after the call returns, in commit order. The channel
// closes when ctx ends. If it closes while ctx is still live, the stream broke (the server fell
// behind, restarted or the network failed): events may be missing, so re-read what you cache and
// call Watch again. Watch returns only once the server has subscribed.
func (c *Client) Watch(ctx context.Context) (<-chan Event, error) {
	resp, err := c.request(ctx, http.MethodGet, "/v1/watch", nil)
	if err != nil {
		return nil, err
	}
	ch := make(chan Event, 64)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 4096), maxEventBytes)
		for sc.Scan() {
			line := sc.Bytes()
			if len(bytes.TrimSpace(line)) == 0 {
				continue // keepalive
			}
			var ev Event
			if err := json.Unmarshal(line, &ev); err != nil {
				return // a broken stream: the consumer re-lists
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// Health checks GET /healthz.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil)
}
