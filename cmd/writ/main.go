package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/entry"
)

// Exit codes. Scripts may rely on them.
const (
	exitOK    = 0
	exitError = 1 // the request failed or was refused, locally or by the server
	exitUsage = 2 // the command line is malformed
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the writ command line args (args[0] is the program name) and
// returns the process exit code. Errors are reported on stderr.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return reportError(stderr, newApp(stdin, stdout, stderr).RunContext(ctx, args))
}

// newApp builds the writ command tree, reading from stdin and writing
// results to stdout and diagnostics to stderr.
func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:        "writ",
		HelpName:    "writ",
		Usage:       "SPIFFE-native certificate authority",
		Reader:      stdin,
		Writer:      stdout,
		ErrWriter:   stderr,
		HideVersion: true,
		// `writ completion` scripts ask the binary for completions.
		EnableBashCompletion: true,
		// Flag values are taken exactly as given: no splitting of repeated
		// flags on commas (selector values may contain them).
		DisableSliceFlagSeparator: true,
		// Errors are reported, and the process exits, in run alone.
		ExitErrHandler: func(*cli.Context, error) {},
		Action:         versionFlagAction(groupAction),
		Flags:          []cli.Flag{&cli.BoolFlag{Name: "version", Usage: "print the version and exit"}},
	}

	// ---- Subcommands -------------------------------------------------
	// `server` is defined in server.go (serverCommand); `agent` in
	// agent.go, where further agent subcommands (such as `agent run`) are
	// appended to agentCommand's Subcommands.
	app.Commands = []*cli.Command{serverCommand(), entryCommand(), agentCommand(), tokenCommand(), bundleCommand(), federationCommand(), caCommand(), svidCommand(), jwtCommand(), helperCommand(), devCommand(), versionCommand(), completionCommand(), oauthCommand()}
	// ------------------------------------------------------------------

	app.OnUsageError = onUsageError
	for _, c := range app.Commands {
		setCommonBehaviour(c)
	}
	return app
}

// setCommonBehaviour makes c and its subcommands, whoever defined them,
// behave alike: flag-parsing errors are usage errors (exit code 2),
// reported like all other errors, and a command that only groups
// subcommands refuses unknown ones.
func setCommonBehaviour(c *cli.Command) {
	if c.OnUsageError == nil {
		c.OnUsageError = onUsageError
	}
	if c.Action == nil && len(c.Subcommands) > 0 {
		c.Action = groupAction
	}
	for _, sub := range c.Subcommands {
		setCommonBehaviour(sub)
	}
}

func onUsageError(c *cli.Context, err error, _ bool) error {
	return &usageError{msg: err.Error(), command: commandPath(c)}
}

// groupAction is the action of commands that only group subcommands: with
// no arguments it shows help; anything else names an unknown subcommand.
func groupAction(c *cli.Context) error {
	if c.Args().Present() {
		return &usageError{msg: fmt.Sprintf("unknown command %q", c.Args().First()), command: commandPath(c)}
	}
	return cli.ShowSubcommandHelp(c)
}

func commandPath(c *cli.Context) string {
	if c.Command != nil && c.Command.HelpName != "" {
		return c.Command.HelpName
	}
	return c.App.HelpName
}

// usageError is a malformed command line: an unknown command or flag, a
// missing or conflicting flag, or an unknown --output or --format.
type usageError struct {
	msg     string
	command string // for the help hint; may be empty
}

func (e *usageError) Error() string { return e.msg }

func usagef(c *cli.Context, format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), command: commandPath(c)}
}

// reportError writes err to w as "writ: <message>", control characters
// escaped, and returns the exit code for it.
func reportError(w io.Writer, err error) int {
	if err == nil {
		return exitOK
	}
	if ue, ok := errors.AsType[*usageError](err); ok {
		fmt.Fprintf(w, "writ: %s\n", entry.Printable(ue.msg))
		if ue.command != "" {
			fmt.Fprintf(w, "Run '%s --help' for usage.\n", ue.command)
		}
		return exitUsage
	}
	if ec, ok := errors.AsType[cli.ExitCoder](err); ok {
		if msg := ec.Error(); msg != "" {
			fmt.Fprintln(w, entry.Printable(msg))
		}
		return ec.ExitCode()
	}
	msg := err.Error()
	// A bare gRPC status error (not wrapped): print only the server's
	// message, not the "rpc error: code = ..." decoration.
	if se, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		msg = se.GRPCStatus().Message()
	}
	fmt.Fprintf(w, "writ: %s\n", entry.Printable(msg))
	return exitError
}
