package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

// Placer finds the VM that runs a repl, or should. *placement.Controlplane and *placement.Client
// satisfy it.
type Placer interface {
	Place(ctx context.Context, req placement.Request) (placement.Assignment, error)
}

// TokenVerifier verifies a connect token for this cluster. *lore.KeySet and *lore.RemoteKeySet
// satisfy it.
type TokenVerifier interface {
	Verify(ctx context.Context, token, audience string) (lore.Claims, error)
}

// Directory resolves the names a hosting request can carry. *lore.Directory and *lore.Client
// satisfy it.
type Directory interface {
	Repl(ctx context.Context, id string) (lore.Repl, error)
	ReplByName(ctx context.Context, owner, slug string) (lore.Repl, error)
	// ReplByDomain returns the repl a verified custom domain points at (ErrNotFound otherwise).
	ReplByDomain(ctx context.Context, domain string) (lore.Repl, error)
}

// fenceTimeout bounds how long a proxy waits for conman to stop a repl it is about to move.
const fenceTimeout = 5 * time.Second

// fence asks conman at addr (a VM that answered, so is alive) to stop repl before the proxy
// places it on another VM: a repl runs on one VM at a time. conman stops the container
// (SIGTERM, its grace, SIGKILL) and answers once it has exited, or 404 when it runs no such
// container. The answer is only logged by callers: a VM that cannot be reached cannot be
// fenced, and conman's own orphan check stops what it still runs once placement tells it.
func fence(ctx context.Context, hc *http.Client, addr, repl, credential string) error {
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
		req.Header.Set(HeaderCredential, credential)
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
