package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/entry"
	cajwt "writ.dev/writ/ca/jwtsvid"
)

const (
	flagJWTAudience = "audience"
	flagJWTToken    = "token"
)

func jwtCommand() *cli.Command {
	return &cli.Command{
		Name:   "jwt",
		Usage:  "get or validate JWT-SVIDs through the agent's Workload API",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:  "fetch",
				Usage: "print JWT-SVIDs of this process for an audience",
				Description: "Prints one token per line (one per SPIFFE ID of this process, or only --spiffe-id's),\n" +
					"so that TOKEN=$(writ jwt fetch --audience A --spiffe-id ID) works.",
				Flags: workloadFlags(
					&cli.StringSliceFlag{Name: flagJWTAudience, Usage: "an `AUDIENCE` of the tokens (required; repeat for several)"},
					&cli.StringFlag{Name: flagSPIFFEID, Usage: "only the JWT-SVID of this SPIFFE `ID`"},
				),
				Action: jwtFetch,
			},
			{
				Name:  "validate",
				Usage: "validate a JWT-SVID with the agent; print its SPIFFE ID",
				Description: "Exits 0 and prints the token's SPIFFE ID if the agent finds it valid for --audience,\n" +
					"1 with the agent's reason otherwise. --token - reads the token from stdin.",
				Flags: workloadFlags(
					&cli.StringFlag{Name: flagJWTAudience, Usage: "the `AUDIENCE` the token must be for (required)"},
					&cli.StringFlag{Name: flagJWTToken, Usage: "the `TOKEN`, or - to read it from stdin (required)"},
				),
				Action: jwtValidate,
			},
		},
	}
}

// jsonJWTSVID is a JWT-SVID as `jwt fetch --output json` prints it.
type jsonJWTSVID struct {
	SPIFFEID  string `json:"spiffe_id"`
	Hint      string `json:"hint"`
	Token     string `json:"token"`
	ExpiresAt string `json:"expires_at"` // RFC 3339, UTC
}

func jwtFetch(c *cli.Context) error {
	w, err := newWorkloadCmd(c)
	if err != nil {
		return err
	}
	audience := c.StringSlice(flagJWTAudience)
	if len(audience) == 0 {
		return usagef(c, "missing required flag --%s", flagJWTAudience)
	}
	for _, a := range audience {
		if a == "" {
			return usagef(c, "--%s must not be empty", flagJWTAudience)
		}
	}
	var subject spiffeid.ID
	if c.IsSet(flagSPIFFEID) {
		if subject, err = entry.ParseID(c.String(flagSPIFFEID)); err != nil {
			return err
		}
	}

	client, err := w.dial(c.Context)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := client.callContext(c.Context)
	defer cancel()
	svids, err := client.FetchJWTSVIDs(ctx, jwtsvid.Params{Audience: audience[0], ExtraAudiences: audience[1:], Subject: subject})
	if err != nil {
		return client.callError(err)
	}
	if w.format == jsonOutput {
		out := make([]*jsonJWTSVID, len(svids))
		for i, s := range svids {
			out[i] = &jsonJWTSVID{
				SPIFFEID:  s.ID.String(),
				Hint:      s.Hint,
				Token:     s.Marshal(),
				ExpiresAt: s.Expiry.UTC().Format(time.RFC3339),
			}
		}
		return writeJSON(c.App.Writer, out)
	}
	t := newTextWriter(c.App.Writer)
	for _, s := range svids {
		t.line("%s", entry.Printable(s.Marshal()))
	}
	return t.Flush()
}

// jsonValidation is what `jwt validate --output json` prints.
type jsonValidation struct {
	SPIFFEID string         `json:"spiffe_id"`
	Claims   map[string]any `json:"claims"`
}

func jwtValidate(c *cli.Context) error {
	w, err := newWorkloadCmd(c)
	if err != nil {
		return err
	}
	audience := c.String(flagJWTAudience)
	if audience == "" {
		return usagef(c, "missing required flag --%s", flagJWTAudience)
	}
	if !c.IsSet(flagJWTToken) {
		return usagef(c, "missing required flag --%s", flagJWTToken)
	}
	token := c.String(flagJWTToken)
	if token == "-" {
		if token, err = readToken(c.App.Reader); err != nil {
			return err
		}
	}
	if token == "" {
		return usagef(c, "--%s is empty", flagJWTToken)
	}

	client, err := w.dial(c.Context)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := client.callContext(c.Context)
	defer cancel()
	svid, err := client.ValidateJWTSVID(ctx, token, audience)
	if err != nil {
		if st, ok := status.FromError(err); ok && st.Code() == codes.InvalidArgument {
			return fmt.Errorf("invalid JWT-SVID: %s", st.Message())
		}
		return client.callError(err)
	}
	if w.format == jsonOutput {
		return writeJSON(c.App.Writer, &jsonValidation{SPIFFEID: svid.ID.String(), Claims: svid.Claims})
	}
	t := newTextWriter(c.App.Writer)
	t.line("%s", entry.Printable(svid.ID.String()))
	return t.Flush()
}

// readToken reads a token from r: the whole input, at most a little more
// than the largest token the agent accepts, without surrounding white
// space.
func readToken(r io.Reader) (string, error) {
	if r == nil {
		return "", fmt.Errorf("--%s -: no standard input", flagJWTToken)
	}
	b, err := io.ReadAll(io.LimitReader(r, cajwt.MaxTokenSize+2))
	if err != nil {
		return "", fmt.Errorf("read the token from stdin: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) > cajwt.MaxTokenSize {
		return "", fmt.Errorf("the token on stdin is longer than %d bytes", cajwt.MaxTokenSize)
	}
	if strings.ContainsAny(string(b), " \t\r\n") {
		return "", fmt.Errorf("stdin holds more than one token")
	}
	return string(b), nil
}
