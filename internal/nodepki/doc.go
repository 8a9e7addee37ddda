// Package nodepki mints, at test time, the organisation PKI that x509pop
// node attestation trusts: a CA and node certificates with chosen
// subjects, validity and key usages, and writes them as PEM files.
//
//	ca := nodepki.NewCA(t, "org CA", now)
//	node := ca.Issue(t, nodepki.Node{CN: "web1", OU: []string{"web"}}, now)
//	certFile, keyFile := node.Write(t, dir, "web1")
//
// It is for tests only: keys are P-256 and nothing is kept.
package nodepki
