package upstream

// ParseCerts exposes the upstream answer's certificate parser to the
// fuzz target.
var ParseCerts = parseCerts
