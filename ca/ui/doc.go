// Package ui serves the CA server's read-only status page: the trust
// domain, a timeline of the CA keys (prepared, active, old, tainted)
// against time, the agents with their last renewal and SVID expiry, the
// entries with a search, and the recent audit events.
//
// The page is server-rendered with html/template and one stylesheet; it
// runs no script. Every request must carry the page's token, as
// "Authorization: Bearer <token>" or once as "?token=<token>", which sets
// an HttpOnly, SameSite=Strict cookie and redirects to the same page
// without the token in its address. Anything else gets 401 and nothing
// more.
package ui
