package sessions

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// BenchmarkSessionsRoundTrip echoes one message at a time through a session, directly to the
// test conman and through Proxy in each mode; client, proxy and conman share the process, so
// ns/op and allocs/op are the whole round trip's and the proxy's cost is the difference from
// direct. The load program bench/sessions measures the proxies in their own processes.
//
//	go test -run XXX -bench SessionsRoundTrip -benchmem ./sessions/
func BenchmarkSessionsRoundTrip(b *testing.B) {
	for _, size := range []int{64, 1 << 20} {
		for _, target := range []string{"direct", "splice", "frame"} {
			b.Run(target+"/"+sizeName(size), func(b *testing.B) {
				mode := Splice
				if target == "frame" {
					mode = Frame
				}
				e := newTestEnv(b, mode, nil)
				ctx := context.Background()
				var c *websocket.Conn
				var err error
				if target == "direct" {
					u := "ws" + strings.TrimPrefix(e.conman.srv.URL, "http") + "/v1/repls/r1/attach"
					c, _, err = websocket.Dial(ctx, u, &websocket.DialOptions{
						HTTPHeader: http.Header{"Switchyard-Credential": {testCredential}},
					})
				} else {
					c, err = e.dial(ctx, "r1")
				}
				if err != nil {
					b.Fatal(err)
				}
				defer c.CloseNow()
				testReadBanner(b, c)
				msg := make([]byte, size)
				b.SetBytes(int64(2 * size))
				b.ReportAllocs()
				for b.Loop() {
					if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
						b.Fatal(err)
					}
					if _, _, err := c.Read(ctx); err != nil {
						b.Fatal(err)
					}
				}
				c.Close(websocket.StatusNormalClosure, "")
			})
		}
	}
}

func sizeName(n int) string {
	if n >= 1<<20 {
		return "1MiB"
	}
	return "64B"
}
