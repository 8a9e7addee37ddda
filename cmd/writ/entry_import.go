package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
)

// Limits of `entry create --file`.
const (
	// importBatchEntries and importBatchBytes bound one
	// BatchCreateEntry request; the bytes limit keeps batches of large
	// entries under gRPC's default 4 MiB receive limit.
	importBatchEntries = 1000
	importBatchBytes   = 3 << 20
	// maxImportInput bounds the file read.
	maxImportInput = 256 << 20
)

// importResult is the outcome of one imported entry, as --output json
// prints it. Index is the entry's position in the input array, from 0.
type importResult struct {
	Index   int        `json:"index"`
	Status  string     `json:"status"` // "ok" or a gRPC code name such as "AlreadyExists"
	Message string     `json:"message"`
	Entry   *jsonEntry `json:"entry"` // as created, or as sent if it failed
}

// importEntries creates the entries of the JSON array in path ("-" for
// standard input). Every entry is read and checked before the first is
// sent: if any is invalid, none are.
func importEntries(a *adminCmd, path string) error {
	c := a.cli
	name := entry.Printable(path)
	var r io.Reader
	if path == "-" {
		name = "stdin"
		r = c.App.Reader
	} else {
		f, err := os.Open(path) //nolint:gosec // the operator names the file to import
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxImportInput+1))
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > maxImportInput {
		return fmt.Errorf("%s is larger than %d MiB: split it", name, maxImportInput>>20)
	}
	raw, err := decodeEntries(data)
	if err != nil {
		return fmt.Errorf("%s%w", name, err)
	}

	entries := make([]*adminv1.Entry, len(raw))
	invalid := 0
	for i, j := range raw {
		e, err := entryFromJSON(j)
		if err != nil {
			invalid++
			fmt.Fprintf(c.App.ErrWriter, "writ: %s: %s\n", entryLabel(i, j.SPIFFEID), entry.Printable(err.Error()))
			continue
		}
		entries[i] = adminv1.EntryFromDomain(e)
	}
	if invalid > 0 {
		return fmt.Errorf("%s: %d of %d entries are invalid; none were sent", name, invalid, len(raw))
	}

	results, stopErr := sendEntries(a, entries)
	failed := 0
	for _, r := range results {
		if r.Status != "ok" {
			failed++
		}
	}
	if err := writeImportResults(a, results, raw, len(entries)); err != nil {
		return err
	}
	switch {
	case stopErr != nil:
		return stopErr
	case failed > 0 && a.format == jsonOutput:
		return fmt.Errorf("%d of %d entries failed", failed, len(entries))
	case failed > 0:
		// The text report already says what failed.
		return cli.Exit("", exitError)
	}
	return nil
}

// sendEntries creates entries in batches and returns the result of each
// entry sent. If a batch fails as a whole, it stops and returns the
// results so far and the error.
func sendEntries(a *adminCmd, entries []*adminv1.Entry) ([]importResult, error) {
	results := make([]importResult, 0, len(entries))
	if len(entries) == 0 {
		return results, nil
	}
	client, err := a.dial()
	if err != nil {
		return results, err
	}
	defer client.Close()
	progress := terminalOf(a.cli.App.ErrWriter)

	for start := 0; start < len(entries); {
		end := batchEnd(entries, start)
		ctx, cancel := client.callContext(a.cli.Context)
		resp, err := client.entries.BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: entries[start:end]})
		cancel()
		if err == nil && len(resp.GetResults()) != end-start {
			err = fmt.Errorf("server returned %d results for %d entries", len(resp.GetResults()), end-start)
		}
		if err != nil {
			if progress != nil {
				fmt.Fprintln(progress)
			}
			return results, fmt.Errorf("import stopped at entry %d of %d: %w", start, len(entries), client.callError(err))
		}
		for k, res := range resp.GetResults() {
			i := start + k
			r := importResult{Index: i, Status: "ok", Entry: entryToJSON(entries[i])}
			if code := codes.Code(res.GetStatus().GetCode()); code != codes.OK {
				r.Status = code.String()
				r.Message = res.GetStatus().GetMessage()
			} else if res.GetEntry() != nil {
				r.Entry = entryToJSON(res.GetEntry())
			}
			results = append(results, r)
		}
		start = end
		if progress != nil {
			fmt.Fprintf(progress, "\rimported %d/%d", start, len(entries))
		}
	}
	if progress != nil {
		fmt.Fprintln(progress)
	}
	return results, nil
}

// batchEnd returns the end of the batch that starts at entries[start]:
// at most importBatchEntries entries and importBatchBytes bytes, and at
// least one entry.
func batchEnd(entries []*adminv1.Entry, start int) int {
	end, size := start, 0
	for end < len(entries) && end-start < importBatchEntries {
		n := proto.Size(entries[end]) + 8 // field tag and length
		if end > start && size+n > importBatchBytes {
			break
		}
		size += n
		end++
	}
	return end
}

