package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc/codes"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
)

// Flag names of the entry commands.
const (
	flagID            = "id"
	flagSPIFFEID      = "spiffe-id"
	flagParentID      = "parent-id"
	flagNode          = "node"
	flagSelector      = "selector"
	flagX509TTL       = "x509-ttl"
	flagJWTTTL        = "jwt-ttl"
	flagDNSName       = "dns-name"
	flagAdmin         = "admin"
	flagDownstream    = "downstream"
	flagFile          = "file"
	flagClearDNSNames = "clear-dns-names"
	flagTemplate      = "template"

	flagFederatesWith      = "federates-with"
	flagClearFederatesWith = "clear-federates-with"
)

// Field names of adminv1.Entry, as UpdateEntryRequest.update_mask names
// them.
const (
	fieldSPIFFEID    = "spiffe_id"
	fieldParentID    = "parent_id"
	fieldSelectors   = "selectors"
	fieldX509SVIDTTL = "x509_svid_ttl"
	fieldJWTSVIDTTL  = "jwt_svid_ttl"
	fieldDNSNames    = "dns_names"
	fieldAdmin       = "admin"
	fieldDownstream  = "downstream"

	fieldFederatesWith = "federates_with"
)

// entryFieldFlags are the flags that set entry fields, in the order of
// the fields they set.
var entryFieldFlags = []string{flagSPIFFEID, flagParentID, flagSelector, flagX509TTL, flagJWTTTL, flagDNSName, flagAdmin, flagDownstream, flagFederatesWith}

func entryCommand() *cli.Command {
	return &cli.Command{
		Name:   "entry",
		Usage:  "manage registration entries",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:  "create",
				Usage: "create an entry, or import entries from a JSON file",
				Description: "Creates one entry from the flags and prints its ID, or imports a JSON array of\n" +
					"entries (the shape --output json prints) with --file. On import, \"id\",\n" +
					"\"created_at\" and \"revision\" are ignored: the server assigns them.",
				Flags:  withAdminFlags(entryFlags(false)...),
				Action: entryCreate,
			},
			{
				Name:   "list",
				Usage:  "list entries, optionally only those matching all the filters",
				Flags:  withAdminFlags(entryListFlags()...),
				Action: entryList,
			},
			{
				Name:   "show",
				Usage:  "show one entry",
				Flags:  withAdminFlags(entryIDFlag()),
				Action: entryShow,
			},
			{
				Name:  "update",
				Usage: "change the fields of an entry whose flags are given",
				Description: "Sets exactly the fields whose flags are given and keeps all others. Repeated\n" +
					"flags (--selector, --dns-name, --federates-with) replace the whole list. --admin=false and\n" +
					"--downstream=false clear those flags.",
				Flags:  withAdminFlags(append([]cli.Flag{entryIDFlag()}, entryFlags(true)...)...),
				Action: entryUpdate,
			},
			{
				Name:   "delete",
				Usage:  "delete an entry",
				Flags:  withAdminFlags(entryIDFlag()),
				Action: entryDelete,
			},
		},
	}
}

// stringList is a repeatable flag's values, taken exactly as given: not
// split on commas, not trimmed.
type stringList []string

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func (l *stringList) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(*l, ", ")
}

func listFlag(name, usage string) cli.Flag {
	return &cli.GenericFlag{Name: name, Usage: usage, Value: &stringList{}}
}

func listValue(c *cli.Context, name string) []string {
	if l, ok := c.Generic(name).(*stringList); ok && l != nil {
		return *l
	}
	return nil
}

func entryIDFlag() cli.Flag {
	return &cli.StringFlag{Name: flagID, Usage: "the entry's `ID` (required)"}
}

