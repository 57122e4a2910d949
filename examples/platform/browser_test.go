package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/lore"
)

// The browser tests drive Debian's chromium (apt-get install chromium) with chromedp against a
// platform in this process. They skip only when no chromium is installed. With
// SWITCHYARD_SCREENSHOTS=<dir> they write the pages' screenshots there (docs/ holds them).

// findChromium returns the chromium binary, or skips the test.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium on PATH: apt-get install chromium (.ci/run installs it)")
	return ""
}

// browser starts a headless chromium for the test and returns a context for a first tab.
func browser(t *testing.T, ctx context.Context) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(findChromium(t)),
		chromedp.NoSandbox, // tests run as root, where chromium's sandbox refuses to start
		chromedp.WindowSize(1400, 820),
		chromedp.Flag("disable-gpu", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	// Start the browser now, without a timeout on this first call (it would bound the browser).
	require.NoError(t, chromedp.Do(bctx))
	t.Cleanup(func() {
		cctx, c := context.WithTimeout(bctx, 10*time.Second)
		defer c()
		chromedp.Cancel(cctx)
		cancel()
		cancelAlloc()
	})
	return bctx
}

// screenshot writes the tab's screenshot to $SWITCHYARD_SCREENSHOTS/<name> when it is set.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("SWITCHYARD_SCREENSHOTS")
	if dir == "" {
		return
	}
	b, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o644))
}

// termText is the workspace terminal's whole buffer.
func termText(t *testing.T, ctx context.Context) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`window.switchyardWorkspace ? window.switchyardWorkspace.text() : ""`))
	require.NoError(t, err)
	return s
}

// waitTerm waits until the terminal's buffer matches re and returns the first submatch (or the
// match).
func waitTerm(t *testing.T, ctx context.Context, re *regexp.Regexp) string {
	t.Helper()
	var last string
	for {
		last = termText(t, ctx)
		if m := re.FindStringSubmatch(last); m != nil {
			return m[len(m)-1]
		}
		select {
		case <-ctx.Done():
			t.Fatalf("terminal never matched %s; it shows:\n%s", re, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitJS waits until a JavaScript expression is true.
func waitJS(t *testing.T, ctx context.Context, expr string) {
	t.Helper()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second)))
	if err != nil {
		// Say what the page showed.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		shown, _ := chromedp.Run(dctx, chromedp.Evaluate[string](`(document.getElementById("status") || document.body).textContent + "\n" + (window.switchyardWorkspace ? window.switchyardWorkspace.text().trim() : "")`))
		t.Fatalf("waiting for %s: %v; the page shows:\n%s", expr, err, shown)
	}
}

// typeLine types a line into the terminal as a person does: key events into xterm's input.
// Each key is a keyDown carrying its text, then a keyUp, as Chrome dispatches a real key
// press (and Puppeteer does). chromedp's SendKeys sends a separate char event too, which Chrome
// delivers even after xterm has handled and cancelled the keydown: every key would type twice.
func typeLine(t *testing.T, ctx context.Context, line string) {
	t.Helper()
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#terminal")),
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			for _, r := range line + "\r" {
				var down, up *input.DispatchKeyEventParams
				for _, k := range kb.Encode(r) {
					switch k.Type {
					case kb.KeyDown:
						down = k
					case kb.KeyChar:
						down.Text, down.UnmodifiedText = k.Text, k.UnmodifiedText
					case kb.KeyUp:
						up = k
					}
				}
				for _, k := range []*input.DispatchKeyEventParams{down, up} {
					if _, err := cdp.Call(ctx, tg, input.DispatchKeyEvent, *k); err != nil {
						return err
					}
				}
			}
			return nil
		}),
	))
}

