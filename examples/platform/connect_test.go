package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/sessions"
)

// The connect subcommand's relay writes the shell's output, hands Eval's notices to notify (not
// to the terminal), and says why a session closed.
func TestRelayTerminalNotices(t *testing.T) {
	for _, tc := range []struct {
		code    websocket.StatusCode
		reason  string
		wantErr string
	}{
		{websocket.StatusNormalClosure, "", ""},
		{sessions.CloseReplMoved, "the repl moved", "moved to another cluster"},
		{sessions.CloseTryAgainLater, "no VM could take the repl within 1m0s", "no VM could take the repl"},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{sessions.SubprotocolV2}})
			if err != nil {
				return
			}
			ctx := r.Context()
			_ = c.Write(ctx, websocket.MessageBinary, []byte("before "))
			_ = c.Write(ctx, websocket.MessageText, []byte(`{"type":"notice","event":"restarted","vm":"a-vm3","text":"the repl restarted on VM a-vm3: this is a new shell"}`))
			_ = c.Write(ctx, websocket.MessageText, []byte(`{"type":"something-new"}`))
			_ = c.Write(ctx, websocket.MessageBinary, []byte("after"))
			_ = c.Close(tc.code, tc.reason)
		}))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"),
			&websocket.DialOptions{Subprotocols: []string{sessions.SubprotocolV2}})
		require.NoError(t, err)
		var out bytes.Buffer
		var notices []string
		err = relayTerminal(ctx, conn, strings.NewReader(""), &out, func(s string) { notices = append(notices, s) })
		if tc.wantErr == "" {
			require.NoError(t, err)
		} else {
			require.ErrorContains(t, err, tc.wantErr)
		}
		require.Equal(t, "before after", out.String())
		require.Equal(t, []string{"the repl restarted on VM a-vm3: this is a new shell"}, notices)
		conn.CloseNow()
		cancel()
		srv.Close()
	}
}
