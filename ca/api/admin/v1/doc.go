// Package adminv1 holds the generated code of the CA server's admin API
// (admin.proto): entries, agents, join tokens and the bundle, served on the
// server's admin Unix socket. Regenerate with make generate.
package adminv1
