package boltstore

// Names of buckets and meta keys, for tests that damage a file on purpose.
var (
	BucketMeta       = bucketMeta
	BucketEntries    = bucketEntries
	BucketBySelector = bucketBySelector
	BucketEvents     = bucketEvents
	BucketServers    = bucketServers
	KeyFormat        = keyFormat
)
