// Package nodev1 holds the generated code of the CA server's node API
// (node.proto): attestation, pushed entry sync and batch signing for
// agents. Regenerate with make generate.
package nodev1
