-- Agent records (writ_agents.data, JSON) may carry the node selectors of
-- their attestation ("selectors"). Versions before this one would drop
-- them when they rewrite a record (on every renewal), so this version
-- bump makes them refuse the database (schema newer than supported)
-- instead of silently emptying node aliases. The data itself needs no
-- change: records without selectors are agents without node selectors.
COMMENT ON COLUMN writ_agents.data IS 'agent record, JSON; may hold node selectors (schema 2)';
