package httpjson

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestError(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(http.ResponseWriter)
		want  string
	}{
		{"plain", func(w http.ResponseWriter) { Error(w, 404, "no such repl") }, `{"error":"no such repl"}`},
		{"code", func(w http.ResponseWriter) { ErrorCode(w, 409, "conflict", "taken") }, `{"error":"taken","code":"conflict"}`},
		{"escaped", func(w http.ResponseWriter) { Error(w, 400, `"<b>"`) }, `{"error":"\"\u003cb\u003e\""}`},
	} {
		rec := httptest.NewRecorder()
		tc.write(rec)
		if got := rec.Body.String(); got != tc.want+"\n" {
			t.Errorf("%s: body %q, want %q", tc.name, got, tc.want)
		}
		var b ErrorBody
		if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil || b.Error == "" {
			t.Errorf("%s: body does not decode: %v", tc.name, err)
		}
		for k, v := range map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"} {
			if got := rec.Header().Get(k); got != v {
				t.Errorf("%s: %s = %q, want %q", tc.name, k, got, v)
			}
		}
	}
}
