package workloadapi

import "writ.dev/writ/ca/entry"

// TemplateHintPrefix starts the hint of an SVID issued by a template
// entry; the template entry's ID follows. The Workload API's hint field
// is the operator's guidance to a workload holding several SVIDs; one
// caller gets at most one SVID per template, so the hint stays unique
// among the SVIDs it is sent. Other SVIDs have no hint.
const TemplateHintPrefix = "writ-template:"

// svidHint returns the hint of the SVID of cache entry entryID.
func svidHint(entryID string) string {
	if tid, _, ok := entry.SplitInstanceID(entryID); ok {
		return TemplateHintPrefix + tid
	}
	return ""
}