// TestBrowserWorkspaceAndConsole opens a repl's workspace in chromium, uses its shell and sees its
// page; signs in to the console in another browser profile and sees the session; rolls the VM
// from the console and sees the session move (the terminal's restart notice, a working shell on
// the new VM, the console's tables); then moves the repl to cluster b and sees DNS change.
func TestBrowserWorkspaceAndConsole(t *testing.T) {
	findChromium(t)
	p := startWebPlatform(t, "127.83.0.0/16")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lc := lore.NewClient(p.LoreURL(), "test-admin-key", nil)
	repl, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	select {
	case <-p.web.assetsReady:
		require.NoError(t, p.web.assetsErr, "the terminal's npm files")
	case <-ctx.Done():
		t.Fatal("the terminal's npm files did not load")
	}

	bctx := browser(t, context.Background())
	web := p.web.URL()

	// The workspace: sign in on the way, then the shell.
	owner, cancelOwner := chromedp.NewContext(bctx, chromedp.WithNewBrowserContext())
	defer cancelOwner()
	owner, cancelO := context.WithTimeout(owner, 100*time.Second)
	defer cancelO()
	require.NoError(t, chromedp.Do(owner,
		chromedp.Navigate(web+"/replbot/blog"),
		chromedp.WaitVisible(chromedp.CSS("#signin")),
		chromedp.SendKeys(chromedp.CSS(`input[name="owner"]`), "replbot"),
		chromedp.SendKeys(chromedp.CSS(`input[name="key"]`), ownerKey("test-admin-key", "replbot")),
		chromedp.Submit(chromedp.CSS("#signin")),
		chromedp.WaitVisible(chromedp.CSS("#terminal")),
	))
	waitJS(t, owner, `window.switchyardWorkspace && window.switchyardWorkspace.state() === "connected"`)
	waitJS(t, owner, `window.switchyardWorkspace.text().trim().endsWith("#")`) // the shell's prompt
	typeLine(t, owner, "echo RESULT-$((6*7))-$SWITCHYARD_VM")
	vm1 := waitTerm(t, owner, regexp.MustCompile(`RESULT-42-(a-vm\d+)`))

	// The pty has the terminal's size, and follows it when the window changes.
	size := func() string {
		s, err := chromedp.Run(owner, chromedp.Evaluate[string](`window.switchyardWorkspace.term.rows + " " + window.switchyardWorkspace.term.cols`))
		require.NoError(t, err)
		return s
	}
	want := size()
	typeLine(t, owner, "echo SIZE-$(stty size | tr ' ' x)")
	waitTerm(t, owner, regexp.MustCompile(`SIZE-`+strings.Replace(want, " ", "x", 1)+`\b`))
	require.NoError(t, chromedp.Do(owner, chromedp.EmulateViewport(1000, 600)))
	waitJS(t, owner, `window.switchyardWorkspace.term.rows + " " + window.switchyardWorkspace.term.cols !== "`+want+`"`)
	resized := size()
	typeLine(t, owner, "echo RESIZED-$(stty size | tr ' ' x)")
	waitTerm(t, owner, regexp.MustCompile(`RESIZED-`+strings.Replace(resized, " ", "x", 1)+`\b`))
	require.NoError(t, chromedp.Do(owner, chromedp.EmulateViewport(1400, 820)))
	t.Logf("terminal %s, resized to %s", want, resized)

	// The repl's page in its web view: the sandboxed frame (an opaque origin the page cannot
	// read) loaded, and the same URL shows the demo app's page.
	waitJS(t, owner, `document.getElementById("webview").contentWindow !== null`)
	page, cancelPage := chromedp.NewContext(owner)
	require.NoError(t, chromedp.Do(page, chromedp.Navigate(web+"/replbot/blog/web/")))
	text, err := chromedp.Run(page, chromedp.Text(chromedp.CSS("body")))
	require.NoError(t, err)
	cancelPage()
	require.Contains(t, text, "Hello from blog.replbot")
	require.Contains(t, text, "VM "+vm1)

	// The console, in another browser profile: the session on its VM.
	admin, cancelAdmin := chromedp.NewContext(bctx, chromedp.WithNewBrowserContext())
	defer cancelAdmin()
	admin, cancelA := context.WithTimeout(admin, 100*time.Second)
	defer cancelA()
	require.NoError(t, chromedp.Do(admin,
		chromedp.Navigate(web+"/console"),
		chromedp.WaitVisible(chromedp.CSS("#console-signin")),
		chromedp.SendKeys(chromedp.CSS(`input[name="key"]`), "test-admin-key"),
		chromedp.Submit(chromedp.CSS("#console-signin")),
		chromedp.WaitVisible(chromedp.CSS("#state")),
	))
	vmRow := func(vm string) string { return fmt.Sprintf(`document.querySelector('tr[data-vm="%s"]')`, vm) }
	waitJS(t, admin, vmRow(vm1)+` && `+vmRow(vm1)+`.querySelector(".sessions").textContent === "1"`)
	waitJS(t, admin, `document.querySelector('[data-cluster="a"] tr[data-generation="1"] .sessions').textContent === "1"`)

	// Roll the VM from the console: the session stays open (switchyard.v2) and the terminal
	// shows Eval's in-band notice; the shell works on the new VM, and the console shows the
	// session there.
	require.NoError(t, chromedp.Do(admin, chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-vm="%s"] button`, vm1)))))
	waitTerm(t, owner, regexp.MustCompile(`the repl restarted on VM a-vm\d+: this is a new shell`))
	waitJS(t, owner, `window.switchyardWorkspace.state() === "connected"`)
	typeLine(t, owner, "echo AFTER-$((7*6))-$SWITCHYARD_VM")
	vm2 := waitTerm(t, owner, regexp.MustCompile(`AFTER-42-(a-vm\d+)`))
	require.NotEqual(t, vm1, vm2)
	waitJS(t, admin, `document.getElementById("log").textContent.includes("rolled `+vm1+`")`)
	waitJS(t, admin, vmRow(vm2)+` && `+vmRow(vm2)+`.querySelector(".sessions").textContent === "1"`)
	waitJS(t, admin, `document.querySelector('tr[data-repl="replbot/blog"] .vm').textContent === "`+vm2+`"`)
	screenshot(t, owner, "workspace.png")
	screenshot(t, admin, "console.png")

	// Move the repl to cluster b from the console: DNS answers b. Cluster a stops the repl's
	// container, which ends the shell there (conman closes the session with 1000, as when the
	// shell exits); the terminal sees lore name another Eval and reconnects to the repl in b.
	require.NoError(t, chromedp.Do(admin, chromedp.Click(chromedp.CSS(`tr[data-repl="replbot/blog"] button[value="b"]`))))
	waitJS(t, admin, `document.querySelector('tr[data-repl="replbot/blog"] .dns').textContent === "127.83.2.1"`)
	waitJS(t, admin, `document.querySelector('tr[data-repl="replbot/blog"] .in-cluster').textContent === "b"`)
	moved := regexp.MustCompile(`MOVED-b`)
	for deadline := time.Now().Add(30 * time.Second); !moved.MatchString(termText(t, owner)); {
		require.True(t, time.Now().Before(deadline), "the terminal never reached the repl in b:\n%s", termText(t, owner))
		state, err := chromedp.Run(owner, chromedp.Evaluate[string](`window.switchyardWorkspace.state()`))
		require.NoError(t, err)
		switch state {
		case "ended":
			t.Fatalf("the terminal waits for a key after the move:\n%s", termText(t, owner))
		case "connected":
			// The shell in a may be closing as the line is typed: type until b answers.
			typeLine(t, owner, "echo MOVED-$SWITCHYARD_CLUSTER")
		}
		pctx, c := context.WithTimeout(owner, 2*time.Second)
		chromedp.Run(pctx, chromedp.Poll[bool](`window.switchyardWorkspace.text().includes("MOVED-b")`,
			chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(time.Second)))
		c()
	}

	// Restart cluster b's Eval from the console: the session stays on the old generation, which
	// drains, while the shell keeps working.
	waitJS(t, admin, `document.querySelector('[data-cluster="b"] tr[data-generation="1"] .sessions').textContent === "1"`)
	require.NoError(t, chromedp.Do(admin, chromedp.Click(chromedp.CSS(`section[data-cluster="b"] form[data-action="restart-eval"] button`))))
	waitJS(t, admin, `document.querySelector('[data-cluster="b"] tr[data-generation="2"]') !== null`)
	waitJS(t, admin, `document.querySelector('[data-cluster="b"] tr[data-generation="1"]').textContent.includes("draining")`)
	waitJS(t, admin, `document.querySelector('[data-cluster="b"] tr[data-generation="1"] .sessions').textContent === "1"`)
	typeLine(t, owner, "echo STILL-$((6*7))-$SWITCHYARD_CLUSTER")
	waitTerm(t, owner, regexp.MustCompile(`STILL-42-b`))
	waitTerm(t, owner, regexp.MustCompile(`the repl moved to another cluster: reconnecting`))
	t.Logf("repl %s: shell on %s, rolled to %s, moved to b, kept through b's Eval restart", repl.ID, vm1, vm2)
}
