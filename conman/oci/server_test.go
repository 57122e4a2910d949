//go:build linux

package oci_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/conman"
)

// TestServer runs conman's Server over each OCI runtime: a hosting request reaches the repl's
// web app inside its network namespace, and an attach gets a shell on a pty.
func TestServer(t *testing.T) {
	const credential = "test-credential"
	for _, rt := range runtimes {
		t.Run(rt.name, func(t *testing.T) {
			r := newRuntime(t, rt.name, rt.args, "")
			home := t.TempDir()
			srv, err := conman.New(context.Background(), conman.Config{
				Runtime: r, Credential: credential, StopGrace: 2 * time.Second,
				Spec: func(ctx context.Context, id string) (conman.Spec, error) {
					return conman.Spec{Dir: home + "/" + id, Command: []string{"/bin/sh", "-c",
						`mkdir -p /tmp/www && echo "web of $HOSTNAME" > /tmp/www/index.html && exec httpd -f -p "$HOST:$PORT" -h /tmp/www`}}, nil
				},
			})
			require.NoError(t, err)
			ts := httptest.NewServer(srv)
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				require.NoError(t, srv.Shutdown(ctx))
				ts.Close()
				cleanupRuntime(nil, r)
			})
			ctx := ctxT(t)

			req, err := http.NewRequestWithContext(ctx, "GET", ts.URL+"/", nil)
			require.NoError(t, err)
			req.Header.Set(conman.HeaderCredential, credential)
			req.Header.Set(conman.HeaderRepl, "web1")
			resp, err := ts.Client().Do(req)
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
			require.Equal(t, "web of web1\n", string(body))

			u := "ws" + strings.TrimPrefix(ts.URL, "http") + "/v1/repls/web1/attach"
			ws, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{conman.HeaderCredential: {credential}}})
			require.NoError(t, err)
			defer ws.CloseNow()
			require.NoError(t, ws.Write(ctx, websocket.MessageBinary, []byte("echo shell-$((6*7))\n")))
			var got strings.Builder
			for !strings.Contains(got.String(), "shell-42") {
				_, b, err := ws.Read(ctx)
				require.NoError(t, err, "output so far: %q", got.String())
				got.Write(b)
			}
		})
	}
}
