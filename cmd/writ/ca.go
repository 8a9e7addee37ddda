package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
)

const (
	flagKeyID = "id"
	flagForce = "force"
	flagWait  = "wait"
	// flagWaitTimeout bounds rotate --wait.
	flagWaitTimeout = "wait-timeout"
	// maxRotateWaitTimeout is the longest wait the server accepts.
	maxRotateWaitTimeout = time.Hour
)

// caCommand is `writ ca`: show and change the CA's signing keys.
func caCommand() *cli.Command {
	return &cli.Command{
		Name:  "ca",
		Usage: "show, rotate, taint and revoke the CA's signing keys",
		Description: "Each server sharing a datastore has its own X.509 CA and JWT signing key; show lists\n" +
			"those of every server. prepare, activate and rotate act on the keys of the server\n" +
			"whose admin socket you call. taint and revoke may name any server's key (they change\n" +
			"only its record and the bundle; the server holding it sees the change), except that\n" +
			"another server's prepared key is tainted through that server.",
		Action: groupAction,
		Subcommands: []*cli.Command{
			caKindCommand("x509", "X.509 CAs (ID: the CA certificate's subject key ID in hex)"),
			caKindCommand("jwt", "JWT signing keys (ID: the key ID, kid)"),
			{
				Name:  "rotate",
				Usage: "prepare and activate a new X.509 CA and JWT key on this server at once",
				Description: "Without --wait the new keys sign at once, and agents may briefly see SVIDs from a\n" +
					"key whose bundle they have not received yet. With --wait the new keys are\n" +
					"published first, and activated once every agent connected to this server has\n" +
					"acknowledged the bundle that holds them (applied it and handed it to its\n" +
					"workloads). Agents connected to other servers sharing the datastore are not waited\n" +
					"for: run it on the server most agents use, or wait the bundle refresh hint. If\n" +
					"--wait-timeout passes first, the keys stay prepared, the error names how many\n" +
					"agents have not acknowledged, and a second rotate activates them.",
				Flags: withAdminFlags(
					&cli.BoolFlag{Name: flagWait, Usage: "activate only once every agent connected to this server acknowledged the new bundle"},
					&cli.DurationFlag{Name: flagWaitTimeout, Value: 30 * time.Second, Usage: "with --wait: how long to wait for the agents' acknowledgements"},
				),
				Action: caRotate,
			},
		},
	}
}

func caKindCommand(kind, what string) *cli.Command {
	idFlag := &cli.StringFlag{Name: flagKeyID, Usage: "the key's `ID` as show prints it (required)"}
	return &cli.Command{
		Name:   kind,
		Usage:  "manage the " + what,
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:  "show",
				Usage: "list every " + kind + " authority of every server",
				Description: "States: prepared (published, not signing yet), active (signing), old (no longer\n" +
					"signs, published until what it signed expires), tainted (never signs again;\n" +
					"agents re-sign what it signed). --output json prints an array of objects with\n" +
					"kind, id, state, not_before, not_after (RFC 3339), server_id, signed_until and\n" +
					"upstream_chain.",
				Flags:  withAdminFlags(),
				Action: caShow(kind),
			},
			{
				Name:        "prepare",
				Usage:       "make the next key on this server now and publish it, without signing with it",
				Description: "Refused if this server already has a prepared key of this kind.",
				Flags:       withAdminFlags(),
				Action:      caPrepare(kind),
			},
			{
				Name:  "activate",
				Usage: "make a prepared key of this server sign; the active key becomes old",
				Description: "Refused until the key has been in the bundle for the bundle refresh hint\n" +
					"(5 minutes), so that every relying party has it before it signs, unless --force.",
				Flags:  withAdminFlags(idFlag, &cli.BoolFlag{Name: flagForce, Usage: "activate even if relying parties may not have the key yet"}),
				Action: caChange(kind, "activated"),
			},
			{
				Name:  "taint",
				Usage: "mark a key tainted: it never signs again and agents re-sign what it signed",
				Description: "Refused for the active key: rotate first. The key stays in the bundle until\n" +
					"revoked.",
				Flags:  withAdminFlags(idFlag),
				Action: caChange(kind, "tainted"),
			},
			{
				Name:  "revoke",
				Usage: "remove a tainted key: its record, then its authority in the bundle",
				Description: "Refused unless the key is tainted. For X.509 also refused, unless --force, until\n" +
					"every X.509-SVID it could have signed has expired (the longest X.509-SVID TTL\n" +
					"after it stopped signing). A CA signed by an upstream is not itself in the\n" +
					"bundle (the upstream root is): revoking it removes its record and key only.",
				Flags:  withAdminFlags(idFlag, &cli.BoolFlag{Name: flagForce, Usage: "revoke even though X.509-SVIDs it signed may still be valid"}),
				Action: caChange(kind, "revoked"),
			},
		},
	}
}

// jsonAuthority is a CA key as --output json prints it.
type jsonAuthority struct {
	Kind          string   `json:"kind"`
	ID            string   `json:"id"`
	State         string   `json:"state"`
	NotBefore     string   `json:"not_before"` // RFC 3339
	NotAfter      string   `json:"not_after"`  // RFC 3339
	ServerID      string   `json:"server_id"`
	SignedUntil   string   `json:"signed_until,omitempty"` // RFC 3339
	UpstreamChain []string `json:"upstream_chain"`
}

func authorityToJSON(a *adminv1.Authority) *jsonAuthority {
	j := &jsonAuthority{
		Kind:          a.GetKind(),
		ID:            a.GetId(),
		State:         a.GetState(),
		NotBefore:     formatUnix(a.GetNotBefore()),
		NotAfter:      formatUnix(a.GetNotAfter()),
		ServerID:      a.GetServerId(),
		UpstreamChain: nonNil(a.GetUpstreamChain()),
	}
	if a.GetSignedUntil() != 0 {
		j.SignedUntil = formatUnix(a.GetSignedUntil())
	}
	return j
}

