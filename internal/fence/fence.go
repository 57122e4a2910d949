// Package fence stops a repl on the VM a proxy is about to move it away from, so that a repl
// never runs on two VMs at once. The session and hosting proxies share it.
package fence

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/switchyard-dev/switchyard/conman"
)

// fenceTimeout bounds how long a proxy waits for conman to stop a repl it is about to move.
const fenceTimeout = 5 * time.Second

// Repl asks conman at addr (a VM that answered, so is alive) to stop repl before the proxy
// places it on another VM: a repl runs on one VM at a time. conman stops the container
// (SIGTERM, its grace, SIGKILL) and answers once it has exited, or 404 when it runs no such
// container. The answer is only logged by callers: a VM that cannot be reached cannot be
// fenced, and conman's own orphan check stops what it still runs once placement tells it.
func Repl(ctx context.Context, hc *http.Client, addr, repl, credential string) error {
	u, err := url.Parse(addr)
	if err != nil {
		return err
	}
	u.Path = "/v1/repls/" + url.PathEscape(repl)
	ctx, cancel := context.WithTimeout(ctx, fenceTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u.String(), nil)
	if err != nil {
		return err
	}
	if credential != "" {
		req.Header.Set(conman.HeaderCredential, credential)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	switch resp.StatusCode {
	case http.StatusNoContent, http.StatusOK, http.StatusNotFound:
		return nil
	}
	return fmt.Errorf("conman answered %s", resp.Status)
}
