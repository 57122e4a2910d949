package conman

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Client calls a conman Server's operator endpoints from another process: what a tombstone
// follower or an operator tool needs when the VM is not in-process. The data paths (attach,
// hosting) are reached by the proxies directly.
type Client struct {
	base       string
	credential string
	hc         *http.Client
}

// NewClient returns a client of the conman server at base (a placement.VM.Addr such as
// "http://127.0.1.11:8600"), authenticating with the internal credential. A nil httpClient
// means http.DefaultClient; bound calls with their context.
func NewClient(base, credential string, httpClient *http.Client) *Client {
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	return &Client{base: strings.TrimRight(base, "/"), credential: credential, hc: httpClient}
}

// Stop stops the repl's container on the VM and forgets it, as Server.Stop does. A repl the VM
// does not run is an error wrapping ErrNotFound.
func (c *Client) Stop(ctx context.Context, repl string) error {
	if !ValidID(repl) {
		return fmt.Errorf("conman: stop %q: %w", repl, ErrInvalid)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, c.base+"/v1/repls/"+url.PathEscape(repl), nil)
	if err != nil {
		return err
	}
	req.Header.Set(HeaderCredential, c.credential)
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("conman: stop %s: %w", repl, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNoContent {
		return nil
	}
	var body struct {
		Error string `json:"error"`
	}
	_ = json.NewDecoder(io.LimitReader(resp.Body, 4<<10)).Decode(&body)
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("conman: stop %s: %s: %w", repl, body.Error, ErrNotFound)
	}
	return fmt.Errorf("conman: stop %s: %s: %s", repl, resp.Status, body.Error)
}
