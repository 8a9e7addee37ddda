package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
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
	// maxImportStdin bounds what is read from standard input, which is
	// spooled to a temporary file so that it can be read twice.
	maxImportStdin = 1 << 30
	// maxImportEntryBytes bounds one entry of the file: the decoder holds
	// one entry at a time, and this keeps that one small.
	maxImportEntryBytes = 1 << 20
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
// standard input). The file is read twice, one entry at a time, so that
// memory does not grow with it: first every entry is checked, and if any
// is invalid none is sent; then the entries are sent in batches and each
// one's outcome is written as its batch returns.
func importEntries(a *adminCmd, path string) error {
	c := a.cli
	name := entry.Printable(path)
	var f *os.File
	if path == "-" {
		name = "stdin"
		var err error
		if f, err = spoolStdin(c.App.Reader); err != nil {
			return err
		}
	} else {
		var err error
		if f, err = os.Open(path); err != nil { //nolint:gosec // the operator names the file to import
			return err
		}
	}
	defer f.Close()

	// Pass 1: check every entry.
	total, invalid := 0, 0
	err := scanEntries(f, func(i int, j *jsonEntry) error {
		total++
		if _, err := entryFromJSON(j); err != nil {
			invalid++
			fmt.Fprintf(c.App.ErrWriter, "writ: %s: %s\n", entryLabel(i, j.SPIFFEID), entry.Printable(err.Error()))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s%w", name, err)
	}
	if invalid > 0 {
		return fmt.Errorf("%s: %d of %d entries are invalid; none were sent", name, invalid, total)
	}

	// Pass 2: send them.
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("read %s again: %w", name, err)
	}
	out := newImportWriter(a)
	stopErr := sendEntries(a, f, name, total, out)
	if err := out.finish(total); err != nil {
		return err
	}
	switch {
	case stopErr != nil:
		return stopErr
	case out.failed > 0 && a.format == jsonOutput:
		return fmt.Errorf("%d of %d entries failed", out.failed, total)
	case out.failed > 0:
		// The text report already says what failed.
		return cli.Exit("", exitError)
	}
	return nil
}

// spoolStdin copies r, at most maxImportStdin bytes, to an unlinked
// temporary file and returns it positioned at its start.
func spoolStdin(r io.Reader) (*os.File, error) {
	f, err := os.CreateTemp("", "writ-import-*.json")
	if err != nil {
		return nil, fmt.Errorf("spool stdin: %w", err)
	}
	// Unlinked at once: the open file is all that is needed, and nothing
	// is left behind whatever happens.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("spool stdin: %w", err)
	}
	n, err := io.Copy(f, io.LimitReader(r, maxImportStdin+1))
	if err == nil && n > maxImportStdin {
		err = fmt.Errorf("stdin is larger than %d MiB: import from a file", maxImportStdin>>20)
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("spool stdin: %w", err)
	}
	return f, nil
}

// importBatch is the next batch of entries to send, or the error that
// stopped reading the file.
type importBatch struct {
	entries []*adminv1.Entry
	err     error
}

// sendEntries reads the (already checked) entries of f and creates them in
// batches, handing each entry's result to out. Batches are sent one at a
// time, in the file's order; the next one is read and converted while the
// server creates the current one. If a batch fails as a whole, it stops
// and returns the error.
func sendEntries(a *adminCmd, f *os.File, name string, total int, out *importWriter) error {
	if total == 0 {
		return nil
	}
	client, err := a.dial()
	if err != nil {
		return err
	}
	defer client.Close()
	progress := terminalOf(a.cli.App.ErrWriter)
	endProgress := func() {
		if progress != nil {
			fmt.Fprintln(progress)
		}
	}

	batches := make(chan importBatch, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(batches)
		readBatches(f, batches, stop)
	})
	defer func() {
		close(stop)
		wg.Wait()
	}()

	sent := 0 // entries sent before the batch
	for b := range batches {
		if b.err != nil {
			endProgress()
			return fmt.Errorf("%s changed while it was imported%w", name, b.err)
		}
		ctx, cancel := client.callContext(a.cli.Context)
		resp, err := client.entries.BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: b.entries})
		cancel()
		if err == nil && len(resp.GetResults()) != len(b.entries) {
			err = fmt.Errorf("server returned %d results for %d entries", len(resp.GetResults()), len(b.entries))
		}
		if err != nil {
			endProgress()
			return fmt.Errorf("import stopped at entry %d of %d: %w", sent, total, client.callError(err))
		}
		for k, res := range resp.GetResults() {
			r := importResult{Index: sent + k, Status: "ok", Entry: entryToJSON(b.entries[k])}
			if code := codes.Code(res.GetStatus().GetCode()); code != codes.OK {
				r.Status = code.String()
				r.Message = res.GetStatus().GetMessage()
			} else if res.GetEntry() != nil {
				r.Entry = entryToJSON(res.GetEntry())
			}
			if err := out.add(&r); err != nil {
				return err
			}
		}
		sent += len(b.entries)
		if progress != nil {
			fmt.Fprintf(progress, "\rimported %d/%d", sent, total)
		}
		if err := out.flush(); err != nil {
			return err
		}
	}
	endProgress()
	return nil
}

