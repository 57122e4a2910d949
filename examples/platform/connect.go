package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/sessions"
)

// runConnect is the session client: it asks lore to connect to a repl, opens the WebSocket
// through the repl's cluster Eval, and wires the terminal to the repl's shell. With a terminal
// on stdin it switches it to raw mode and forwards window size changes; otherwise it copies
// stdin (e.g. a script) and ends when the shell does.
//
// It speaks sessions.SubprotocolV2: when the repl's VM rolls or its conman restarts, the
// session stays open and Eval's notices ("the repl restarted on VM …: this is a new shell")
// are printed on standard error.
func runConnect(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	loreURL := fs.String("lore", "http://127.0.0.1:8400", "lore API base URL")
	adminKey := adminKeyFlag(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: platform connect [flags] <owner>/<slug> | <repl id>")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	k, err := adminKey()
	if err != nil {
		return err
	}
	key := &k
	if fs.NArg() != 1 {
		fs.Usage()
		return flag.ErrHelp
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()

	conn, err := dialRepl(ctx, lore.NewClient(*loreURL, *key, nil), fs.Arg(0), sessions.SubprotocolV2, sessions.Subprotocol)
	if err != nil {
		return err
	}
	defer conn.CloseNow()

	fd := int(os.Stdin.Fd())
	if old, err := makeRaw(fd); err == nil {
		defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
		go forwardWindowSize(ctx, conn, fd)
	}
	return relayTerminal(ctx, conn, os.Stdin, os.Stdout, func(text string) {
		fmt.Fprintf(os.Stderr, "\r\n[switchyard] %s\r\n", text)
	})
}

// dialRepl resolves target (owner/slug or a repl id) with lore, asks it to connect, and opens the
// session through Eval, offering the session subprotocols protos.
func dialRepl(ctx context.Context, lc *lore.Client, target string, protos ...string) (*websocket.Conn, error) {
	id := target
	if owner, slug, ok := strings.Cut(target, "/"); ok {
		r, err := lc.ReplByName(ctx, owner, slug)
		if err != nil {
			return nil, fmt.Errorf("find %s: %w", target, err)
		}
		id = r.ID
	}
	info, err := lc.Connect(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", target, err)
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(dctx, info.URL, &websocket.DialOptions{
		HTTPHeader:   http.Header{"Authorization": {"Bearer " + info.Token}},
		Subprotocols: protos,
	})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("open session at %s: %s: %w", info.URL, resp.Status, err)
		}
		return nil, fmt.Errorf("open session at %s: %w", info.URL, err)
	}
	conn.SetReadLimit(-1)
	return conn, nil
}

// relayTerminal copies in → the shell and the shell → out until the session ends, and hands
// Eval's notices (sessions.Notice, on a switchyard.v2 session) to notify. A normal close (the
// shell exited) is not an error; the other closes say what happened.
func relayTerminal(ctx context.Context, conn *websocket.Conn, in io.Reader, out io.Writer, notify func(string)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				if werr := conn.Write(ctx, websocket.MessageBinary, buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return // stdin ended: keep reading until the shell closes the session
			}
		}
	}()
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			var ce websocket.CloseError
			errors.As(err, &ce)
			switch websocket.CloseStatus(err) {
			case websocket.StatusNormalClosure:
				return nil
			case websocket.StatusServiceRestart:
				return errors.New("session closed: the VM is restarting (1012); connect again")
			case websocket.StatusGoingAway:
				return errors.New("session closed: the proxy is going away (1001); connect again")
			case sessions.CloseReplMoved:
				return errors.New("session closed: the repl moved to another cluster; connect again")
			case sessions.CloseTryAgainLater:
				return fmt.Errorf("session closed (1013): %s", ce.Reason)
			}
			return err
		}
		switch typ {
		case websocket.MessageBinary:
			if _, err := out.Write(data); err != nil {
				return err
			}
		case websocket.MessageText:
			var n sessions.Notice
			if json.Unmarshal(data, &n) == nil && n.Type == "notice" && n.Text != "" && notify != nil {
				notify(n.Text)
			}
		}
	}
}

// resizeMessage is conman's pty resize control message.
type resizeMessage struct {
	Type string `json:"type"`
	Cols int    `json:"cols"`
	Rows int    `json:"rows"`
}

func forwardWindowSize(ctx context.Context, conn *websocket.Conn, fd int) {
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	for {
		if ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ); err == nil {
			msg, _ := json.Marshal(resizeMessage{Type: "resize", Cols: int(ws.Col), Rows: int(ws.Row)})
			if conn.Write(ctx, websocket.MessageText, msg) != nil {
				return
			}
		}
		select {
		case <-winch:
		case <-ctx.Done():
			return
		}
	}
}

// makeRaw puts the terminal fd into raw mode (as cfmakeraw does) and returns its old state. It
// fails when fd is not a terminal.
func makeRaw(fd int) (*unix.Termios, error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN] = 1
	raw.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, err
	}
	return old, nil
}
