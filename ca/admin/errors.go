package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"

	"writ.dev/writ/internal/logkey"
)

// internalMessage is all a caller learns of an internal error; the detail
// goes to the log.
const internalMessage = "internal error"

// unavailableMessage is the message of Unavailable, for a datastore that
// cannot be reached for now.
const unavailableMessage = "datastore unavailable, retry later"

// invalidPrefix starts the text of every error entry's parsers return.
var invalidPrefix = entry.ErrInvalid.Error() + ": "

// invalidField returns InvalidArgument for a value of field that err, from
// an entry parser, refused. The parsers' messages quote the value with
// control characters escaped.
func invalidField(field string, err error) error {
	return invalidf("invalid %s: %s", field, strings.TrimPrefix(err.Error(), invalidPrefix))
}

// invalidf returns InvalidArgument with a message built from format. Any
// caller-supplied text in args must have gone through entry.Printable.
func invalidf(format string, args ...any) error {
	return status.Error(codes.InvalidArgument, boundMessage(fmt.Sprintf(format, args...)))
}

// maxMessage bounds the message of an error, which may quote the
// caller's input: a batch of bad entries must not grow into a response
// far larger than the request.
const maxMessage = 512

// boundMessage cuts msg to at most maxMessage bytes of valid UTF-8.
func boundMessage(msg string) string {
	if len(msg) <= maxMessage {
		return msg
	}
	return strings.ToValidUTF8(msg[:maxMessage-3], "") + "..."
}

// storeError maps an error from the store to what the caller sees.
// notFound and exists are the messages for datastore.ErrNotFound and
// datastore.ErrAlreadyExists; if empty, that error is not expected and is
// treated as internal. op names the store operation in the log.
func (s *Service) storeError(ctx context.Context, op string, err error, notFound, exists string) error {
	switch {
	case notFound != "" && errors.Is(err, datastore.ErrNotFound):
		return status.Error(codes.NotFound, notFound)
	case exists != "" && errors.Is(err, datastore.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, exists)
	}
	return s.internal(ctx, op, err)
}

// internal logs err once and returns the error the caller sees: Canceled
// or DeadlineExceeded if the call's context ended, Unavailable if the
// datastore cannot be reached for now, otherwise Internal with a generic
// message.
func (s *Service) internal(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
		return status.FromContextError(ctxErr).Err()
	}
	attrs := []slog.Attr{slog.String("op", op), slog.String(logkey.Error, err.Error())}
	if c, ok := ctx.Value(callKey{}).(*call); ok && c != nil {
		attrs = append(callerAttrs(c), attrs...)
	}
	if errors.Is(err, datastore.ErrUnavailable) {
		s.log.LogAttrs(ctx, slog.LevelWarn, "admin call failed", attrs...)
		return status.Error(codes.Unavailable, unavailableMessage)
	}
	s.log.LogAttrs(ctx, slog.LevelError, "admin call failed", attrs...)
	return status.Error(codes.Internal, internalMessage)
}

// errStoreResult is logged when the store breaks its contract.
func errStoreResult(got, want int) error {
	return fmt.Errorf("store returned %d results for %d entries", got, want)
}