// errImportStopped ends the reading of a file whose import stopped.
var errImportStopped = errors.New("import stopped")

// readBatches reads the entries of f into batches of at most
// importBatchEntries entries and importBatchBytes bytes and sends them on
// batches, then any error that stopped the reading. It returns early once
// stop is closed.
func readBatches(f *os.File, batches chan<- importBatch, stop <-chan struct{}) {
	emit := func(b importBatch) bool {
		select {
		case batches <- b:
			return true
		case <-stop:
			return false
		}
	}
	var (
		batch []*adminv1.Entry
		size  int
	)
	err := scanEntries(f, func(_ int, j *jsonEntry) error {
		e, err := entryFromJSON(j)
		if err != nil {
			// The file changed since it was checked.
			return err
		}
		w := adminv1.EntryFromDomain(e)
		n := proto.Size(w) + 8 // field tag and length
		if len(batch) == importBatchEntries || (len(batch) > 0 && size+n > importBatchBytes) {
			if !emit(importBatch{entries: batch}) {
				return errImportStopped
			}
			batch, size = nil, 0
		}
		batch = append(batch, w)
		size += n
		return nil
	})
	switch {
	case errors.Is(err, errImportStopped):
	case err != nil:
		emit(importBatch{err: err})
	case len(batch) > 0:
		emit(importBatch{entries: batch})
	}
}

// importWriter writes each entry's result as it comes: in text, a line
// per failure and a count at the end; in JSON, an array of results.
type importWriter struct {
	json    bool
	w       *bufio.Writer
	created int
	failed  int
	n       int // results written
}

func newImportWriter(a *adminCmd) *importWriter {
	return &importWriter{json: a.format == jsonOutput, w: bufio.NewWriter(a.cli.App.Writer)}
}

func (iw *importWriter) add(r *importResult) error {
	if r.Status == "ok" {
		iw.created++
	} else {
		iw.failed++
	}
	defer func() { iw.n++ }()
	if !iw.json {
		if r.Status != "ok" {
			fmt.Fprintf(iw.w, "%s: %s\n", entryLabel(r.Index, r.Entry.SPIFFEID), entry.Printable(r.Message))
		}
		return nil
	}
	// The same bytes as writeJSON of the whole array.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("  ", "  ")
	if err := enc.Encode(r); err != nil {
		return err
	}
	sep := ",\n  "
	if iw.n == 0 {
		sep = "[\n  "
	}
	iw.w.WriteString(sep)
	_, err := iw.w.Write(escapeJSONControls(bytes.TrimSuffix(buf.Bytes(), []byte("\n"))))
	return err
}

func (iw *importWriter) flush() error { return iw.w.Flush() }

// finish ends the output after the last result.
func (iw *importWriter) finish(total int) error {
	switch {
	case !iw.json:
		fmt.Fprintf(iw.w, "created %d of %d entries\n", iw.created, total)
	case iw.n == 0:
		iw.w.WriteString("[]\n")
	default:
		iw.w.WriteString("\n]\n")
	}
	return iw.w.Flush()
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

// jsonEntryKeys are the keys an imported entry may have, exactly as
// --output json prints them.
var jsonEntryKeys = func() map[string]bool {
	keys := map[string]bool{}
	t := reflect.TypeFor[jsonEntry]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		keys[name] = true
	}
	return keys
}()

