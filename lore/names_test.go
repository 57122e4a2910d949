package lore_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/switchyard-dev/switchyard/lore"
)

func TestParseHost(t *testing.T) {
	long := strings.Repeat("a", 63)
	tests := []struct {
		host string
		want lore.HostName
		err  string // substring of the error; "" means success
	}{
		{host: "blog.replbot.repl.test", want: lore.HostName{Owner: "replbot", Slug: "blog"}},
		{host: "Blog.ReplBot.REPL.test", want: lore.HostName{Owner: "replbot", Slug: "blog"}},
		{host: "blog.replbot.repl.test.", want: lore.HostName{Owner: "replbot", Slug: "blog"}},
		{host: "blog.replbot.repl.test:8080", want: lore.HostName{Owner: "replbot", Slug: "blog"}},
		{host: "blog.replbot.repl.test.:443", want: lore.HostName{Owner: "replbot", Slug: "blog"}},
		{host: "abc123.id.repl.test", want: lore.HostName{ID: "abc123"}},
		{host: "ABC123.ID.repl.test", want: lore.HostName{ID: "abc123"}},
		{host: "my-app.a1.repl.test", want: lore.HostName{Owner: "a1", Slug: "my-app"}},
		{host: long + "." + long + ".repl.test", want: lore.HostName{Owner: long, Slug: long}},
		{host: "9.9.repl.test", want: lore.HostName{Owner: "9", Slug: "9"}},

		{host: "", err: "not under zone"},
		{host: "repl.test", err: "not under zone"},
		{host: ".repl.test", err: "not under zone"},
		{host: "x.repl.test", err: "one label"},
		{host: "a.b.c.repl.test", err: "more than two labels"},
		{host: "blog.replbot.example.com", err: "not under zone"},
		{host: "blog.replbotrepl.test", err: "not under zone"},
		{host: "blog.replbot.xrepl.test", err: "not under zone"},
		{host: "a" + long + ".b.repl.test", err: "longer than 63"},
		{host: "-a.b.repl.test", err: "hyphen"},
		{host: "a.b-.repl.test", err: "hyphen"},
		{host: "a_b.c.repl.test", err: "character"},
		{host: "a..repl.test", err: "empty label"},
		{host: "..repl.test", err: "empty label"},
		{host: "a b.c.repl.test", err: "character"},
		{host: "blog.www.repl.test", err: "reserved"},
		{host: "www.bob.repl.test", err: "reserved"},
		{host: "_acme-challenge.bob.repl.test", err: "character"},
		{host: "blog.xn--bcher-kva.repl.test", err: "reserved"},
		{host: "blog.replbot.repl.test:", err: "bad port"},
		{host: "blog.replbot.repl.test:99999", err: "above 65535"},
		{host: "blog.replbot.repl.test:8a", err: "bad port"},
		{host: "[::1]:80", err: "bad port"},
		{host: "blog.replbot.repl.test..", err: "not under zone"},
		{host: "blög.replbot.repl.test", err: "character"},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			got, err := lore.ParseHost(tt.host, "repl.test.")
			if tt.err != "" {
				if err == nil || !errors.Is(err, lore.ErrInvalid) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseHost(%q) = %+v, %v; want ErrInvalid containing %q", tt.host, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseHost(%q) = %+v, %v; want %+v", tt.host, got, err, tt.want)
			}
		})
	}
	if _, err := lore.ParseHost("a.b.repl.test", ""); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("empty zone: %v", err)
	}
	if got, err := lore.ParseHost("a.b.REPL.TEST", "Repl.Test"); err != nil || got.Owner != "b" {
		t.Fatalf("zone case: %+v %v", got, err)
	}
}

func TestParseHostNoAlloc(t *testing.T) {
	n := testing.AllocsPerRun(100, func() {
		if _, err := lore.ParseHost("blog.replbot.repl.test:443", "repl.test"); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("ParseHost allocates %v times per call", n)
	}
}

func TestNormalizeName(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{in: "Bob", want: "bob"},
		{in: "a", want: "a"},
		{in: "a-b-c", want: "a-b-c"},
		{in: strings.Repeat("z", 63), want: strings.Repeat("z", 63)},
		{in: "", err: "empty"},
		{in: strings.Repeat("z", 64), err: "longer"},
		{in: "id", err: "reserved"},
		{in: "WWW", err: "reserved"},
		{in: "api", err: "reserved"},
		{in: "ns1", err: "reserved"},
		{in: "_acme-challenge", err: "character"},
		{in: "xn--p1ai", err: "reserved"},
		{in: "ab--c", err: "reserved"},
		{in: "a--b", want: "a--b"},
		{in: "a.b", err: "character"},
		{in: "-a", err: "hyphen"},
	}
	for _, tt := range tests {
		got, err := lore.NormalizeName("owner", tt.in)
		if tt.err != "" {
			if !errors.Is(err, lore.ErrInvalid) || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("NormalizeName(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NormalizeName(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	if !lore.Reserved("_x") || lore.Reserved("bob") {
		t.Error("Reserved")
	}
}

func TestNormalizeDomain(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{in: "Example.COM.", want: "example.com"},
		{in: "www.example.co.uk", want: "www.example.co.uk"},
		{in: "xn--bcher-kva.example", want: "xn--bcher-kva.example"},
		{in: "", err: "empty"},
		{in: "com", err: "two labels"},
		{in: "1.2.3.4", err: "IP address"},
		{in: "::1", err: "IP address"},
		{in: "example.123", err: "all-numeric"},
		{in: "a..com", err: "empty label"},
		{in: "_x.example.com", err: "character"},
		{in: "ex ample.com", err: "character"},
		{in: strings.Repeat("a.", 127) + "com", err: "longer than 253"},
	}
	for _, tt := range tests {
		got, err := lore.NormalizeDomain(tt.in)
		if tt.err != "" {
			if !errors.Is(err, lore.ErrInvalid) || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("NormalizeDomain(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestNewReplID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id, err := lore.NewReplID()
		if err != nil {
			t.Fatal(err)
		}
		if len(id) != 16 || id[0] < 'a' || id[0] > 'z' || strings.Trim(id, "abcdefghijklmnopqrstuvwxyz234567") != "" || lore.Reserved(id) {
			t.Fatalf("bad id %q", id)
		}
		h, err := lore.ParseHost(id+".id.repl.test", "repl.test")
		if err != nil || h.ID != id {
			t.Fatalf("id host: %+v %v", h, err)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
}
