// Package svidfiles keeps a workload's X.509-SVID, private key and trust
// bundles, and optionally JWT-SVIDs, in files, for software that does not
// speak SPIFFE (nginx, PostgreSQL, Java keystores): `writ helper run`,
// the equivalent of spiffe-helper in the writ binary.
//
//	cfg := svidfiles.DefaultConfig()
//	cfg.SocketPath, cfg.CertDir = "/tmp/writ-agent/public/api.sock", "/etc/nginx/svid"
//	cfg.RenewSignal, cfg.PIDFileName = "SIGHUP", "/run/nginx.pid"
//	h, err := svidfiles.New(cfg, nil, log)
//	if err != nil { ... }
//	err = h.Run(ctx) // until ctx ends
//
// The helper follows the Workload API's X.509 stream (go-spiffe's
// client) and on every change writes the default SVID (the first) as
// svid.pem (chain, leaf first), svid_key.pem (PKCS#8, 0600) and
// bundle.pem (the SVID's trust domain's X.509 authorities), plus
// federated_bundle.<trust domain>.pem for each federated trust domain;
// PEM or DER. The federated bundle file of a trust domain that leaves
// the context is removed (only files so named, never directories).
//
// The X.509 files change as one set, only if a content or mode changed:
// each set is written into a new directory .writ-x509-<id>.<random> in
// the certificate directory (made, chmodded and filled relative to open
// directory handles, files created exclusively, never through a link,
// fsynced), and one rename of the link .writ-x509-<id> makes it
// current; svid.pem and the other configured paths are links through
// .writ-x509-<id>, so a reader or a crash sees the old set or the new
// one, never a key with another set's certificate. The set before stays
// as .writ-x509-<id>-previous for readers still opening it; older ones
// are removed. <id> is a short hash of the three configured X.509 file
// names: writers of other names sharing the directory never touch each
// other's sets. Links are made under random names before they are
// renamed into place, so another user of a shared sticky directory
// cannot take the names first; files of other users are left alone. A
// certificate directory writable by every user is refused unless it is
// sticky (ErrDirWritable). Files written by earlier versions are replaced by the links
// on the first write (that one write changes file by file). JWT files
// are replaced each on its own (temporary file, fsync, rename). After a change it sends the renew signal to
// the command it runs, or to the pid in the pid file; the command is
// started after the first write, and when it exits the helper returns
// ErrCmdExited (restarting is the supervisor's job). JWT-SVID files are
// fetched again at half their remaining lifetime, on the Clock.
//
// Configuration comes from flags or from spiffe-helper's HCL file: a
// small parser reads the flat subset it uses (key = value, strings,
// integers with octal modes, booleans, lists, and the objects of
// jwt_svids); ConfigKeys lists the keys understood. Others, such as
// hint or health_checks, are refused rather than ignored.
//
// Caveats: with a JWT bundle file and several trust domains, the file is
// a JSON object of trust domain names to JWKS; with one, a JWKS. Only the
// default SVID is written (hints are not supported).
package svidfiles