func (t *textWriter) authority(a *adminv1.Authority) {
	t.field("ID", a.GetId())
	t.field("Kind", a.GetKind())
	t.field("State", a.GetState())
	t.field("Not before", formatUnix(a.GetNotBefore()))
	t.field("Not after", formatUnix(a.GetNotAfter()))
	if a.GetSignedUntil() != 0 {
		t.field("Signed until", formatUnix(a.GetSignedUntil()))
	}
	t.field("Server ID", a.GetServerId())
	for _, s := range a.GetUpstreamChain() {
		t.field("Upstream", s)
	}
}

func caShow(kind string) cli.ActionFunc {
	return func(c *cli.Context) error {
		a, err := newAdminCmd(c)
		if err != nil {
			return err
		}
		resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.ListAuthoritiesResponse, error) {
			return client.ca.ListAuthorities(ctx, &adminv1.ListAuthoritiesRequest{Kind: kind})
		})
		if err != nil {
			return err
		}
		auths := resp.GetAuthorities()
		if a.format == jsonOutput {
			out := make([]*jsonAuthority, len(auths))
			for i, x := range auths {
				out[i] = authorityToJSON(x)
			}
			return writeJSON(c.App.Writer, out)
		}
		t := newTextWriter(c.App.Writer)
		t.count(len(auths), kind+" authority", kind+" authorities")
		for _, x := range auths {
			t.line("")
			t.authority(x)
		}
		return t.Flush()
	}
}

func caPrepare(kind string) cli.ActionFunc {
	return func(c *cli.Context) error {
		a, err := newAdminCmd(c)
		if err != nil {
			return err
		}
		auth, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.Authority, error) {
			return client.ca.PrepareAuthority(ctx, &adminv1.PrepareAuthorityRequest{Kind: kind})
		})
		if err != nil {
			return err
		}
		return printAuthority(c, a, "prepared", auth)
	}
}

func printAuthority(c *cli.Context, a *adminCmd, verb string, auth *adminv1.Authority) error {
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, authorityToJSON(auth))
	}
	t := newTextWriter(c.App.Writer)
	t.line("%s %s authority %s", verb, entry.Printable(auth.GetKind()), entry.Printable(auth.GetId()))
	return t.Flush()
}

// checkKeyIDFlag checks --id before dialling: lowercase hex.
func checkKeyIDFlag(c *cli.Context) (string, error) {
	if !c.IsSet(flagKeyID) {
		return "", usagef(c, "missing required flag --%s", flagKeyID)
	}
	id := c.String(flagKeyID)
	if id == "" || strings.Trim(id, "0123456789abcdef") != "" {
		return "", usagef(c, "invalid --%s %q: want the lowercase hexadecimal ID that show prints", flagKeyID, id)
	}
	return id, nil
}

// caChange is the action of activate, taint and revoke.
func caChange(kind, verb string) cli.ActionFunc {
	return func(c *cli.Context) error {
		a, err := newAdminCmd(c)
		if err != nil {
			return err
		}
		id, err := checkKeyIDFlag(c)
		if err != nil {
			return err
		}
		force := c.Bool(flagForce)
		if force {
			switch verb {
			case "activated":
				fmt.Fprintln(c.App.ErrWriter, "writ: warning: --force activates the key even if relying parties have not fetched it yet; they will reject what it signs until they do")
			case "revoked":
				fmt.Fprintln(c.App.ErrWriter, "writ: warning: --force revokes the key even though SVIDs it signed may still be valid; they stop verifying at once")
			}
		}
		auth, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.Authority, error) {
			switch verb {
			case "activated":
				return client.ca.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{Kind: kind, Id: id, Force: force})
			case "tainted":
				return client.ca.TaintAuthority(ctx, &adminv1.TaintAuthorityRequest{Kind: kind, Id: id})
			default:
				return client.ca.RevokeAuthority(ctx, &adminv1.RevokeAuthorityRequest{Kind: kind, Id: id, Force: force})
			}
		})
		if err != nil {
			return err
		}
		return printAuthority(c, a, verb, auth)
	}
}

func caRotate(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	wait := c.Bool(flagWait)
	waitTimeout := c.Duration(flagWaitTimeout)
	if waitTimeout <= 0 || waitTimeout > maxRotateWaitTimeout {
		return usagef(c, "--%s must be positive and at most %s", flagWaitTimeout, maxRotateWaitTimeout)
	}
	req := &adminv1.RotateRequest{Wait: wait}
	if !wait {
		fmt.Fprintln(c.App.ErrWriter, "writ: warning: the new keys sign at once; agents may briefly see SVIDs from a key they have not fetched yet (use --wait to avoid this)")
	} else {
		req.WaitTimeoutMs = waitTimeout.Milliseconds()
		a.timeout += waitTimeout // the call lasts the wait and the rest
	}
	resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.RotateResponse, error) {
		return client.ca.Rotate(ctx, req)
	})
	if err != nil {
		return err
	}
	if a.format == jsonOutput {
		out := make([]*jsonAuthority, len(resp.GetActivated()))
		for i, x := range resp.GetActivated() {
			out[i] = authorityToJSON(x)
		}
		return writeJSON(c.App.Writer, out)
	}
	t := newTextWriter(c.App.Writer)
	if wait {
		t.line("new bundle acknowledged by every agent connected to this server (%d)", resp.GetStreamsNotified())
	}
	for _, x := range resp.GetActivated() {
		t.line("activated %s authority %s", entry.Printable(x.GetKind()), entry.Printable(x.GetId()))
	}
	return t.Flush()
}