func writeImportResults(a *adminCmd, results []importResult, raw []*jsonEntry, total int) error {
	w := a.cli.App.Writer
	if a.format == jsonOutput {
		return writeJSON(w, results)
	}
	t := newTextWriter(w)
	created := 0
	for _, r := range results {
		if r.Status == "ok" {
			created++
			continue
		}
		t.line("%s: %s", entryLabel(r.Index, raw[r.Index].SPIFFEID), entry.Printable(r.Message))
	}
	t.line("created %d of %d entries", created, total)
	return t.Flush()
}

// entryLabel names the entry at index i of an import in messages.
func entryLabel(i int, spiffeID string) string {
	if spiffeID == "" {
		return fmt.Sprintf("entry %d (no spiffe_id)", i)
	}
	return fmt.Sprintf("entry %d (spiffe_id %s)", i, entry.Printable(spiffeID))
}

// inputError is an error in an import file, at a line when line > 0.
// It prints as ":LINE: message" or ": message", for the caller to put the
// file's name before.
type inputError struct {
	line int
	msg  string
}

func (e *inputError) Error() string {
	if e.line > 0 {
		return fmt.Sprintf(":%d: %s", e.line, e.msg)
	}
	return ": " + e.msg
}

func inputErrorf(data []byte, off int64, format string, args ...any) *inputError {
	return &inputError{line: lineAt(data, off), msg: fmt.Sprintf(format, args...)}
}

// decodeEntries reads a JSON array of entries in the shape --output json
// prints. Unknown fields are errors.
func decodeEntries(data []byte) ([]*jsonEntry, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	tok, err := dec.Token()
	if errors.Is(err, io.EOF) {
		return nil, &inputError{msg: "empty: want a JSON array of entries"}
	}
	if err != nil {
		return nil, inputErrorf(data, dec.InputOffset(), "%s", describeJSONError(err))
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, inputErrorf(data, 0, "want a JSON array of entries")
	}
	out := []*jsonEntry{}
	for dec.More() {
		start := skipJSONSeparators(data, dec.InputOffset())
		var j jsonEntry
		if err := dec.Decode(&j); err != nil {
			off := start
			if se, ok := errors.AsType[*json.SyntaxError](err); ok {
				off = se.Offset
			}
			return nil, inputErrorf(data, off, "entry %d: %s", len(out), describeJSONError(err))
		}
		out = append(out, &j)
	}
	if _, err := dec.Token(); err != nil {
		return nil, inputErrorf(data, dec.InputOffset(), "after entry %d: %s", len(out), describeJSONError(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, inputErrorf(data, dec.InputOffset(), "unexpected data after the array of entries")
	}
	return out, nil
}

func skipJSONSeparators(data []byte, off int64) int64 {
	for off < int64(len(data)) {
		switch data[off] {
		case ' ', '\t', '\r', '\n', ',':
			off++
		default:
			return off
		}
	}
	return off
}

// lineAt returns the line number, from 1, of byte offset off in data.
func lineAt(data []byte, off int64) int {
	off = min(max(off, 0), int64(len(data)))
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// describeJSONError explains a decoding error without Go type names.
func describeJSONError(err error) string {
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if te.Field == "" {
			return fmt.Sprintf("want a JSON object, got %s", te.Value)
		}
		return fmt.Sprintf("%s: want %s, got %s", te.Field, jsonTypeName(te.Type), te.Value)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "unexpected end of input"
	}
	msg := err.Error()
	const prefix = "json: "
	if len(msg) > len(prefix) && msg[:len(prefix)] == prefix {
		msg = msg[len(prefix):]
	}
	return entry.Printable(msg)
}

func jsonTypeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int64, reflect.Uint64:
		return "a whole number"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "an array of strings"
	}
	return t.String()
}

// entryFromJSON parses and checks an imported entry. ID, CreatedAt and
// Revision are ignored: the server assigns them.
func entryFromJSON(j *jsonEntry) (*entry.Entry, error) {
	var (
		e   entry.Entry
		err error
	)
	if e.SPIFFEID, err = parseOptionalID(j.SPIFFEID); err != nil {
		return nil, err
	}
	if e.ParentID, err = parseOptionalID(j.ParentID); err != nil {
		return nil, err
	}
	if e.Selectors, err = parseSelectors(j.Selectors); err != nil {
		return nil, err
	}
	if e.X509SVIDTTL, err = ttlFromSeconds(j.X509SVIDTTL); err != nil {
		return nil, err
	}
	if e.JWTSVIDTTL, err = ttlFromSeconds(j.JWTSVIDTTL); err != nil {
		return nil, err
	}
	if e.DNSNames, err = parseDNSNames(j.DNSNames); err != nil {
		return nil, err
	}
	e.Admin = j.Admin
	e.Downstream = j.Downstream
	if err := checkEntry(&e); err != nil {
		return nil, err
	}
	return &e, nil
}

// ttlFromSeconds converts a TTL in whole seconds, 0 meaning the server's
// default, with the shared TTL parser.
func ttlFromSeconds(n int64) (time.Duration, error) {
	if n == 0 {
		return 0, nil
	}
	return entry.ParseTTL(strconv.FormatInt(n, 10))
}