// entryFlags returns the flags that set entry fields: for create (with
// --file) or for update (with --clear-dns-names).
func entryFlags(update bool) []cli.Flag {
	req := " (required)"
	if update {
		req = ""
	}
	flags := []cli.Flag{
		&cli.StringFlag{Name: flagSPIFFEID, Usage: "the SPIFFE `ID` the entry issues" + req},
		&cli.BoolFlag{Name: flagTemplate, Usage: "--spiffe-id is a template such as spiffe://example.org/user/{{unix.user}}, filled for each matching caller (see the README)"},
		&cli.StringFlag{Name: flagParentID, Usage: "the SPIFFE `ID` of the agent (or parent entry) that serves it" + req},
		listFlag(flagSelector, "a selector `TYPE:VALUE` the workload must have; repeat for several"+req),
		&cli.StringFlag{Name: flagX509TTL, Usage: "X509-SVID lifetime (a `TTL`), such as 90s, 1h or 3600 (seconds)"},
		&cli.StringFlag{Name: flagJWTTTL, Usage: "JWT-SVID lifetime (a `TTL`), such as 90s, 5m or 300 (seconds)"},
		listFlag(flagDNSName, "a DNS `NAME` for the X509-SVID; repeat for several"),
		&cli.BoolFlag{Name: flagAdmin, Usage: "X.509-SVIDs of this entry's SPIFFE ID may call the admin API of servers run with --admin-bind-address, over mutual TLS (writ ... --admin-address); checked on every call, so deleting the entry or clearing --admin revokes it at once"},
		&cli.BoolFlag{Name: flagDownstream, Usage: "the workload may ask its agent (DownstreamService on the agent socket) for an intermediate CA of the trust domain, valid at most the entry's X.509 TTL (default 24h) and never beyond the server's own CA, and publish JWT keys in the bundle: for a nested Writ server run with --upstream-authority writ"},
		listFlag(flagFederatesWith, "a foreign `TRUST_DOMAIN` (b.example) whose bundle the entry's workloads receive; the server must hold its bundle or a federation with it; repeat for several"),
	}
	if update {
		for _, f := range flags {
			if b, ok := f.(*cli.BoolFlag); ok {
				b.DefaultText = "unchanged"
			}
		}
	}
	if update {
		flags = append(flags, &cli.BoolFlag{Name: flagClearDNSNames, Usage: "remove all DNS names"})
		flags = append(flags, &cli.BoolFlag{Name: flagClearFederatesWith, Usage: "remove all federated trust domains"})
	} else {
		flags = append(flags, &cli.BoolFlag{
			Name:  flagNode,
			Usage: "make a node alias instead of a workload entry: every agent whose node selectors (x509pop:..., sshpop:...) include all of --selector is a member of --spiffe-id, and entries with that ID as --parent-id go to each member (no --parent-id)",
		})
		flags = append(flags, &cli.StringFlag{
			Name:      flagFile,
			Usage:     "import the JSON array of entries in `FILE` (- for standard input) instead of the entry flags",
			TakesFile: true,
		})
	}
	return flags
}

func entryListFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagSPIFFEID, Usage: "only entries with this SPIFFE `ID`"},
		&cli.StringFlag{Name: flagParentID, Usage: "only entries with this parent `ID`"},
		listFlag(flagSelector, "only entries that have this selector `TYPE:VALUE`; repeat for several (all must match)"),
	}
}