// scanEntries reads a JSON array of entries in the shape --output json
// prints from r, one entry at a time, and calls fn with each entry and its
// index. Unknown keys (matched exactly, not ignoring case) and keys given
// twice in an entry are errors. It stops at the first error, its own or
// fn's.
func scanEntries(r io.ReaderAt, fn func(i int, j *jsonEntry) error) error {
	sr := io.NewSectionReader(r, 0, 1<<62)
	dec := json.NewDecoder(bufio.NewReaderSize(sr, 64<<10))
	errAt := func(off int64, format string, args ...any) error {
		return &inputError{line: lineAt(r, off), msg: fmt.Sprintf(format, args...)}
	}
	tok, err := dec.Token()
	if errors.Is(err, io.EOF) {
		return &inputError{msg: "empty: want a JSON array of entries"}
	}
	if err != nil {
		return errAt(dec.InputOffset(), "%s", describeJSONError(err))
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return errAt(0, "want a JSON array of entries")
	}
	for i := 0; dec.More(); i++ {
		before := dec.InputOffset()
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			off := before
			if se, ok := errors.AsType[*json.SyntaxError](err); ok {
				off = se.Offset
			}
			return errAt(off, "entry %d: %s", i, describeJSONError(err))
		}
		start := dec.InputOffset() - int64(len(raw))
		if len(raw) > maxImportEntryBytes {
			return errAt(start, "entry %d is larger than %d KiB", i, maxImportEntryBytes>>10)
		}
		var j jsonEntry
		if err := decodeEntry(raw, &j); err != nil {
			return errAt(start, "entry %d: %s", i, err)
		}
		if err := fn(i, &j); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return errAt(dec.InputOffset(), "%s", describeJSONError(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errAt(dec.InputOffset(), "unexpected data after the array of entries")
	}
	return nil
}

// decodeEntry decodes one entry object, refusing keys that are unknown or
// given twice (encoding/json would keep the last). raw is one complete,
// well-formed JSON value, as json.Decoder returns it.
func decodeEntry(raw json.RawMessage, j *jsonEntry) error {
	if len(raw) == 0 || raw[0] != '{' {
		return fmt.Errorf("want a JSON object, got %s", jsonKindOf(raw))
	}
	var seen [16]string
	n := 0
	for _, key := range topLevelKeys(raw) {
		if !jsonEntryKeys[key] {
			return fmt.Errorf("unknown field %q", entry.Printable(key))
		}
		for _, k := range seen[:n] {
			if k == key {
				return fmt.Errorf("field %q is given twice", key)
			}
		}
		if n < len(seen) {
			seen[n] = key
			n++
		}
	}
	strict := json.NewDecoder(bytes.NewReader(raw))
	strict.DisallowUnknownFields()
	if err := strict.Decode(j); err != nil {
		return errors.New(describeJSONError(err))
	}
	return nil
}

// topLevelKeys returns the keys of the JSON object obj, which must be
// well-formed, in order and unescaped.
func topLevelKeys(obj []byte) []string {
	var keys []string
	depth := 0
	for i := 0; i < len(obj); i++ {
		switch obj[i] {
		case '{', '[':
			depth++
		case '}', ']':
			depth--
		case '"':
			end := i + 1
			for end < len(obj) && obj[end] != '"' {
				if obj[end] == '\\' {
					end++
				}
				end++
			}
			if depth == 1 && isKey(obj[end+1:]) {
				s := string(obj[i+1 : end])
				if bytes.IndexByte(obj[i+1:end], '\\') >= 0 {
					// An escaped key: json.Unmarshal decodes it as
					// the field name it matches.
					if err := json.Unmarshal(obj[i:end+1], &s); err != nil {
						s = string(obj[i+1 : end])
					}
				}
				keys = append(keys, s)
			}
			i = end
		}
	}
	return keys
}

// isKey reports whether what follows a string is ':', making it a key.
func isKey(rest []byte) bool {
	for _, c := range rest {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case ':':
			return true
		}
		return false
	}
	return false
}

// jsonKindOf names the JSON type of a well-formed value for messages.
func jsonKindOf(raw []byte) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case 'n':
		return "null"
	case 't', 'f':
		return "bool"
	case '"':
		return "string"
	case '[':
		return "array"
	}
	return "number"
}

// decodeEntries reads a whole JSON array of entries held in memory, as
// scanEntries does.
func decodeEntries(data []byte) ([]*jsonEntry, error) {
	out := []*jsonEntry{}
	err := scanEntries(bytes.NewReader(data), func(_ int, j *jsonEntry) error {
		out = append(out, j)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// lineAt returns the line number, from 1, of byte offset off in r.
func lineAt(r io.ReaderAt, off int64) int {
	off = max(off, 0)
	br := bufio.NewReader(io.NewSectionReader(r, 0, off))
	lines := 1
	for {
		b, err := br.ReadByte()
		if err != nil {
			return lines
		}
		if b == '\n' {
			lines++
		}
	}
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
	if j.Template != "" {
		if err := setTemplate(&e, j.Template); err != nil {
			return nil, err
		}
		if j.SPIFFEID != "" && j.SPIFFEID != e.SPIFFEID.String() {
			return nil, fmt.Errorf("%w: spiffe_id %q is not the template's literal prefix %q", entry.ErrInvalid, entry.Printable(j.SPIFFEID), e.SPIFFEID.String())
		}
	} else if e.SPIFFEID, err = parseOptionalID(j.SPIFFEID); err != nil {
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
	if e.FederatesWith, err = parseFederatesWith(j.FederatesWith); err != nil {
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
