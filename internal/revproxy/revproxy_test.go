package revproxy

import "testing"

func TestForwardedElement(t *testing.T) {
	tests := []struct{ peer, host, proto, want string }{
		{"192.0.2.1", "blog.alice.repl.test", "http", "for=192.0.2.1;host=blog.alice.repl.test;proto=http"},
		{"2001:db8::1", "example.com", "https", `for="[2001:db8::1]";host=example.com;proto=https`},
		{"", "example.com:8080", "http", `host="example.com:8080";proto=http`},
		{"10.0.0.1", `a"b\c`, "http", `for=10.0.0.1;host="a\"b\\c";proto=http`},
	}
	for _, tt := range tests {
		if got := ForwardedElement(tt.peer, tt.host, tt.proto); got != tt.want {
			t.Errorf("ForwardedElement(%q, %q, %q) = %s, want %s", tt.peer, tt.host, tt.proto, got, tt.want)
		}
		if got := string(AppendForwardedElement([]byte("x, "), tt.peer, []byte(tt.host), tt.proto)); got != "x, "+tt.want {
			t.Errorf("AppendForwardedElement: %s", got)
		}
	}
	if n := testing.AllocsPerRun(100, func() {
		_ = AppendForwardedElement(make([]byte, 0, 128)[:0], "192.0.2.1", []byte("blog.alice.repl.test"), "http")
	}); n > 1 {
		t.Errorf("AppendForwardedElement allocates %v times", n)
	}
}