// parseEntryFlags parses the entry field flags that were given, with the
// shared strict parsers, into an entry and the update_mask naming them in
// field order. An empty --spiffe-id or --parent-id leaves the ID zero, for
// Validate to report.
func parseEntryFlags(c *cli.Context) (*entry.Entry, []string, error) {
	var (
		e    entry.Entry
		mask []string
		err  error
	)
	if c.Bool(flagTemplate) && !c.IsSet(flagSPIFFEID) {
		return nil, nil, usagef(c, "--%s needs --%s with the template", flagTemplate, flagSPIFFEID)
	}
	if c.IsSet(flagSPIFFEID) {
		mask = append(mask, fieldSPIFFEID)
		if c.Bool(flagTemplate) {
			if err := setTemplate(&e, c.String(flagSPIFFEID)); err != nil {
				return nil, nil, err
			}
		} else if e.SPIFFEID, err = parseOptionalID(c.String(flagSPIFFEID)); err != nil {
			if strings.Contains(c.String(flagSPIFFEID), "{{") {
				return nil, nil, fmt.Errorf("%w (a template needs --%s)", err, flagTemplate)
			}
			return nil, nil, err
		}
	}
	if c.IsSet(flagParentID) {
		mask = append(mask, fieldParentID)
		if e.ParentID, err = parseOptionalID(c.String(flagParentID)); err != nil {
			return nil, nil, err
		}
	}
	if c.IsSet(flagSelector) {
		mask = append(mask, fieldSelectors)
		if e.Selectors, err = parseSelectors(listValue(c, flagSelector)); err != nil {
			return nil, nil, err
		}
	}
	if c.IsSet(flagX509TTL) {
		mask = append(mask, fieldX509SVIDTTL)
		if e.X509SVIDTTL, err = entry.ParseTTL(c.String(flagX509TTL)); err != nil {
			return nil, nil, err
		}
	}
	if c.IsSet(flagJWTTTL) {
		mask = append(mask, fieldJWTSVIDTTL)
		if e.JWTSVIDTTL, err = entry.ParseTTL(c.String(flagJWTTTL)); err != nil {
			return nil, nil, err
		}
	}
	if c.IsSet(flagDNSName) || c.Bool(flagClearDNSNames) {
		mask = append(mask, fieldDNSNames)
		if e.DNSNames, err = parseDNSNames(listValue(c, flagDNSName)); err != nil {
			return nil, nil, err
		}
	}
	if c.IsSet(flagAdmin) {
		mask = append(mask, fieldAdmin)
		e.Admin = c.Bool(flagAdmin)
	}
	if c.IsSet(flagDownstream) {
		mask = append(mask, fieldDownstream)
		e.Downstream = c.Bool(flagDownstream)
	}
	if c.IsSet(flagFederatesWith) || c.Bool(flagClearFederatesWith) {
		mask = append(mask, fieldFederatesWith)
		if e.FederatesWith, err = parseFederatesWith(listValue(c, flagFederatesWith)); err != nil {
			return nil, nil, err
		}
	}
	return &e, mask, nil
}

// setTemplate parses s as a template in the trust domain it names and
// sets e's template and SPIFFE ID (its literal prefix).
func setTemplate(e *entry.Entry, s string) error {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	name, _, _ := strings.Cut(rest, "/")
	td, err := spiffeid.TrustDomainFromString(name)
	if !ok || err != nil {
		return fmt.Errorf("%w: template %q does not start with spiffe://<trust domain>/", entry.ErrInvalid, entry.Printable(s))
	}
	t, err := entry.ParseTemplate(td, s)
	if err != nil {
		return err
	}
	e.Template, e.SPIFFEID = t.String(), t.Prefix()
	return nil
}

func parseOptionalID(s string) (spiffeid.ID, error) {
	if s == "" {
		return spiffeid.ID{}, nil
	}
	return entry.ParseID(s)
}

func parseSelectors(ss []string) ([]entry.Selector, error) {
	out := make([]entry.Selector, 0, len(ss))
	for _, s := range ss {
		sel, err := entry.ParseSelector(s)
		if err != nil {
			return nil, err
		}
		out = append(out, sel)
	}
	return out, nil
}

