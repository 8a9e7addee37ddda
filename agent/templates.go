package agent

import (
	"context"
	"slices"
	"time"

	"writ.dev/writ/agent/nodeclient"
	"writ.dev/writ/agent/svidcache"
)

// minReportInterval spaces template reports: changes within it go in the
// next one.
const minReportInterval = time.Second

// reportTemplates tells the server what the agent's template entries
// issue (svidcache.Cache.TemplatesIssued): once the session starts if
// anything, then after each change, at most once per minReportInterval,
// until ctx ends. The server keeps the report while this session lasts.
func (a *Agent) reportTemplates(ctx context.Context, c *nodeclient.Client) {
	var last []svidcache.TemplateIssued
	sent := false
	for {
		cur := a.cache.TemplatesIssued()
		changed := !slices.EqualFunc(cur, last, func(x, y svidcache.TemplateIssued) bool {
			return x.EntryID == y.EntryID && slices.Equal(x.SPIFFEIDs, y.SPIFFEIDs)
		})
		if sent && changed || !sent && len(cur) > 0 {
			reps := make([]nodeclient.TemplateReport, len(cur))
			for i, t := range cur {
				reps[i] = nodeclient.TemplateReport{EntryID: t.EntryID, SPIFFEIDs: t.SPIFFEIDs, Count: len(t.SPIFFEIDs)}
			}
			if err := c.ReportTemplates(ctx, reps); err != nil {
				if ctx.Err() != nil {
					return
				}
				a.log.Debug("template report not sent", "error", err)
			} else {
				last, sent = cur, true
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-a.cache.IssuedChanged():
		}
		if err := a.sleep(ctx, minReportInterval); err != nil {
			return
		}
	}
}
