package switchyard_test

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestDocSnippets compiles the Go code blocks of README.md and docs/*.md, in a fresh module that
// requires this one, so that a reader who copies them gets code that builds.
//
// A document's blocks are read in order, as a reader follows them: a block that is a list of
// declarations (functions, types) goes to the file's top level; any other block is statements,
// appended to one function, so a later block can use what an earlier one declared. What the
// reader brings (their mux, their keys, a context) is declared in an HTML comment the page does
// not show:
//
//	<!-- snippet-context
//	var mux *http.ServeMux
//	-->
//
// Imports are added for the package names the code uses.
func TestDocSnippets(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a module")
	}
	docs, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	docs = append([]string{"README.md"}, docs...)
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	sum, err := os.ReadFile("go.sum")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range docs {
		src, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		file, n, err := snippetProgram(string(src))
		if err != nil {
			t.Errorf("%s: %v", doc, err)
			continue
		}
		if n == 0 {
			continue
		}
		t.Run(filepath.Base(doc), func(t *testing.T) {
			dir := t.TempDir()
			mod := "module snippets\n\ngo 1.25.0\n\nrequire github.com/switchyard-dev/switchyard v0.0.0\n\n" +
				"replace github.com/switchyard-dev/switchyard => " + root + "\n"
			for name, data := range map[string][]byte{"go.mod": []byte(mod), "go.sum": sum, "main.go": []byte(file)} {
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command("go", "build", "-mod=mod", "-o", os.DevNull, ".")
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("the Go blocks of %s do not build: %v\n%s\nthe program:\n%s", doc, err, out, numbered(file))
			}
		})
	}
}

var (
	codeBlock    = regexp.MustCompile("(?ms)^```go\n(.*?)^```")
	contextBlock = regexp.MustCompile(`(?ms)^<!-- snippet-context\n(.*?)^-->`)
)

// snippetImports are the packages a snippet may use by name.
var snippetImports = map[string]string{
	"context": "context", "ed25519": "crypto/ed25519", "rand": "crypto/rand", "tls": "crypto/tls",
	"errors": "errors", "fmt": "fmt", "log": "log", "slog": "log/slog", "net": "net", "http": "net/http",
	"netip": "net/netip", "os": "os", "signal": "os/signal", "syscall": "syscall", "time": "time",
	"dns":        "github.com/miekg/dns",
	"prometheus": "github.com/prometheus/client_golang/prometheus",
	"lore":       "github.com/switchyard-dev/switchyard/lore",
	"dnsauth":    "github.com/switchyard-dev/switchyard/dnsauth",
	"acmedns":    "github.com/switchyard-dev/switchyard/dnsauth/acmedns",
	"placement":  "github.com/switchyard-dev/switchyard/placement",
	"conman":     "github.com/switchyard-dev/switchyard/conman",
	"process":    "github.com/switchyard-dev/switchyard/conman/process",
	"sessions":   "github.com/switchyard-dev/switchyard/sessions",
	"hosting":    "github.com/switchyard-dev/switchyard/hosting",
	"handover":   "github.com/switchyard-dev/switchyard/handover",
	"tombstone":  "github.com/switchyard-dev/switchyard/tombstone",
	"autotls":    "github.com/switchyard-dev/switchyard/autotls",
	"connlimit":  "github.com/switchyard-dev/switchyard/connlimit",
}

// snippetProgram returns the program made of a document's Go blocks and how many there were.
func snippetProgram(doc string) (string, int, error) {
	var top, body, ctx []string
	for _, m := range contextBlock.FindAllStringSubmatch(doc, -1) {
		ctx = append(ctx, m[1])
	}
	blocks := codeBlock.FindAllStringSubmatch(doc, -1)
	fset := token.NewFileSet()
	for i, m := range blocks {
		code := m[1]
		if _, err := parser.ParseFile(fset, "", "package p\n"+code, 0); err == nil {
			top = append(top, code)
			continue
		}
		f, err := parser.ParseFile(fset, "", "package p\nfunc _() {\n"+code+"\n}", 0)
		if err != nil {
			return "", 0, fmt.Errorf("Go block %d parses neither as declarations nor as statements: %v", i+1, err)
		}
		// Mark what the block declares as used: a guide may declare a value for a later step.
		var uses []string
		for _, st := range f.Decls[0].(*ast.FuncDecl).Body.List {
			if as, ok := st.(*ast.AssignStmt); ok && as.Tok == token.DEFINE {
				for _, l := range as.Lhs {
					if id, ok := l.(*ast.Ident); ok && id.Name != "_" {
						uses = append(uses, "_ = "+id.Name)
					}
				}
			}
		}
		body = append(body, "{\n"+code+"\n"+strings.Join(uses, "\n")+"\n}")
	}
	if len(blocks) == 0 {
		return "", 0, nil
	}
	// Statements of one block see the earlier blocks' declarations only if they share a scope.
	// Blocks are scoped one inside the next, which keeps both.
	program := strings.Join(ctx, "\n") + "\n" + strings.Join(top, "\n") + "\nfunc guide() {\n" +
		nest(body) + "\n}\n"
	if !regexp.MustCompile(`(?m)^func main\(\)`).MatchString(program) {
		program += "\nfunc main() { guide() }\n"
	}
	used := map[string]bool{}
	if f, err := parser.ParseFile(fset, "", "package main\n"+program, 0); err == nil {
		ast.Inspect(f, func(n ast.Node) bool {
			if se, ok := n.(*ast.SelectorExpr); ok {
				if id, ok := se.X.(*ast.Ident); ok {
					used[id.Name] = true
				}
			}
			return true
		})
	} else {
		return "", 0, fmt.Errorf("the assembled program does not parse: %v", err)
	}
	var imports []string
	for name, path := range snippetImports {
		if used[name] {
			imports = append(imports, fmt.Sprintf("\t%q", path))
		}
	}
	sort.Strings(imports)
	return "package main\n\nimport (\n" + strings.Join(imports, "\n") + "\n)\n" + program, len(blocks), nil
}

// nest puts each block inside the one before it, so that every block sees what the earlier
// ones declared.
func nest(blocks []string) string {
	var b strings.Builder
	for _, s := range blocks {
		b.WriteString(strings.TrimSuffix(strings.TrimSpace(s), "}"))
		b.WriteString("\n")
	}
	b.WriteString(strings.Repeat("}\n", len(blocks)))
	return b.String()
}

func numbered(s string) string {
	var b bytes.Buffer
	for i, l := range strings.Split(s, "\n") {
		fmt.Fprintf(&b, "%4d  %s\n", i+1, l)
	}
	return b.String()
}