func parseDNSNames(ns []string) ([]string, error) {
	out := make([]string, 0, len(ns))
	for _, n := range ns {
		if _, err := entry.ParseDNSName(n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

func parseFederatesWith(ss []string) ([]spiffeid.TrustDomain, error) {
	var out []spiffeid.TrustDomain
	for _, s := range ss {
		td, err := entry.ParseTrustDomain(s)
		if err != nil {
			return nil, err
		}
		out = append(out, td)
	}
	return out, nil
}

// checkEntry normalizes e and checks it as the server will, in the trust
// domain of its SPIFFE ID (the server also checks that this is its own).
func checkEntry(e *entry.Entry) error {
	e.Normalize()
	if !e.SPIFFEID.IsZero() && !e.ParentID.IsZero() && e.ParentID.TrustDomain() != e.SPIFFEID.TrustDomain() {
		return fmt.Errorf("%w: parent ID %q and SPIFFE ID %q are in different trust domains", entry.ErrInvalid, e.ParentID.String(), e.SPIFFEID.String())
	}
	return e.Validate(e.SPIFFEID.TrustDomain())
}

// checkUpdate checks the fields of e named in mask with the same rules
// (and messages) as checkEntry. Fields not being changed are stood in for
// by placeholders that pass; the server checks the merged entry.
func checkUpdate(e *entry.Entry, mask []string) error {
	d := e.Clone()
	has := func(f string) bool { return slices.Contains(mask, f) }
	var td spiffeid.TrustDomain
	switch {
	case has(fieldSPIFFEID) && !d.SPIFFEID.IsZero():
		td = d.SPIFFEID.TrustDomain()
	case has(fieldParentID) && !d.ParentID.IsZero():
		td = d.ParentID.TrustDomain()
	default:
		td = spiffeid.RequireTrustDomainFromString("placeholder.invalid")
	}
	placeholder := func(other spiffeid.ID) spiffeid.ID {
		id := spiffeid.RequireFromSegments(td, "writ-placeholder", "a")
		if id == other {
			id = spiffeid.RequireFromSegments(td, "writ-placeholder", "b")
		}
		return id
	}
	if !has(fieldSPIFFEID) {
		d.SPIFFEID = placeholder(d.ParentID)
	}
	if !has(fieldParentID) {
		d.ParentID = placeholder(d.SPIFFEID)
	}
	if !has(fieldSelectors) {
		d.Selectors = []entry.Selector{{Type: "writ", Value: "placeholder"}}
	}
	d.Normalize()
	if err := d.Validate(td); err != nil {
		return err
	}
	e.Normalize()
	return nil
}

func entryCreate(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	if c.IsSet(flagFile) {
		for _, f := range append(entryFieldFlags, flagNode) {
			if c.IsSet(f) {
				return usagef(c, "--%s cannot be combined with --%s: give entries either in the file or as flags", flagFile, f)
			}
		}
		return importEntries(a, c.String(flagFile))
	}
	required := []string{flagSPIFFEID, flagParentID, flagSelector}
	if c.Bool(flagNode) {
		if c.IsSet(flagParentID) {
			return usagef(c, "--%s and --%s exclude each other: a node alias's parent is the server", flagNode, flagParentID)
		}
		required = []string{flagSPIFFEID, flagSelector}
	}
	for _, f := range required {
		if !c.IsSet(f) {
			return usagef(c, "missing required flag --%s (or --%s)", f, flagFile)
		}
	}
	e, _, err := parseEntryFlags(c)
	if err != nil {
		return err
	}
	if c.Bool(flagNode) && !e.SPIFFEID.IsZero() {
		// A node alias is an entry parented to the server's own ID.
		e.ParentID = entry.ServerID(e.SPIFFEID.TrustDomain())
	}
	if err := checkEntry(e); err != nil {
		return err
	}

	resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.BatchCreateEntryResponse, error) {
		return client.entries.BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{adminv1.EntryFromDomain(e)}})
	})
	if err != nil {
		return err
	}
	if len(resp.GetResults()) != 1 {
		return fmt.Errorf("server returned %d results for 1 entry", len(resp.GetResults()))
	}
	res := resp.GetResults()[0]
	if code := codes.Code(res.GetStatus().GetCode()); code != codes.OK {
		return &serverError{code: code, msg: res.GetStatus().GetMessage()}
	}
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, entryToJSON(res.GetEntry()))
	}
	t := newTextWriter(c.App.Writer)
	t.line("%s", entry.Printable(res.GetEntry().GetId()))
	return t.Flush()
}

