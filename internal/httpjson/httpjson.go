// Package httpjson writes the JSON answers and error bodies of the platform's HTTP APIs (lore,
// placement, the proxies' refusals), so that every API answers errors the same way:
//
//	{"error": "a message for people", "code": "a_reason_for_programs"}
//
// with "code" left out when there is none.
package httpjson

import (
	"encoding/json"
	"net/http"
)

// ErrorBody is the body of an error answer.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

// Write answers status with v encoded as JSON, not to be cached or sniffed.
func Write(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // an error means the client went away; nothing to do
}

// Error answers status with {"error": msg}.
func Error(w http.ResponseWriter, status int, msg string) {
	Write(w, status, ErrorBody{Error: msg})
}

// ErrorCode answers status with {"error": msg, "code": code}.
func ErrorCode(w http.ResponseWriter, status int, code, msg string) {
	Write(w, status, ErrorBody{Error: msg, Code: code})
}