func entryList(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	req := &adminv1.ListEntriesRequest{}
	if c.IsSet(flagSPIFFEID) {
		id, err := entry.ParseID(c.String(flagSPIFFEID))
		if err != nil {
			return err
		}
		req.SpiffeId = id.String()
	}
	if c.IsSet(flagParentID) {
		id, err := entry.ParseID(c.String(flagParentID))
		if err != nil {
			return err
		}
		req.ParentId = id.String()
	}
	if c.IsSet(flagSelector) {
		sels, err := parseSelectors(listValue(c, flagSelector))
		if err != nil {
			return err
		}
		for _, s := range sels {
			req.Selectors = append(req.Selectors, s.String())
		}
	}

	client, err := a.dial()
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := client.callContext(c.Context)
	defer cancel()
	stream, err := client.entries.ListEntries(ctx, req)
	if err != nil {
		return client.callError(err)
	}
	var entries []*adminv1.Entry
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return client.callError(err)
		}
		entries = append(entries, resp.GetEntries()...)
	}

	if a.format == jsonOutput {
		out := make([]*jsonEntry, len(entries))
		for i, e := range entries {
			out[i] = entryToJSON(e)
		}
		return writeJSON(c.App.Writer, out)
	}
	t := newTextWriter(c.App.Writer)
	t.count(len(entries), "entry", "entries")
	for _, e := range entries {
		t.line("")
		t.entry(e)
	}
	return t.Flush()
}

// parseEntryIDFlag returns the checked value of the required --id.
func parseEntryIDFlag(c *cli.Context) (string, error) {
	if !c.IsSet(flagID) {
		return "", usagef(c, "missing required flag --%s", flagID)
	}
	return entry.ParseEntryID(c.String(flagID))
}

func entryShow(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	id, err := parseEntryIDFlag(c)
	if err != nil {
		return err
	}
	e, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.Entry, error) {
		return client.entries.GetEntry(ctx, &adminv1.GetEntryRequest{Id: id})
	})
	if err != nil {
		return err
	}
	if e.GetTemplate() == "" {
		return writeEntry(a, e)
	}
	issued, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.ListTemplateIssuedResponse, error) {
		return client.entries.ListTemplateIssued(ctx, &adminv1.ListTemplateIssuedRequest{Id: id})
	})
	if err != nil {
		return err
	}
	return writeTemplateEntry(a, e, issued.GetAgents())
}

func entryUpdate(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	id, err := parseEntryIDFlag(c)
	if err != nil {
		return err
	}
	if c.IsSet(flagDNSName) && c.Bool(flagClearDNSNames) {
		return usagef(c, "--%s cannot be combined with --%s", flagClearDNSNames, flagDNSName)
	}
	if c.IsSet(flagFederatesWith) && c.Bool(flagClearFederatesWith) {
		return usagef(c, "--%s cannot be combined with --%s", flagClearFederatesWith, flagFederatesWith)
	}
	e, mask, err := parseEntryFlags(c)
	if err != nil {
		return err
	}
	if len(mask) == 0 {
		return usagef(c, "nothing to update: give at least one of --%s", strings.Join(entryFieldFlags, ", --"))
	}
	if err := checkUpdate(e, mask); err != nil {
		return err
	}
	e.ID = id

	updated, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.Entry, error) {
		return client.entries.UpdateEntry(ctx, &adminv1.UpdateEntryRequest{Entry: adminv1.EntryFromDomain(e), UpdateMask: mask})
	})
	if err != nil {
		return err
	}
	return writeEntry(a, updated)
}

func entryDelete(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	id, err := parseEntryIDFlag(c)
	if err != nil {
		return err
	}
	e, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.Entry, error) {
		return client.entries.DeleteEntry(ctx, &adminv1.DeleteEntryRequest{Id: id})
	})
	if err != nil {
		return err
	}
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, entryToJSON(e))
	}
	t := newTextWriter(c.App.Writer)
	t.line("deleted entry %s", id)
	return t.Flush()
}

// writeEntry prints one entry as a text block or a JSON object.
func writeEntry(a *adminCmd, e *adminv1.Entry) error {
	if a.format == jsonOutput {
		return writeJSON(a.cli.App.Writer, entryToJSON(e))
	}
	t := newTextWriter(a.cli.App.Writer)
	t.entry(e)
	return t.Flush()
}
